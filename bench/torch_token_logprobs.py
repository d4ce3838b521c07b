"""PyTorch side of bench/token_logprobs.bench.mjs (protocol: bench/torch_common.py).

The same formulas as rlkernels, as a PyTorch user writes them:
log_softmax(logits.float() / T, -1).gather(...) (forward, under no_grad),
with the entropy -(p * log p).sum(-1), and forward + backward through
autograd (the gradient with respect to the logits), eager and torch.compile.
Case: {"name", "rows", "vocab", "dtype", "op": forward | forward+entropy | forward+backward, "temperature"}.
"""
import torch

from torch_common import maybe_compile, parse_args, run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_case(c, mode):
    g = torch.Generator().manual_seed(0)
    n, v = c["rows"], c["vocab"]
    T = c.get("temperature", 1.0)
    logits = (torch.randn(n, v, generator=g) * 2).to(DTYPES[c["dtype"]])
    targets = torch.randint(0, v, (n,), generator=g)
    grad = torch.randn(n, generator=g)
    op = c["op"]

    if op == "forward":
        def f(x, t):
            return torch.log_softmax(x.float() / T, -1).gather(-1, t[:, None]).squeeze(-1)
    elif op == "forward+entropy":
        def f(x, t):
            lsm = torch.log_softmax(x.float() / T, -1)
            return lsm.gather(-1, t[:, None]).squeeze(-1), -(lsm.exp() * lsm).sum(-1)
    else:
        def f(x, t):
            return torch.log_softmax(x.float() / T, -1).gather(-1, t[:, None]).squeeze(-1)
    fn = maybe_compile(f, mode)
    if op == "forward+backward":
        def call():
            x = logits.detach().requires_grad_(True)
            fn(x, targets).backward(grad)
            return x.grad
        return call

    def call_nograd():
        with torch.no_grad():
            return fn(logits, targets)
    return call_nograd


if __name__ == "__main__":
    run(parse_args(), make_case)
