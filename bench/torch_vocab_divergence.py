#!/usr/bin/env python3
"""PyTorch side of bench/vocab_divergence.bench.mjs: per-row divergences and
their gradient with respect to the student logits, as a trainer writes them
with autograd (forward + backward). Prints one JSON object {case: median_ms}.

  /usr/bin/python3 bench/torch_vocab_divergence.py --threads 2 --cases '[...]'
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def forward_kl(s, t, temperature):
    # KL(teacher || student) per row, as distillation code writes it.
    ls = F.log_softmax(s / temperature, dim=-1)
    lt = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)


def reverse_kl(s, t, temperature):
    ls = F.log_softmax(s / temperature, dim=-1)
    lt = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)


def jsd(s, t, temperature, beta):
    # TRL's GKDTrainer.generalized_jsd_loss, reduction none, summed over the vocabulary.
    ls = F.log_softmax(s / temperature, dim=-1)
    lt = F.log_softmax(t / temperature, dim=-1)
    b = torch.tensor(beta, dtype=ls.dtype)
    mix = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    kl_t = F.kl_div(mix, lt, reduction="none", log_target=True)
    kl_s = F.kl_div(mix, ls, reduction="none", log_target=True)
    return (beta * kl_t + (1 - beta) * kl_s).sum(-1)


def run_case(c, reps):
    rows, vocab = c["rows"], c["vocab"]
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(rows, vocab, generator=g) * 2
    t = torch.randn(rows, vocab, generator=g) * 2
    temperature = c.get("temperature", 1.0)
    kind = c["kind"]
    times = []
    for i in range(reps + 1):
        s = s0.clone().requires_grad_(True)
        start = time.perf_counter()
        if kind == "forward-kl":
            v = forward_kl(s, t, temperature)
        elif kind == "reverse-kl":
            v = reverse_kl(s, t, temperature)
        else:
            v = jsd(s, t, temperature, c.get("beta", 0.5))
        v.sum().backward()
        elapsed = (time.perf_counter() - start) * 1e3
        if i > 0:  # the first run warms the allocator
            times.append(elapsed)
        del v, s
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cases", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for c in json.loads(args.cases):
        out[c["name"]] = run_case(c, args.reps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
