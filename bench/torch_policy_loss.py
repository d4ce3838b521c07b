"""PyTorch timing of every policyLoss mode's whole objective, for bench/policy_loss.bench.mjs.

The same objective as the rlkernels bench, written from LOSSES.md / verl's formulas:
the mode's surrogate with its default aggregation, a k3 KL term with a coefficient,
the stats (clip fractions, ppo_kl, ratio mean/min/max), forward and backward to
d loss / d logprobs. Timed eager and under torch.compile (inductor) on the same
thread count; compile time is left out (warm-up calls).

Usage: python bench/torch_policy_loss.py THREADS ITERS SHAPES_JSON MODES_CSV [--no-compile]
Prints one JSON line: {"mode": {"B x T": {"eager": ms, "compile": ms}}}.
"""
import json
import sys
import time

import torch

from torch_common import set_threads

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


def token_mean(x, m):
    return (x * m).sum() / m.sum()


# The mean over sequences with a kept token, by weights rather than boolean indexing: the same
# value, static shapes for inductor (indexing by `n > 0` broke the graph, and inductor's code for
# gspo at small shapes corrupted the heap: "double free or corruption", torch 2.13.0+cpu).
def seq_mean_token_mean(x, m):
    n = m.sum(-1)
    keep = (n > 0).to(x.dtype)
    return ((x * m).sum(-1) / n.clamp_min(1) * keep).sum() / keep.sum()


def seq_mean_token_sum(x, m):
    n = m.sum(-1)
    keep = (n > 0).to(x.dtype)
    return ((x * m).sum(-1) * keep).sum() / keep.sum()


def objective(mode, logp, old, ref, adv, mask):
    d = logp - old
    nkl = torch.clamp(d, -20.0, 20.0)
    ratio = torch.exp(nkl)
    lo, hi = 1 - CLIP_LOW, 1 + CLIP_HIGH
    clip = torch.zeros_like(ratio)
    agg = token_mean
    if mode == "vanilla":
        l1 = -adv * ratio
        l2 = -adv * torch.clamp(ratio, lo, hi)
        c1 = torch.maximum(l1, l2)
        clip = (l2 > l1).float()
        pg = torch.where(adv < 0, torch.minimum(c1, -adv * DUAL_CLIP), c1)
    elif mode in ("gspo", "luspo"):
        n = mask.sum(-1, keepdim=True).clamp_min(1)
        mean = (d * mask).sum(-1, keepdim=True) / n
        if mode == "gspo":
            s = torch.exp(logp - logp.detach() + torch.clamp(mean, max=10.0).detach())
            agg = seq_mean_token_mean
        else:
            s = torch.exp(torch.clamp(mean, max=10.0)).expand_as(logp)
            agg = seq_mean_token_sum
        l1 = -adv * s
        l2 = -adv * torch.clamp(s, lo, hi)
        pg = torch.maximum(l1, l2)
        clip = (l2 > l1).float()
        ratio = s
    elif mode == "sapo":
        tau = torch.where(adv > 0, 1.0, 1.05)
        pg = -adv * (4 / tau) * torch.sigmoid(tau * (ratio - 1))
        agg = seq_mean_token_mean
    elif mode in ("gpg", "reinforce"):
        pg = -adv * logp
    elif mode == "cispo":
        rc = torch.clamp(ratio, lo, hi).detach()
        pg = -rc * adv * logp
        clip = ((ratio < lo) | (ratio > hi)).float()
    elif mode == "geo-mean":
        sa = torch.sign(adv)
        lt = sa * torch.minimum(sa * d, sa * torch.clamp(d, -CLIP_LOW, CLIP_HIGH))
        n = mask.sum(-1).clamp_min(1)
        s = torch.exp((lt * mask).sum(-1) / n)
        abar = (adv * mask).sum(-1) / n
        seq = -abar * s
        keep = mask.sum(-1) > 0
        pg = seq[:, None].expand_as(logp)
        clip = (((adv > 0) & (d > CLIP_HIGH)) | ((adv < 0) & (d < -CLIP_LOW))).float()
        ratio = s[:, None].expand_as(logp)
        agg = seq_mean_token_mean
    elif mode in ("dppo-tv", "dppo-kl"):
        p, po = torch.exp(logp), torch.exp(old)
        if mode == "dppo-tv":
            valid = torch.where(adv > 0, p - po <= CLIP_HIGH, p - po >= -CLIP_LOW)
        else:
            b = po * (old - logp) + (1 - po) * torch.log((1 - po + 1e-8) / (1 - p + 1e-8))
            valid = torch.where(adv > 0, (b <= CLIP_HIGH) | (p <= po), (b <= CLIP_LOW) | (p >= po))
        valid = valid.detach().float()
        pg = -adv * torch.clamp(ratio, max=20.0).detach() * logp * valid
        clip = 1 - valid
    elif mode == "dro":
        pg = -(adv * logp - 0.5 * 0.1 * d * d)
    elif mode in ("clip-cov", "kl-cov"):
        ratio = torch.exp(d)
        m = mask.bool()
        nt = mask.sum()
        cov = (adv - (adv * mask).sum() / nt) * (logp.detach() - (logp.detach() * mask).sum() / nt)
        k = max(int(2e-4 * nt.item()), 1)
        if mode == "clip-cov":
            l1 = -adv * ratio
            l2 = -adv * torch.clamp(ratio, lo, hi)
            cand = m & ~(l2 > l1) & (cov > 1) & (cov < 5)
            idx = torch.nonzero(cand.flatten()).squeeze(-1)
            sel = torch.zeros_like(mask).flatten()
            if idx.numel() > 0:
                sel[idx[torch.randperm(idx.numel())[: min(k, idx.numel())]]] = 1
            sel = sel.view_as(mask)
            pg = torch.maximum(l1, l2) * (1 - sel)
            clip = sel
        else:
            flat = torch.where(m, cov, torch.full_like(cov, -float("inf"))).flatten()
            top = torch.topk(flat, k).indices
            sel = torch.zeros_like(flat)
            sel[top] = 1
            sel = sel.view_as(mask)
            pg = -adv * ratio + sel * 0.1 * d.abs()
            clip = sel
    elif mode == "vespo":
        lw = torch.clamp((nkl * mask).sum(-1, keepdim=True), -18.420680743952367, 20.0).detach()
        w = torch.exp(lw)
        pos = adv >= 0
        k = torch.where(pos, 2.0, 3.0)
        lam = torch.where(pos, 3.0, 2.0)
        phi = torch.exp(lam + k * lw - lam * w)
        phi = torch.where(torch.isfinite(phi), phi, torch.zeros_like(phi)).detach()
        pg = -phi * adv * logp
    else:
        raise ValueError(mode)
    pg_loss = agg(pg, mask)
    x = torch.clamp(ref - logp, -20.0, 20.0)
    kl = torch.clamp(torch.exp(x) - x - 1, -10.0, 10.0)
    loss = pg_loss + KL_COEF * token_mean(kl, mask)
    stats = torch.stack([
        token_mean(clip, mask),
        token_mean(-nkl, mask),
        token_mean(ratio, mask),
        torch.where(mask > 0, ratio, torch.full_like(ratio, float("inf"))).min(),
        torch.where(mask > 0, ratio, torch.full_like(ratio, -float("inf"))).max(),
    ])
    return loss, stats


