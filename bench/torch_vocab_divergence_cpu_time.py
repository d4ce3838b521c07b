"""PyTorch side of bench/vocab_divergence_cpu_time.mjs: CPU time per call
(time.process_time, all threads) of bench/torch_vocab_divergence.py's
formulas, eager and torch.compile, values alone (no_grad) and values + the
student gradient (autograd).

Usage: python bench/torch_vocab_divergence_cpu_time.py [threads] [case filter] [calls]
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""
CALLS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
sys.argv = sys.argv[:1]
import torch_vocab_divergence as vd  # noqa: E402
from torch_common import set_threads  # noqa: E402


def per_call(fn, calls):
    for _ in range(2):
        fn()
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def main():
    set_threads(THREADS)
    print(f"CPU time per call, {THREADS} thread(s), torch {torch.__version__}")
    for rows, vocab in ((256, 32000), (64, 151936)):
        for kind, beta in (("forward-kl", None), ("reverse-kl", None), ("jsd", 0.5)):
            for op in ("forward", "forward+backward"):
                label = f"jsd beta={beta}" if kind == "jsd" else kind
                name = f"{label} {op} [{rows}, {vocab}]"
                if ONLY and ONLY not in name:
                    continue
                c = {"rows": rows, "vocab": vocab, "kind": kind, "beta": beta or 0.5, "temperature": 1.0, "op": op}
                for mode in ("eager", "compile"):
                    torch._dynamo.reset()  # else the recompile limit silently runs later cases eagerly
                    t = per_call(vd.make_case(c, mode), CALLS)
                    print(f"{name} {mode}: {t * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
