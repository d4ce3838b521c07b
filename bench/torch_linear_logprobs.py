"""PyTorch CPU baseline for bench/linear_logprobs.bench.mjs.

--mode time: medians (ms) of the three matrix products alone and of
log_softmax((h @ W.T).float() / T).gather(...) with autograd (forward alone
under no_grad, and forward + backward to h and W), eager and torch.compile,
on the same thread count.
--mode memory: the peak resident memory this process gains (VmHWM, MB)
running forward + backward of the materialising path once.
Prints one JSON object on its last line.
Usage: python bench/torch_linear_logprobs.py --threads 2 --n 4096 --h 1024 --v 32000 --dtype float32 --iters 3
"""
import argparse
import json
import statistics
import time

import torch

from torch_common import set_threads


def median_ms(fn, iters):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def vm_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--h", type=int, default=1024)
    ap.add_argument("--v", type=int, default=32000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--mode", default="time")
    ap.add_argument("--compile", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    T = args.temperature
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(args.n, args.h, generator=g).to(dt)
    w0 = (torch.randn(args.v, args.h, generator=g) / args.h ** 0.5).to(dt)
    targets = torch.randint(0, args.v, (args.n,), generator=g)
    grad = torch.randn(args.n, generator=g)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    def loss_fn(h, w):
        return torch.log_softmax((h @ w.T).float() / T, -1).gather(-1, targets[:, None]).squeeze(-1)

    def fwd_bwd(fn):
        h = h0.detach().requires_grad_(True)
        w = w0.detach().requires_grad_(True)
        fn(h, w).backward(grad)
        return h.grad, w.grad

    if args.mode == "memory":
        base = vm_kb("VmRSS")
        fwd_bwd(loss_fn)
        out["peakExtraMB"] = (vm_kb("VmHWM") - base) / 1024
        print(json.dumps(out))
        return

    def fwd():
        with torch.no_grad():
            return loss_fn(h0, w0)

    dl = torch.randn(args.n, args.v, generator=g).to(dt)
    out["matmul_fwd"] = median_ms(lambda: h0 @ w0.T, args.iters)
    out["matmul_3"] = median_ms(lambda: (h0 @ w0.T, dl @ w0, dl.T @ h0), args.iters)
    del dl
    out["eager_fwd"] = median_ms(fwd, args.iters)
    out["eager_fwd_bwd"] = median_ms(lambda: fwd_bwd(loss_fn), args.iters)
    if args.compile:
        compiled = torch.compile(loss_fn)

        def cfwd():
            with torch.no_grad():
                return compiled(h0, w0)

        out["compile_fwd"] = median_ms(cfwd, args.iters)
        out["compile_fwd_bwd"] = median_ms(lambda: fwd_bwd(compiled), args.iters)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