def step(fn, mode, logp0, old, ref, adv, mask):
    logp = logp0.detach().requires_grad_(True)
    loss, stats = fn(mode, logp, old, ref, adv, mask)
    loss.backward()
    return loss.item(), logp.grad, stats.tolist()


def timed(fn, mode, args, iters):
    step(fn, mode, *args)
    step(fn, mode, *args)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step(fn, mode, *args)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


def wrong_result(compiled, mode, args):
    """Why the compiled objective disagrees with eager's, or None. Seen: torch 2.13.0+cpu's
    inductor, under ATEN_CPU_CAPABILITY=avx2 on 2 threads, returned a vanilla loss 3% off eager's
    (0.029895 against 0.030786, 64 x 32768) in a tenth of the time: it had loaded kernels that
    a run with the other ISA had cached (set_threads now keeps a cache per configuration).
    clip-cov draws its random selection anew each call, so it is not compared. vespo's phi
    multiplies the float32 rounding of each sequence's log-weight sum (32768 terms, in an order
    that inductor chooses) by |k - lambda w|: compile and eager differ by 0.2 % there (22:48 UTC,
    64 x 32768), neither being the float64 value, so vespo is held to 1e-2."""
    if mode == "clip-cov":
        return None
    tol = 1e-2 if mode == "vespo" else 1e-4
    le, ge, _ = step(objective, mode, *args)
    lc, gc, _ = step(compiled, mode, *args)
    scale = ge.abs().max().item()
    if abs(lc - le) > tol * max(abs(le), 1e-6):
        return f"wrong result: compiled loss {lc:.6g}, eager {le:.6g}"
    if (gc - ge).abs().max().item() > tol * max(scale, 1e-12):
        return f"wrong result: compiled gradient off by {(gc - ge).abs().max().item():.3g} (largest entry {scale:.3g})"
    return None


def main():
    threads = int(sys.argv[1])
    iters = int(sys.argv[2])
    shapes = json.loads(sys.argv[3])
    modes = sys.argv[4].split(",")
    use_compile = "--no-compile" not in sys.argv
    set_threads(threads)
    out = {}
    for mode in modes:
        out[mode] = {}
        for B, T in shapes:
            args = make(B, T)
            row = {"eager": timed(objective, mode, args, iters)}
            if use_compile:
                try:
                    # Compiled afresh for each mode and shape: dynamo caches per code object and,
                    # after recompile_limit (8) guard failures of `objective` (each mode string and
                    # shape is one), silently runs it eagerly: the later modes' "compile" had been eager.
                    torch._dynamo.reset()
                    compiled = torch.compile(objective, dynamic=False)
                    bad = wrong_result(compiled, mode, args)
                    if bad:
                        row["compile_error"] = bad
                    else:
                        row["compile"] = timed(compiled, mode, args, iters)
                except Exception as e:  # noqa: BLE001 - a mode inductor cannot compile is reported, not fatal
                    row["compile_error"] = str(e).split("\n")[0][:200]
            out[mode][f"{B} x {T}"] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
