"""PyTorch eager + autograd reference timing for bench/policy_loss.bench.mjs.

The same objective as the rlkernels bench, with verl's formulas
(compute_policy_loss_vanilla with dual clip and clip-higher, token-mean
agg_loss, low_var_kl (k3) KL loss with a coefficient), forward and backward
to d loss / d logprobs, plus verl's stats (pg_clipfrac, ppo_kl,
pg_clipfrac_lower). Prints one JSON line: {"B x T": median_ms, ...}.

Usage: /usr/bin/python3 bench/torch_policy_loss.py [threads] [iterations]
"""
import json
import sys
import time

import torch

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ITERS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
SHAPES = [(64, 32768), (512, 8192)]
CLIP_LOW, CLIP_HIGH, DUAL_CLIP, KL_COEF = 0.2, 0.28, 3.0, 0.001


def make(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 4 - 0.01
    old = logp + torch.randn(B, T, generator=g) * 0.3
    ref = logp + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, T, generator=g)
    lens = (torch.rand(B, generator=g) * 0.7 + 0.3) * T
    mask = (torch.arange(T)[None, :] < lens[:, None]).float()
    return logp, old, ref, adv, mask


def step(logp0, old, ref, adv, mask):
    logp = logp0.detach().requires_grad_(True)
    negative_approx_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = (-negative_approx_kl * mask).sum() / mask.sum()
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = (torch.gt(pg_losses2, pg_losses1).float() * mask).sum() / mask.sum()
    pg_losses3 = -adv * DUAL_CLIP
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = (torch.gt(clip_pg_losses1, pg_losses3) * (adv < 0).float() * mask).sum() / mask.sum()
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = (pg_losses * mask).sum() / mask.sum()
    kl = torch.clamp(ref - logp, min=-20.0, max=20.0)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10.0, max=10.0)
    kl_loss = (kld * mask).sum() / mask.sum()
    loss = pg_loss + KL_COEF * kl_loss
    loss.backward()
    return loss.item(), logp.grad, pg_clipfrac.item(), ppo_kl.item(), pg_clipfrac_lower.item()


def main():
    torch.set_num_threads(THREADS)
    out = {}
    for B, T in SHAPES:
        args = make(B, T)
        step(*args)
        times = []
        for _ in range(ITERS):
            t0 = time.perf_counter()
            step(*args)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[f"{B} x {T}"] = times[len(times) // 2]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
