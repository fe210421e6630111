"""The xView3 losses: per-map losses of the dense head's outputs (on its output grid, targets
downsampled to it), and of one chunk against its targets; term weights configurable."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from xtstream.data.chunk import RegionChunk
from xtstream.errors import ModelConfigError
from xtstream.models.encoders import stack_targets
from xtstream.tasks.xview3.head import OUTPUTS, TARGET_ALIASES, metres_to_length


def _target(targets: Mapping[str, Tensor], name: str) -> Tensor | None:
    for key, value in targets.items():
        if TARGET_ALIASES.get(key, key) == name:
            return value
    return None


def _masked_mean(loss: Tensor, mask: Tensor) -> Tensor:
    # a batch without labelled pixels contributes a zero that still depends on the graph
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


#: the weight of each term by default: every term is of unit scale at initialisation (the length
#: is a log-length, see :func:`~xtstream.tasks.xview3.head.metres_to_length`), so equal weights
DEFAULT_WEIGHTS: dict[str, float] = {name: 1.0 for name in OUTPUTS}


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`DEFAULT_WEIGHTS` updated with ``weights`` (keys: :data:`OUTPUTS` or their aliases)."""
    out = dict(DEFAULT_WEIGHTS)
    for key, value in (weights or {}).items():
        name = TARGET_ALIASES.get(key, key)
        if name not in OUTPUTS:
            raise ModelConfigError(f"xview3 loss weight for {key!r}: expected one of {list(OUTPUTS)}")
        out[name] = float(value)
    return out


def _max_pool(t: Tensor, s: int) -> Tensor:
    """NaN-aware ``s × s`` max-pool of ``(N, H, W)``: NaN only where the whole cell is NaN."""
    if s == 1:
        return t
    pooled = F.max_pool2d(torch.nan_to_num(t, nan=-float("inf"))[:, None], s)[:, 0]
    return torch.where(torch.isinf(pooled) & (pooled < 0), torch.full_like(pooled, float("nan")), pooled)


def _object_mean(t: Tensor, on: Tensor, s: int) -> Tensor:
    """Mean of ``t`` ``(N, H, W)`` over the cell's pixels where ``on`` (and ``t`` is not NaN), per
    ``s × s`` cell; NaN (= ignored) for cells without such pixels."""
    keep = (on & ~torch.isnan(t)).float()
    if s == 1:
        return torch.where(keep > 0, t, torch.full_like(t, float("nan")))
    num = F.avg_pool2d((torch.nan_to_num(t) * keep)[:, None], s)[:, 0]
    den = F.avg_pool2d(keep[:, None], s)[:, 0]
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(den, float("nan")))


def downsample_targets(targets: Mapping[str, Tensor], stride: int) -> dict[str, Tensor]:
    """Full-resolution target maps ``(N, R, R)`` → the head's output grid ``(N, R / s, R / s)``.

    * ``vessel``, ``centre``: max-pool — a cell touching an object is positive, and the centre
      Gaussian's peak (1 at the centre pixel) survives in the cell that holds the centre, which is
      where :func:`~xtstream.tasks.xview3.decode.decode_xview3` looks for peaks (an average would
      flatten σ = 2 px Gaussians to ~0.8 at stride 2 and lower at 4);
    * ``length``, ``is_vessel``, ``is_fishing``: the mean over the cell's *object* pixels (length:
      known and positive; the classes: inside the ``vessel`` mask, when there is one) — these are
      only defined on objects, so background pixels must not dilute them; cells without any are NaN
      (ignored). Where two objects share a cell the mean blends them (a soft class target, which
      BCE takes; a length in between).

    At stride 1 the maps come back as they are except that undefined pixels become NaN, which is
    exactly what :func:`xview3_loss` ignored before. Returns float32 maps.
    """
    out: dict[str, Tensor] = {}
    vessel = targets.get("vessel")
    for name, t in targets.items():
        t = t.float()  # NaN marks what is ignored: stored uint8 masks must become float first
        if name in ("vessel", "centre"):
            out[name] = _max_pool(t, stride)
        elif name == "length":
            out[name] = _object_mean(t, torch.nan_to_num(t) > 0, stride)
        else:  # is_vessel, is_fishing: labels are defined on objects only
            on = vessel > 0 if vessel is not None else torch.ones_like(t, dtype=torch.bool)
            out[name] = _object_mean(t, on, stride)
    return out


#: the centre heat-map losses: ``focal`` (CenterNet's) or ``mse`` (of the sigmoid)
CENTRE_LOSSES = ("focal", "mse")


