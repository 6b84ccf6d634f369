"""Pre-norm transformer blocks with batch-first attention straight into PyTorch's fused SDPA.

``nn.TransformerEncoderLayer`` trains through ``nn.MultiheadAttention``, which works sequence-first: every layer
transposes its input, copies the packed q/k/v apart and zero-fills their gradients, ~10 % of a small model's step on
CPU (`neurobridge bench model`). Here q, k and v are strided views of one projection, so SDPA reads them in place,
and a batch without padding passes no mask at all (on CUDA a boolean mask rules out the flash kernel).

Parameter names and initialisation are those of ``nn.TransformerEncoder`` of pre-norm GELU layers (one layer
initialised and cloned ``depth`` times), so checkpoints written before this module load unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    """Multi-head self-attention over [B, L, d] with ``nn.MultiheadAttention``'s parameters."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.out_proj = nn.Linear(d, d)  # created first: the random draws happen in nn.MultiheadAttention's order
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        B, L, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d/H], a view
        p = self.dropout if self.training else 0.0
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            out = _fp32_attention(q, k, v, attend, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, d))


def _fp32_attention(q, k, v, attend, p) -> torch.Tensor:
    """SDPA in fp32 for bf16 inputs on a CPU: torch's CPU flash kernel runs bf16 at about half its fp32 rate, even on
    AMX (`bench model`: 85 against 186 GFLOP/s at the small model's shapes), so under bf16 autocast the projections
    gain from bf16 and attention loses; casting around it made a bf16 step 1.2-1.5x faster (docs/results.md)."""
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attend, dropout_p=p)
    return out.to(q.dtype)


class Block(nn.Module):
    """x + attn(norm1(x)), then x + ff(norm2(x)): pre-norm, stable without warm-up tricks at small scale."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(d, heads, dropout)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), attend))
        return x + self.drop(self.linear2(self.drop(F.gelu(self.linear1(self.norm2(x))))))


class Stack(nn.Module):
    """``depth`` blocks; ``forward(x, pad)`` with ``pad`` [B, L] True where a slot is padding (keys it never sees)."""

    def __init__(self, d: int, heads: int, depth: int, ff_mult: int, dropout: float):
        super().__init__()
        layer = Block(d, heads, ff_mult * d, dropout)
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(depth)])

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        attend = (~pad)[:, None, None, :] if bool(pad.any()) else None
        for layer in self.layers:
            x = layer(x, attend)
        return x
