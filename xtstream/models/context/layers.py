"""LLaMA-style building blocks shared by the XL and full-sequence encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtstream.models.context.attention import Attention
from xtstream.models.context.config import ContextConfig


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last axis (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in at least float32: a bf16 mean of squares loses most of its digits
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; the hidden width is ``2/3 * mlp_ratio * dim`` so the
    parameter count matches a plain ``mlp_ratio`` MLP."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = max(1, int(2 * mlp_ratio * dim / 3))
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer layer: ``x += attn(norm(x), keys=norm([memory; x]))``, then
    ``x += mlp(norm(x))``. ``memory (B, M, D)`` is this layer's *input* for earlier tokens (the
    Transformer-XL recurrence); ``mask`` indexes keys in ``[memory; x]`` order."""

    def __init__(self, config: ContextConfig) -> None:
        super().__init__()
        c = config
        self.norm1 = RMSNorm(c.dim)
        self.attn = Attention(c.dim, c.heads, c.attention, block_size=c.hyper_block_size,
                              samples=c.hyper_samples, min_seq_len=c.hyper_min_seq_len, bits=c.hyper_bits)
        self.norm2 = RMSNorm(c.dim)
        self.mlp = SwiGLU(c.dim, c.mlp_ratio)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``x (B, L, D)``, ``memory (B, M, D) | None``, ``mask`` over ``(L, M + L)`` -> ``(B, L, D)``."""
        h = self.norm1(x)
        kv_mem = None if memory is None else self.norm1(memory)
        x = x + self.drop(self.attn(h, kv_mem, mask))
        return x + self.drop(self.mlp(self.norm2(x)))