def centre_focal_loss(logits: Tensor, target: Tensor, valid: Tensor, alpha: float = 2.0, beta: float = 4.0
                      ) -> Tensor:
    """CenterNet's penalty-reduced focal loss of centre ``logits`` ``(N, h, w)`` against Gaussian
    heat-maps ``target`` (1 at object centres), over ``valid`` cells.

    Zhou et al., "Objects as Points" (2019), eq. 1 (after CornerNet, Law & Deng 2018):
    ``-1/K Σ (1-p)^α log p`` at centres (``target >= 1``), ``(1-y)^β p^α log(1-p)`` elsewhere,
    ``α = 2, β = 4``. Why not a per-pixel MSE/BCE: centres are a few cells among tens of thousands
    per region, and a mean over cells taught the demo's model to predict no centre anywhere (0
    detections after 300 steps). ``K`` is the number of centres but at least the number of regions
    ``N``: SAR scenes are mostly empty sea, and normalising an empty chunk by one centre would
    make its background term (at initialisation ``16k`` cells per region) swamp the others.
    """
    pos = valid & (target >= 1.0 - 1e-3)  # float16-stored maps: the peak is 1 within 1e-3
    neg = valid & ~pos
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_term = ((1 - p) ** alpha * log_p)[pos].sum()
    neg_term = ((1 - torch.nan_to_num(target)) ** beta * p**alpha * log_q)[neg].sum()
    k = torch.clamp(pos.sum(), min=logits.shape[0]).float()
    return -(pos_term + neg_term) / k


def xview3_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                weights: Mapping[str, float] | None = None, centre_loss: str = "focal"
                ) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of per-map losses over the targets present; NaN target pixels are ignored.

    ``outputs``: :class:`XView3Head` maps ``(N, 1, R / s, R / s)``; ``targets``: full-resolution
    ``(N, R, R)`` or ``(N, 1, R, R)`` maps named as :data:`OUTPUTS` (or :data:`TARGET_ALIASES`),
    brought to the output grid by :func:`downsample_targets` (``s`` = their size ratio).
    ``vessel`` / ``is_vessel`` / ``is_fishing``: BCE with logits (the last two only on object
    cells); ``centre``: :func:`centre_focal_loss` (``centre_loss="focal"``, the default) or the MSE
    of the sigmoid against the Gaussian map (``"mse"``); ``length``: L1 of log-lengths
    (:func:`~xtstream.tasks.xview3.head.metres_to_length`) where the length is known and positive.
    ``weights``: ``{name: weight}``, missing names :data:`DEFAULT_WEIGHTS`. Returns ``(total,
    {name: weighted value})``; the parts sum to the total.
    """
    weights = check_weights(weights)
    if centre_loss not in CENTRE_LOSSES:
        raise ModelConfigError(f"xview3 loss: centre_loss {centre_loss!r}; expected one of {list(CENTRE_LOSSES)}")
    total = sum(o.sum() * 0.0 for o in outputs.values())  # keeps every output in the graph
    h, w = next(iter(outputs.values())).shape[-2:]
    full: dict[str, Tensor] = {}
    for name in OUTPUTS:
        t = _target(targets, name)
        if t is not None:
            t = t.to(outputs[name].device, torch.float32)
            full[name] = t.reshape(-1, *t.shape[-2:])
    if not full:
        return total, {}
    th, tw = next(iter(full.values())).shape[-2:]
    stride = th // h
    if stride < 1 or (th, tw) != (h * stride, w * stride):
        raise ModelConfigError(f"xview3 loss: target maps {th}x{tw} are not a whole multiple of the "
                               f"outputs' {h}x{w}")
    grid = downsample_targets(full, stride)
    parts: dict[str, float] = {}
    for name, t in grid.items():
        pred = outputs[name].squeeze(1).float()
        valid = ~torch.isnan(t)
        tz = torch.where(valid, t, torch.zeros_like(t))
        if name == "centre" and centre_loss == "focal":
            loss = centre_focal_loss(pred, tz, valid)
        elif name == "centre":
            loss = _masked_mean((torch.sigmoid(pred) - tz) ** 2, valid.float())
        elif name == "length":
            keep = valid & (tz > 0)
            log_len = metres_to_length(torch.where(keep, tz, torch.ones_like(tz)))
            loss = _masked_mean((pred - log_len).abs(), keep.float())
        else:
            loss = _masked_mean(F.binary_cross_entropy_with_logits(pred, tz, reduction="none"), valid.float())
        loss = loss * weights[name]
        parts[name] = float(loss.detach())
        total = total + loss
    return total, parts


def xview3_chunk_loss(chunk: RegionChunk, weights: Mapping[str, float] | None = None,
                      centre_loss: str = "focal") -> tuple[Tensor, dict[str, float]]:
    """:func:`xview3_loss` of a chunk's outputs ``{name: (n, 1, R / s, R / s)}`` against its
    target maps ``{name: (n, R, R)}`` (moved to the outputs' device), with ``weights``."""
    device = next(iter(chunk.outputs.values())).device
    names = list(OUTPUTS) + list(TARGET_ALIASES)
    targets = stack_targets([chunk], names, device)
    if not targets:
        raise ModelConfigError(f"scene {chunk.scene_id!r}, regions {chunk.indices}: no target maps "
                               f"named any of {names}")
    return xview3_loss(chunk.outputs, targets, weights, centre_loss)
