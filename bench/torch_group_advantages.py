"""PyTorch side of bench/group_advantages.bench.mjs: every groupAdvantages method.

The same formulas as rlkernels' groupAdvantages (DESIGN 3.6, LOSSES.md
section 4), written the way a PyTorch user vectorises them (verl's own code
loops in Python over the rows, which is far slower): consecutive groups of
GS through view(G, GS), int64 hash ids through torch.unique(return_inverse)
and index_add_, token counts for the whitening and opo. float32 rewards and
math (PyTorch's default), each case returning the advantages and the
informative flags, timed eagerly and under torch.compile (inductor, one
compile per case and shape before timing), in blocks of back-to-back calls
(>= 2 ms a block; median over the blocks of the per-call mean). Prints one JSON line:
{"case": {"eager": median_ms, "compile": median_ms}, ...}.

Usage: python bench/torch_group_advantages.py [threads] [iterations] [sizes, e.g. 4096,65536] [case filter]
"""
import json
import sys
import time

import torch

from torch_common import disagreement, set_threads

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ITERS = int(sys.argv[2]) if len(sys.argv) > 2 else 50
SIZES = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [4096, 65536]
# Case filter: names containing any of these comma-separated substrings ("" = every case).
ONLY = [o for o in (sys.argv[4] if len(sys.argv) > 4 else "").split(",") if o]
USE_COMPILE = "--no-compile" not in sys.argv
GS, TASKS, K = 16, 8, 3
EPS, ALPHA, GAMMA = 1e-6, 0.8, 1.0


def informative(x):
    return (x.amax(1) > x.amin(1)).to(torch.uint8)


def grpo(r, scale):
    x = r.view(-1, GS)
    c = x - x.mean(1, keepdim=True)
    if scale == "group":
        c = c / (x.std(1, keepdim=True) + EPS)
    elif scale == "batch":
        c = c / (r.std() + EPS)
    return c.view(-1), informative(x)


def grpo_hash(r, ids):
    uniq, inv = torch.unique(ids, return_inverse=True)
    G = uniq.numel()
    n = torch.zeros(G).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros(G).index_add_(0, inv, r) / n
    d = r - mean[inv]
    var = torch.zeros(G).index_add_(0, inv, d * d) / (n - 1)
    hi = torch.full((G,), -torch.inf).index_reduce_(0, inv, r, "amax")
    lo = torch.full((G,), torch.inf).index_reduce_(0, inv, r, "amin")
    return d / (var.sqrt()[inv] + EPS), (hi > lo).to(torch.uint8)


def rloo(r):
    x = r.view(-1, GS)
    return (GS / (GS - 1) * (x - x.mean(1, keepdim=True))).view(-1), informative(x)


def whiten(v, c):
    # verl's masked_whiten with each row's value tiled over its c tokens.
    n = c.sum()
    mu = (c * v).sum() / n
    var = (c * (v - mu) ** 2).sum() / (n - 1)
    return torch.where(c > 0, (v - mu) * torch.rsqrt(var + 1e-8), torch.zeros_like(v))


def reinforce_pp(r, counts):
    x = r.view(-1, GS)
    return whiten((x - x.mean(1, keepdim=True)).view(-1), counts.float()), informative(x)


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
    return torch.where(x > mean_g[:, None], a * w[:, None], a / w[:, None]).view(-1), informative(x)


def gdpo(rk, weights, counts):
    x = rk.view(-1, GS, K)
    s = ((x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + EPS) * weights).sum(-1).view(-1)
    inf = (x.amax(1) > x.amin(1)).any(-1).to(torch.uint8)
    return whiten(s, counts.float()), inf


def passk(r):
    x = r.view(-1, GS)
    top = x.topk(2, dim=1).values
    std = x.std(1)
    adv = torch.zeros_like(x).scatter_(1, x.argmax(1, keepdim=True), ((top[:, 0] - top[:, 1]) / (std + EPS))[:, None])
    return adv.view(-1), informative(x)


def opo(r, counts):
    x = r.view(-1, GS)
    c = counts.float().view(-1, GS)
    b = (c * x).sum(1, keepdim=True) / c.sum(1, keepdim=True)
    return (x - b).view(-1), informative(x)


def remax(r, base):
    return r - base, informative(r.view(-1, GS))


def gpg(r):
    x = r.view(-1, GS)
    alpha = r.numel() / (r != 0).sum().clamp(min=1)
    return (alpha * (x - x.mean(1, keepdim=True))).view(-1), informative(x)


def timed(fn):
    # Blocks of back-to-back calls, as torch.utils.benchmark's blocked_autorange does (and
    # bench/group_advantages.bench.mjs on the rlkernels side): the call count a block is doubled
    # until a block takes >= 2 ms, then the median over ITERS blocks of the per-call mean. Three
    # calls first, so that a compile (seconds) is not taken for a 2 ms block.
    for _ in range(3):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= 2e-3 or n >= 1 << 16:
            break
        n *= 2
    ts = []
    for _ in range(ITERS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) * 1000 / n)
    ts.sort()
    return ts[len(ts) // 2]


def cases(B, g):
    G = B // GS
    r = ((torch.rand(B, generator=g) < 0.4).float() + 0.1 * torch.randn(B, generator=g)) * (torch.rand(B, generator=g) < 0.8)
    ids = torch.randint(-(2**62), 2**62, (G,), generator=g)[torch.randperm(B, generator=g) % G]
    task_of_group = torch.randint(0, TASKS, (G,), generator=g)
    counts = torch.randint(0, 512, (B,), generator=g, dtype=torch.int32)
    rk = torch.randn(B, K, generator=g)
    weights = torch.tensor([1.0, 0.5, 2.0])
    base = torch.rand(B, generator=g)
    return {
        f"grpo B={B}": (lambda r: grpo(r, "group"), (r,)),
        f"grpo batch B={B}": (lambda r: grpo(r, "batch"), (r,)),
        f"grpo none B={B}": (lambda r: grpo(r, "none"), (r,)),
        f"grpo hash ids B={B}": (grpo_hash, (r, ids)),
        f"rloo B={B}": (rloo, (r,)),
        f"reinforce++ B={B}": (reinforce_pp, (r, counts)),
        f"tmn-reweight B={B}": (tmn, (r, task_of_group)),
        f"gdpo B={B}": (gdpo, (rk, weights, counts)),
        f"grpo-passk B={B}": (passk, (r,)),
        f"opo B={B}": (opo, (r, counts)),
        f"remax B={B}": (remax, (r, base)),
        f"gpg B={B}": (gpg, (r,)),
    }


def main():
    set_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    out = {}
    for B in SIZES:
        for name, (fn, args) in cases(B, g).items():
            if ONLY and not any(o in name for o in ONLY):
                continue
            row = {"eager": timed(lambda: fn(*args))}
            if USE_COMPILE:
                torch._dynamo.reset()  # each case compiled afresh (dynamo's recompile limit would run later ones eagerly)
                compiled = torch.compile(fn, dynamic=False)
                row["compile"] = timed(lambda: compiled(*args))
                bad = disagreement(compiled(*args), fn(*args))  # a compiled time counts only where it agrees
                if bad:
                    row["compile"] = None
                    row["compile_error"] = f"wrong result: {bad}"
            out[name] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
