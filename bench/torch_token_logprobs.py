"""PyTorch CPU baseline for bench/token_logprobs.bench.mjs.

Times log_softmax(logits.float() / T, -1).gather(...) (forward, and with the
entropy), and forward + backward through autograd, on the shapes the JS side
asks for, with the same thread count. Prints one JSON object: {key: median ms}.
Usage: python3 bench/torch_token_logprobs.py --threads 2 --shapes 4096x32000:float32,512x151936:float32 --iters 7
"""
import argparse
import json
import statistics
import time

import torch


def median_ms(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="4096x32000:float32,512x151936:float32")
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T = args.temperature
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for spec in args.shapes.split(","):
        shape, dtype = spec.split(":")
        n, v = (int(s) for s in shape.split("x"))
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(n, v, generator=g) * 2).to(dt)
        targets = torch.randint(0, v, (n,), generator=g)
        grad = torch.randn(n, generator=g)

        def fwd():
            with torch.no_grad():
                return torch.log_softmax(logits.float() / T, -1).gather(-1, targets[:, None]).squeeze(-1)

        def fwd_entropy():
            with torch.no_grad():
                lsm = torch.log_softmax(logits.float() / T, -1)
                lp = lsm.gather(-1, targets[:, None]).squeeze(-1)
                ent = -(lsm.exp() * lsm).sum(-1)
                return lp, ent

        def fwd_bwd():
            x = logits.detach().requires_grad_(True)
            lp = torch.log_softmax(x.float() / T, -1).gather(-1, targets[:, None]).squeeze(-1)
            lp.backward(grad)
            return x.grad

        key = f"{n}x{v}:{dtype}"
        out[f"{key}:forward"] = median_ms(fwd, args.iters)
        out[f"{key}:forward+entropy"] = median_ms(fwd_entropy, args.iters)
        out[f"{key}:forward+backward"] = median_ms(fwd_bwd, args.iters)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
