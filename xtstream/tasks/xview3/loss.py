"""The xView3 losses: per-map losses of the dense head's outputs, and of one chunk against its targets."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from xtstream.data.chunk import RegionChunk
from xtstream.errors import ModelConfigError
from xtstream.models.encoders import stack_targets
from xtstream.tasks.xview3.head import OUTPUTS, TARGET_ALIASES


def _target(targets: Mapping[str, Tensor], name: str) -> Tensor | None:
    for key, value in targets.items():
        if TARGET_ALIASES.get(key, key) == name:
            return value
    return None


def _masked_mean(loss: Tensor, mask: Tensor) -> Tensor:
    # a batch without labelled pixels contributes a zero that still depends on the graph
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def xview3_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                weights: Mapping[str, float] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Sum of per-map losses over the targets present; NaN target pixels are ignored.

    ``outputs``: :class:`XView3Head` maps ``(N, 1, R, R)``; ``targets``: ``(N, R, R)`` or
    ``(N, 1, R, R)`` maps named as :data:`OUTPUTS` (or :data:`TARGET_ALIASES`). ``vessel`` /
    ``is_vessel`` / ``is_fishing``: BCE with logits (the last two only on labelled pixels);
    ``centre``: MSE of the sigmoid against the Gaussian map; ``length``: L1 where the length is
    known and positive. Returns ``(total, {name: value})``.
    """
    weights = dict(weights or {})
    total = sum(o.sum() * 0.0 for o in outputs.values())  # keeps every output in the graph
    parts: dict[str, float] = {}
    for name in OUTPUTS:
        t = _target(targets, name)
        if t is None:
            continue
        pred = outputs[name].squeeze(1).float()
        t = t.reshape(pred.shape).to(pred.device, torch.float32)
        valid = ~torch.isnan(t)
        tz = torch.where(valid, t, torch.zeros_like(t))
        if name == "centre":
            loss = _masked_mean((torch.sigmoid(pred) - tz) ** 2, valid.float())
        elif name == "length":
            keep = (valid & (tz > 0)).float()
            loss = _masked_mean((pred - tz).abs(), keep)
        else:
            keep = valid.float()
            if name in ("is_vessel", "is_fishing"):
                vessel = _target(targets, "vessel")
                if vessel is not None:  # labels are defined on objects only
                    keep = keep * (vessel.reshape(pred.shape).to(pred.device) > 0).float()
            loss = _masked_mean(F.binary_cross_entropy_with_logits(pred, tz, reduction="none"), keep)
        loss = loss * weights.get(name, 1.0)
        parts[name] = float(loss.detach())
        total = total + loss
    return total, parts


def xview3_chunk_loss(chunk: RegionChunk) -> tuple[Tensor, dict[str, float]]:
    """:func:`xview3_loss` of a chunk's outputs ``{name: (n, 1, R, R)}`` against its target maps
    ``{name: (n, R, R)}`` (moved to the outputs' device)."""
    device = next(iter(chunk.outputs.values())).device
    names = list(OUTPUTS) + list(TARGET_ALIASES)
    targets = stack_targets([chunk], names, device)
    if not targets:
        raise ModelConfigError(f"scene {chunk.scene_id!r}, regions {chunk.indices}: no target maps "
                               f"named any of {names}")
    return xview3_loss(chunk.outputs, targets)
