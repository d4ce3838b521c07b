"""Accuracy of PyTorch's forward KL (log_softmax + kl_div, eager and torch.compile) on close rows,
per row against float64 on the same float32 values (bench/RESULTS.md, "Close rows"): the student's
logits N(0, 4), the teacher the student plus N(0, noise^2). 64 rows at V = 32000 and 151936.
  .venv/bin/python bench/torch_vocab_divergence_close_accuracy.py
"""
import torch, torch.nn.functional as F
torch.set_num_threads(1)
def fkl(s, t):
    ls = F.log_softmax(s, dim=-1); lt = F.log_softmax(t, dim=-1)
    return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
cf = torch.compile(fkl)
g = torch.Generator().manual_seed(0)
for V in (32000, 151936):
  for noise in (1.0, 0.3, 0.1, 0.03):
    s = torch.randn(64, V, generator=g) * 2
    t = s + torch.randn(64, V, generator=g) * noise
    ref = fkl(s.double(), t.double())
    for name, fn in (("eager", fkl), ("compile", cf)):
        with torch.no_grad(): v = fn(s, t).double()
        rel = ((v - ref).abs() / ref)
        print(f"V={V} noise={noise} {name}: KL~{ref.mean():.2e} worst rel {rel.max():.2e} rms {rel.pow(2).mean().sqrt():.2e}", flush=True)
