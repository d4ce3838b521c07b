"""The policy of the grpo-keychain example: a tiny causal transformer, saved
as TorchScript so that the Node trainer (train.mjs) loads it through
rlkernels/torch. Run by train.mjs on first use with the repository's .venv
python:  python model.py OUT.pt --vocab V --max-len L --seed S
"""
import argparse

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """tokens [B, L] int64 -> logits [B, L, V] float32 (causal)."""

    def __init__(self, vocab: int, max_len: int, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.size(1)
        pos = torch.arange(L, device=tokens.device)
        x = self.tok(tokens) + self.pos(pos).unsqueeze(0)
        mask = torch.triu(torch.full((L, L), float("-inf"), device=tokens.device), diagonal=1)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.head(self.ln(x))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--max-len", type=int, required=True)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    m = TinyLM(a.vocab, a.max_len, a.d, a.layers, a.heads)
    torch.jit.save(torch.jit.script(m), a.out)


if __name__ == "__main__":
    main()
