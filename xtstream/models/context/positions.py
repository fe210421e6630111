"""2D sin-cos absolute positions of tokens in scene token coordinates."""

from __future__ import annotations

import torch
from torch import Tensor

from xtstream.errors import ModelConfigError


def sincos_2d(pos: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2D sin-cos embedding of ``(row, col)`` positions: ``(B, L, 2) -> (B, L, dim)``.

    A quarter of the channels each holds ``sin(row * w)``, ``cos(row * w)``, ``sin(col * w)``,
    ``cos(col * w)`` for ``dim // 4`` frequencies ``w_i = temperature ** (-i / (dim // 4))``; when
    ``dim`` is not a multiple of 4 the last ``dim % 4`` channels are zero. Positions may be
    fractional or negative. Integer positions are computed in float32; the result has the
    floating dtype of ``pos`` (float32 for integer ``pos``).

    >>> sincos_2d(torch.tensor([[[0.0, 0.0]]]), 8)
    tensor([[[0., 0., 1., 1., 0., 0., 1., 1.]]])
    """
    if pos.ndim < 1 or pos.shape[-1] != 2:
        raise ModelConfigError(f"sincos_2d: pos must end in a (row, col) axis of size 2, got shape {tuple(pos.shape)}")
    if dim < 4:
        raise ModelConfigError(f"sincos_2d: dim must be >= 4 (sin, cos for rows and columns), got {dim}")
    if not pos.is_floating_point():
        pos = pos.float()
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=pos.dtype, device=pos.device) / quarter)
    rows = pos[..., 0:1] * omega  # (..., quarter)
    cols = pos[..., 1:2] * omega
    parts = [rows.sin(), rows.cos(), cols.sin(), cols.cos()]
    if dim % 4:
        parts.append(pos.new_zeros(*pos.shape[:-1], dim % 4))
    return torch.cat(parts, dim=-1)


def add_positions(x: Tensor, pos: Tensor) -> Tensor:
    """``x + sincos_2d(pos)``, computed in at least float32 (bf16/fp16 cannot hold scene positions)."""
    if pos.dtype != torch.float64:
        pos = pos.float()
    return x + sincos_2d(pos, x.shape[-1]).to(x.dtype)
