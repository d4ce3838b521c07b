"""PyTorch side of bench/kl_penalty.bench.mjs (protocol: bench/torch_common.py).

verl's k3 (low_var_kl) as verl writes it, value and its gradient with respect
to the log-probs through autograd, eager and torch.compile; on `n` tokens
(the per-call overhead row: n = 16).
Case: {"name", "n", "op": forward+backward}.
"""
import torch

from torch_common import maybe_compile, parse_args, run


def k3(logp, ref):
    kl = torch.clamp(ref - logp, -20, 20)
    return torch.clamp(torch.exp(kl) - kl - 1, -10, 10)


def make_case(c, mode):
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand(c["n"], generator=g) * 4
    ref = logp0 + torch.randn(c["n"], generator=g) * 0.3
    fn = maybe_compile(k3, mode)
    reps = c.get("reps", 1)

    def call():
        for _ in range(reps):
            logp = logp0.detach().requires_grad_(True)
            v = fn(logp, ref)
            v.backward(torch.ones_like(v))
        return logp.grad
    return call


if __name__ == "__main__":
    run(parse_args(), make_case)
