"""PyTorch side of bench/vocab_divergence.bench.mjs (protocol: bench/torch_common.py).

Per-row divergences as distillation code writes them (log_softmax + kl_div;
TRL's generalized_jsd_loss for jsd), the values alone (no_grad) and values +
the student's gradient through autograd, eager and torch.compile.
Case: {"name", "rows", "vocab", "kind", "beta", "temperature", "op": forward | forward+backward, "close"?}.
"""
import torch
import torch.nn.functional as F

from torch_common import maybe_compile, parse_args, run


def divergence(s, t, kind, beta, temperature):
    ls = F.log_softmax(s / temperature, dim=-1)
    lt = F.log_softmax(t / temperature, dim=-1)
    if kind == "forward-kl":
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    if kind == "reverse-kl":
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=ls.dtype)
    mix = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    kl_t = F.kl_div(mix, lt, reduction="none", log_target=True)
    kl_s = F.kl_div(mix, ls, reduction="none", log_target=True)
    return (beta * kl_t + (1 - beta) * kl_s).sum(-1)


def make_case(c, mode):
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(c["rows"], c["vocab"], generator=g) * 2
    t = torch.randn(c["rows"], c["vocab"], generator=g) * 2
    if c.get("close"):  # close rows: the teacher is the student plus N(0, close^2) noise
        t = s0 + t * (c["close"] / 2)
    kind, beta, temperature = c["kind"], c.get("beta", 0.5), c.get("temperature", 1.0)

    def f(s, t):
        return divergence(s, t, kind, beta, temperature)
    fn = maybe_compile(f, mode)
    if c["op"] == "forward":
        def call():
            with torch.no_grad():
                return fn(s0, t)
        return call

    def call_bwd():
        s = s0.detach().requires_grad_(True)
        fn(s, t).sum().backward()
        return s.grad
    return call_bwd


if __name__ == "__main__":
    run(parse_args(), make_case)
