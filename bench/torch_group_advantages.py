"""PyTorch reference timing for bench/group_advantages.bench.mjs.

The same formulas as rlkernels' groupAdvantages (DESIGN 3.6), written the
way a PyTorch user would vectorise them (verl's own code loops in Python over
the rows, which is far slower): grpo over consecutive groups with view/mean/std,
grpo over shuffled group ids with index_add_, and GoLongRL's tmn-reweight
(8 tasks) over consecutive groups. float32 rewards, float32 math (PyTorch's
default). Prints one JSON line: {"case name": median_ms, ...}.

Usage: /usr/bin/python3 bench/torch_group_advantages.py [threads] [iterations]
"""
import json
import sys
import time

import torch

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ITERS = int(sys.argv[2]) if len(sys.argv) > 2 else 50
SIZES = [4096, 65536]
GS = 16
TASKS = 8
EPS, ALPHA, GAMMA = 1e-6, 0.8, 1.0


def grpo_consecutive(r):
    x = r.view(-1, GS)
    mean = x.mean(1, keepdim=True)
    std = x.std(1, keepdim=True)
    informative = (x.amax(1) > x.amin(1)).to(torch.uint8)
    return ((x - mean) / (std + EPS)).view(-1), informative


def grpo_ids(r, ids, G):
    n = torch.zeros(G).index_add_(0, ids, torch.ones_like(r))
    s = torch.zeros(G).index_add_(0, ids, r)
    mean = s / n
    d = r - mean[ids]
    var = torch.zeros(G).index_add_(0, ids, d * d) / (n - 1)
    return d / (var.sqrt()[ids] + EPS)


def tmn(r, task_of_group):
    x = r.view(-1, GS)
    mean_g = x.mean(1)
    var_g = x.var(1)
    cnt = torch.bincount(task_of_group, minlength=TASKS).float()
    mean_task = (torch.zeros(TASKS).index_add_(0, task_of_group, mean_g) / cnt)[task_of_group]
    var_task = (torch.zeros(TASKS).index_add_(0, task_of_group, var_g) / cnt)[task_of_group]
    a = (x - mean_g[:, None]) / (var_task.sqrt()[:, None] + EPS)
    m = ALPHA * mean_g + (1 - ALPHA) * mean_task
    p = (x > m[:, None]).float().mean(1)
    w = torch.exp(GAMMA * (0.5 - p))
    return torch.where(x > mean_g[:, None], a * w[:, None], a / w[:, None]).view(-1)


def timed(fn):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(ITERS):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    out = {}
    for B in SIZES:
        G = B // GS
        r = (torch.rand(B, generator=g) < 0.4).float() + 0.1 * torch.randn(B, generator=g)
        ids = torch.randperm(B, generator=g) % G
        task_of_group = torch.randint(0, TASKS, (G,), generator=g)
        out[f"grpo B={B}"] = timed(lambda: grpo_consecutive(r))
        out[f"grpo ids B={B}"] = timed(lambda: grpo_ids(r, ids, G))
        out[f"tmn-reweight B={B}"] = timed(lambda: tmn(r, task_of_group))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
