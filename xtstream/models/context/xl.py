"""Transformer-XL context encoder for images: chunks of regions with per-layer recurrent memory.

Each layer ``n`` keeps a memory of its own *inputs* ``h^{n-1}`` for the tokens before the current
chunk; the chunk's queries attend to keys/values ``[SG(memory); chunk]`` (the paper's eq. 1, SG =
stop-gradient when ``detach_state``). Positions are absolute: the 2D sin-cos embedding of each
token's scene ``(row, col)`` is added to the input once, so memory carries them along.

The attention mask, stated exactly: **a token attends to every token of its own chunk (not
causal: images have no reading order inside a chunk) and to every memory token**. Memory for the
next chunk is ``[memory; chunk inputs]`` cut to its last ``mem_len`` tokens per layer (``None``:
exactly the chunk just seen; ``0``: none). So chunked processing equals one pass over the whole
sequence under the block mask :func:`xl_attention_mask`: token ``i`` of chunk ``c`` sees ``j`` iff
``j`` is in chunk ``c``, or ``start(c) - M <= j < start(c)`` (``M = mem_len``, or the previous
chunk's length). Information therefore travels at most one memory span per layer: a chunk ``N``
chunks ahead is reached through ``N`` layers, not ``N - 1`` (the context grows with depth).

**Region memory** (``region_mem = K > 0``): each layer also keeps, for the last ``K`` regions
before the chunk, the mean of its inputs over each region's ``region_tokens`` tokens, and every
query attends to those ``K`` keys as well (``[region memory; memory; chunk]``). In row-major
order the region directly above is ``cols`` regions back: with ``K >= cols`` it is one key away,
where token memory would need ``cols * h * w`` tokens a layer. What is kept grows with the
scene's width in regions, never with its height.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.models.context.base import ContextEncoder, check_batch
from xtstream.models.context.config import ContextConfig
from xtstream.models.context.registry import register_context
from xtstream.models.context.layers import Block, RMSNorm
from xtstream.models.context.positions import add_positions


class XLState(NamedTuple):
    """Per-layer memory: ``mems[n]`` is ``(B, M, D)``, layer ``n``'s inputs for the last ``M``
    tokens seen (``None`` when ``mem_len=0``); ``regions[n]`` ``(B, K, D)`` its mean input over
    each of the last ``K`` regions seen (``None`` without region memory)."""

    mems: tuple[Tensor | None, ...]
    regions: tuple[Tensor | None, ...] | None = None


@register_context("xl")
class TransformerXLContext(ContextEncoder):
    """``kind="xl"``: ``depth`` pre-norm blocks (RMSNorm, SwiGLU, exact or Hyper attention) with
    Transformer-XL memory, then a final RMSNorm. See the module docstring for the mask."""

    def __init__(self, config: ContextConfig) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim)

    def forward(self, x: Tensor, pos: Tensor, state: XLState | None = None) -> tuple[Tensor, XLState]:
        """``x (B, L, D)``, ``pos (B, L, 2)``, the previous chunk's :class:`XLState` or ``None``
        -> ``((B, L, D), XLState)``."""
        self.check_inputs(x, pos)
        mems = self._check_state(state, x)
        regions = (state.regions if state is not None else None) or [None] * self.config.depth
        h = add_positions(x, pos)
        new_mems, new_regions = [], []
        for block, mem, reg in zip(self.blocks, mems, regions):
            new_mems.append(self._next_memory(mem, h))
            new_regions.append(self._next_region_memory(reg, h))
            keys = [m for m in (reg, mem) if m is not None]
            h = block(h, torch.cat(keys, dim=1) if len(keys) > 1 else (keys[0] if keys else None))
        return self.norm(h), XLState(tuple(new_mems), tuple(new_regions) if self.config.region_mem else None)

    def forward_masked(self, x: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """One pass over a whole sequence ``x (B, L, D)`` with no memory, every layer under the
        attention ``mask`` (boolean ``(L, L)``, ``True`` = may attend, or anything SDPA takes).
        With ``mask = xl_attention_mask(...)`` this is what chunked :meth:`forward` computes."""
        self.check_inputs(x, pos)
        if self.config.region_mem:
            raise ModelConfigError("TransformerXLContext.forward_masked: region memory (region_mem > 0) has no "
                                   "token mask that equals it; run the chunks through forward()")
        h = add_positions(x, pos)
        for block in self.blocks:
            h = block(h, None, mask)
        return self.norm(h)

    def _next_memory(self, mem: Tensor | None, h: Tensor) -> Tensor | None:
        m = self.config.mem_len
        if m == 0:
            return None
        if m is None:
            return self.hand_on(h)
        seq = h if mem is None else torch.cat([mem, h], dim=1)
        return self.hand_on(seq[:, max(0, seq.shape[1] - m):])

    def _next_region_memory(self, reg: Tensor | None, h: Tensor) -> Tensor | None:
        """``reg (B, K, D)`` with this chunk's regions' mean inputs appended, cut to the last ``K``."""
        k, per = self.config.region_mem, self.config.region_tokens
        if not k:
            return None
        if per is None or h.shape[1] % per:
            raise ModelConfigError(f"TransformerXLContext: region memory needs chunks of whole regions of "
                                   f"region_tokens tokens; got {h.shape[1]} tokens and region_tokens={per} "
                                   "(the xT model sets it from its token grid)")
        means = h.reshape(h.shape[0], -1, per, h.shape[-1]).mean(dim=2)
        seq = means if reg is None else torch.cat([reg, means], dim=1)
        return self.hand_on(seq[:, max(0, seq.shape[1] - k):])

    def _check_state(self, state: XLState | None, x: Tensor) -> Sequence[Tensor | None]:
        if state is None:
            return [None] * self.config.depth
        if not isinstance(state, XLState) or len(state.mems) != self.config.depth:
            raise ModelConfigError(f"TransformerXLContext: state must be the XLState of a {self.config.depth}-layer "
                                   f"XL encoder (what the previous chunk returned), got {type(state).__name__}")
        for mem in (*state.mems, *(state.regions or ())):
            if mem is not None:
                check_batch("TransformerXLContext", mem.shape[0], x)
        return state.mems

    def extra_repr(self) -> str:
        c = self.config
        extra = f", region_mem={c.region_mem}" if c.region_mem else ""
        return f"dim={c.dim}, depth={c.depth}, heads={c.heads}, mem_len={c.mem_len}{extra}, attention={c.attention!r}"


def xl_attention_mask(chunk_sizes: Sequence[int], mem_len: int | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """The ``(L, L)`` boolean mask (``True`` = may attend) under which one pass over the whole
    sequence equals chunked XL processing with chunks of ``chunk_sizes`` tokens, ``L`` their sum.

    Query ``i`` in chunk ``c`` (tokens ``[s_c, e_c)``) sees key ``j`` iff ``s_c <= j < e_c`` or
    ``s_c - M <= j < s_c``, where ``M = mem_len``, or the previous chunk's size when ``None``.

    >>> xl_attention_mask([2, 2]).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    if any(int(n) < 1 for n in chunk_sizes):
        raise ModelConfigError(f"xl_attention_mask: chunk sizes must be >= 1, got {list(chunk_sizes)}")
    total = sum(int(n) for n in chunk_sizes)
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    start, prev = 0, 0
    for n in chunk_sizes:
        span = prev if mem_len is None else mem_len
        mask[start:start + n, max(0, start - span):start + n] = True
        start, prev = start + n, n
    return mask
