"""PyTorch side of bench/cpu_time.mjs: CPU time per call (time.process_time,
all threads) of the same groupAdvantages formulas as
bench/torch_group_advantages.py at B = 65536 and of verl's k3 value +
gradient (bench/torch_kl_penalty.py), eager and torch.compile, with the
process's minor page faults per call.

Usage: python bench/torch_cpu_time.py [threads] [case filter]
"""
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""
sys.argv = sys.argv[:1]
import torch_group_advantages as ga  # noqa: E402
from torch_common import set_threads  # noqa: E402


def per_call(fn, calls):
    for _ in range(max(3, calls // 20)):
        fn()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for _ in range(calls):
        fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    return (t1 - t0) / calls, (r1.ru_minflt - r0.ru_minflt) / calls


def k3(logp, ref):
    kl = torch.clamp(ref - logp, -20, 20)
    return torch.clamp(torch.exp(kl) - kl - 1, -10, 10)


def main():
    set_threads(THREADS)
    print(f"CPU time per call, {THREADS} thread(s), torch {torch.__version__}")
    cases = ga.cases(65536, torch.Generator().manual_seed(0))
    for name in ["grpo", "grpo batch", "grpo none", "rloo", "reinforce++", "opo", "remax", "gpg", "tmn-reweight"]:
        if ONLY and ONLY not in f"groupAdvantages {name}":
            continue
        fn, args = cases[f"{name} B=65536"]
        for mode, f in (("eager", fn), ("compile", torch.compile(fn, dynamic=False))):
            t, _ = per_call(lambda: f(*args), 300)
            print(f"groupAdvantages {name} B=65536 {mode}: {t * 1e6:.1f} us")
    for n in (1 << 21, 1 << 24):
        if ONLY and ONLY not in f"klPenalty k3 [{n}]":
            continue
        g = torch.Generator().manual_seed(0)
        logp0 = -torch.rand(n, generator=g) * 4
        ref = logp0 + torch.randn(n, generator=g) * 0.3
        for mode, f in (("eager", k3), ("compile", torch.compile(k3))):
            def call():
                logp = logp0.detach().requires_grad_(True)
                v = f(logp, ref)
                v.backward(torch.ones_like(v))
                return logp.grad
            t, faults = per_call(call, 40 if n < 1 << 22 else 6)
            print(f"klPenalty k3 [{n}] {mode}: {t * 1e3:.2f} ms, {faults:.0f} minor faults a call")


if __name__ == "__main__":
    main()
