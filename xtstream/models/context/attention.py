"""Multi-head attention over ``[memory; chunk]`` keys: exact (torch SDPA) or HyperAttention.

Masks follow :func:`torch.nn.functional.scaled_dot_product_attention`: boolean (``True`` =
may attend) or additive float, broadcastable to ``(B, heads, Lq, Lk)``. Keys are the memory
tokens (if any) followed by the chunk's own tokens, so a mask's key axis indexes that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.models.context.hyper import HyperAttention


def exact_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention ``(B, H, Lq, d), (B, H, Lk, d), (B, H, Lk, d) -> (B, H, Lq, d)``.

    ``mask`` is boolean (``True`` = attend) or additive, broadcastable to ``(B, H, Lq, Lk)``. No
    causal flag on purpose: SDPA aligns ``is_causal`` top-left when ``Lq < Lk``, which is wrong
    once memory is prepended, so callers build masks explicitly.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head attention whose queries come from the chunk and keys/values from
    ``[memory; chunk]``: ``forward(x (B, L, D), memory (B, M, D) | None, mask) -> (B, L, D)``.

    ``attention="hyper"`` approximates the softmax with :class:`HyperAttention`; memory keys are
    then ordinary keys (hashed, sorted into blocks and sampled with the chunk's keys), so with at
    most ``min_seq_len`` keys in all, or one block holding everything and no sampling, the result
    is exact attention over memory and chunk.
    """

    def __init__(self, dim: int, heads: int, attention: str = "exact", *, block_size: int = 256,
                 samples: int = 256, min_seq_len: int = 2048, bits: int = 7) -> None:
        super().__init__()
        if dim % heads:
            raise ModelConfigError(f"Attention: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        if attention == "exact":
            self.hyper = None
        elif attention == "hyper":
            self.hyper = HyperAttention(dim // heads, block_size=block_size, samples=samples,
                                        min_seq_len=min_seq_len, bits=bits)
        else:
            raise ModelConfigError(f"Attention: attention {attention!r} is not 'exact' or 'hyper'")

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        keys = x if memory is None or memory.shape[1] == 0 else torch.cat([memory, x], dim=1)
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(keys).view(b, keys.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is not None and mask.ndim and mask.shape[-1] not in (1, keys.shape[1]):
            raise ModelConfigError(f"Attention: mask has {mask.shape[-1]} key columns but there are "
                                   f"{keys.shape[1]} keys (memory {keys.shape[1] - n} + chunk {n})")
        y = exact_attention(q, k, v, mask) if self.hyper is None else self.hyper(q, k, v, mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))
