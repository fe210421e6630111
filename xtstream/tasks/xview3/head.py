"""xView3-style dense head: a UNet decoder over one region's feature pyramid, five maps at stride ``s``.

The decoder starts from the deepest map (the one the context encoder has contextualised), and at
each step upsamples ×2, concatenates the next shallower skip map and applies two 3×3 convolutions;
below the shallowest map it keeps upsampling (no skip) down to the output ``stride`` (default 2).
Outputs, each ``(N, 1, R / s, R / s)``:

* ``vessel``: mask logit (any object's footprint);
* ``centre``: centre heat-map logit, trained against Gaussians (σ = 2 px) at object centres;
* ``length``: log-length, ``log(length_m / LENGTH_REF_M)`` (regressed where an object is; see
  :func:`length_to_metres`);
* ``is_vessel``, ``is_fishing``: classification logits, read at detected centres.

Why stride 2 by default: the full-resolution tail blocks (``R × R``, run once per region) cost more
than the backbone itself, and the winning xView3 solutions predicted at stride 2 — localisation F1
at stride 2 is 0.9999 of perfect (stride 16 caps it at 0.967), well inside the 200 m (20 px)
match tolerance. ``stride=1`` gives the old full-resolution maps (the context probes use it).

GroupNorm, not BatchNorm: a region's output must not depend on which other regions share its
batch (batches follow chunks and memory budgets, not the data's statistics).

Why context gets through (the design, measured on the context probes of
:mod:`xtstream.bench.probe`): a decoder that only sees the context through the deepest map
decodes each region on its own, normalises it per region and can solve the local part from its
skip connections — it learned to ignore the context entirely (two scenes differing only in a
marker two regions away decoded to identical outputs, 0.926 vs 0.926). So every decoder block is
**FiLM-conditioned** on the context encoder's own contribution to the region (its mean over the
region, layer-normalised): after each GroupNorm, ``x * (1 + γ) + β`` with ``γ, β`` from that
vector. Normalisation cannot cancel it (it is applied after), the skip connections cannot bypass
it (it scales them too), and it is of unit scale from the first step (``γ, β`` initialised at
unit scale for a unit-scale condition; a third of that was too weak to be learnt from). Without a
context encoder the same blocks are conditioned on the region's own deepest map, so the
region-only baseline has the same head.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.models.heads.base import Head, register_head

OUTPUTS = ("vessel", "centre", "length", "is_vessel", "is_fishing")
#: target names the data side may use for the same maps
TARGET_ALIASES = {"fishing": "is_fishing", "center": "centre"}
#: the reference length of the ``length`` map's scale: ``length = log(length_m / LENGTH_REF_M)``.
#: 100 m is near the geometric middle of xView3 vessel lengths (20–300 m → -1.6 … 1.1), so the
#: regression target is of unit scale like the other terms'
LENGTH_REF_M = 100.0
#: the centre map's initial logit: sigmoid ≈ 0.01 everywhere
CENTRE_PRIOR_LOGIT = -4.6
#: the log-length is clamped there before ``exp`` (≈ 2200 km): no overflow to ``inf`` in float32
MAX_LOG_LENGTH = 10.0


def metres_to_length(length_m: Tensor) -> Tensor:
    """Lengths in metres (``> 0``) → the ``length`` map's scale, ``log(length_m / LENGTH_REF_M)``.

    Why log: xView3 scores length by *relative* error (``1 - min(|p - t| / t, 1)``) and an L1 of
    log-lengths is that relative error for small errors, the same for a 20 m boat as a 300 m
    tanker; an L1 in metres was ~100 at initialisation and swamped every other term.
    """
    return torch.log(length_m / LENGTH_REF_M)


def length_to_metres(length: Tensor) -> Tensor:
    """Inverse of :func:`metres_to_length`: raw ``length`` outputs → metres, ``>= 0`` by construction."""
    return LENGTH_REF_M * torch.exp(length.clamp(max=MAX_LOG_LENGTH))


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


class DecoderBlock(nn.Module):
    """One ×2 step up the pyramid: ``x (N, cin, h, w)`` and ``skip (N, skip, 2h, 2w)`` → ``(N, cout, 2h, 2w)``.

    A 1×1 conv fuses the upsampled ``x`` with ``skip`` — as two 1×1 convs, the one on ``x`` applied
    *before* the nearest upsampling (a 1×1 conv commutes with it: the same map at a quarter of the
    cost) — then one 3×3 conv at ``cout``. Each is followed by GroupNorm → FiLM → ReLU, the FiLM
    scale and shift ``(1 + γ, β)`` per channel computed from the region's conditioning vector
    ``(N, cond)`` (``cond=0``: no FiLM).
    """

    def __init__(self, cin: int, skip: int, cout: int, cond: int = 0) -> None:
        super().__init__()
        self.deep = nn.Conv2d(cin, cout, 1, bias=False)
        self.skip = nn.Conv2d(skip, cout, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.film = nn.Linear(cond, 4 * cout) if cond else None
        if self.film is not None:
            # γ, β of unit scale for a unit-scale condition: a third of that (nn.Linear's default)
            # left the context probe's two scenes indistinguishable after 200 steps
            nn.init.normal_(self.film.weight, std=cond**-0.5)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, skip: Tensor, cond: Tensor | None = None) -> Tensor:
        x = F.interpolate(self.deep(x), size=skip.shape[-2:], mode="nearest") + self.skip(skip)
        if self.film is None or cond is None:
            return F.relu(self.norm2(self.conv(F.relu(self.norm1(x)))))
        g1, b1, g2, b2 = self.film(cond)[..., None, None].chunk(4, dim=1)
        x = F.relu(torch.addcmul(b1, self.norm1(x), 1 + g1))
        return F.relu(torch.addcmul(b2, self.norm2(self.conv(x)), 1 + g2))


class XView3Head(Head):
    """UNet decoder: ``[(N, C_i, R / r_i, R / r_i)]`` (shallow → deep) → ``{name: (N, 1, R / s, R / s)}``.

    ``channels`` and ``reductions`` describe the encoder's maps (``feature_info``); the decoder has
    one :class:`DecoderBlock` per skip map (``decoder_channels`` wide, deep → shallow), a bilinear
    upsampling from the shallowest map's reduction ``r_0`` to the output ``stride`` (a power of two,
    at most ``r_0``) and a 3×3 conv to the five outputs.
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int],
                 decoder_channels: Sequence[int] = (128, 64, 32), film: bool = True, stride: int = 2,
                 tail_channels: int | None = None) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            raise ModelConfigError(f"xview3 head: {len(channels)} channel counts for "
                                   f"{len(reductions)} reductions")
        for a, b in zip(reductions, reductions[1:]):
            if b != 2 * a:
                raise ModelConfigError(f"xview3 head needs reductions doubling per stage, got {list(reductions)}")
        if reductions[0] & (reductions[0] - 1):
            raise ModelConfigError(f"xview3 head needs a power-of-two first reduction, got {reductions[0]}")
        if stride < 1 or stride & (stride - 1) or stride > reductions[0]:
            raise ModelConfigError(f"xview3 head: stride must be a power of two from 1 to the shallowest "
                                   f"map's reduction {reductions[0]}, got {stride}")
        if not decoder_channels:
            raise ModelConfigError("xview3 head: decoder_channels must name at least one width")
        if tail_channels is not None:
            # the decoder no longer has blocks below the shallowest map; kept so configs written
            # for the older head still build
            warnings.warn("xview3 head: tail_channels is ignored (no decoder blocks run below the "
                          "shallowest map any more)", DeprecationWarning, stacklevel=2)
        self.channels, self.reductions, self.film = list(channels), list(reductions), film
        self.stride = int(stride)
        steps = len(channels) - 1
        cond = channels[-1] if film else 0
        dec = list(decoder_channels)[:steps] + [decoder_channels[-1]] * max(0, steps - len(decoder_channels))
        self.blocks = nn.ModuleList()
        cin = channels[-1]
        for skip, cout in zip(reversed(channels[:-1]), dec):
            self.blocks.append(DecoderBlock(cin, skip, cout, cond))
            cin = cout
        # below the shallowest map only the output conv runs: decoder blocks at R / s (R × R per
        # region at stride 1) had cost more than the backbone itself
        self.upscale = reductions[0] // self.stride
        self.out = nn.Conv2d(cin, len(OUTPUTS), 3, padding=1)
        with torch.no_grad():
            # centres are a few cells in tens of thousands: start at p = 0.01 (as CenterNet does),
            # so the focal loss's background term does not dominate the first steps
            self.out.bias[OUTPUTS.index("centre")] = CENTRE_PRIOR_LOGIT

    def forward(self, features: Sequence[Tensor], scenes: int = 1, state: None = None,
                context: Tensor | None = None) -> tuple[dict[str, Tensor], None]:
        """``[(N, C_i, h_i, w_i)]`` → ``{name: (N, 1, R / s, R / s)}``; regions are decoded one by one, so
        ``scenes`` and ``state`` do not matter here."""
        if [f.shape[1] for f in features] != self.channels:
            raise ModelConfigError(f"xview3 head built for channels {self.channels}, got "
                                   f"{[f.shape[1] for f in features]}")
        x = features[-1]
        cond = self.condition(x, context) if self.film else None
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip, cond)
        if self.upscale > 1:
            x = F.interpolate(x, scale_factor=float(self.upscale), mode="bilinear", align_corners=False)
        y = self.out(x)  # (N, 5, R / s, R / s)
        return {name: y[:, i: i + 1] for i, name in enumerate(OUTPUTS)}, None

    @staticmethod
    def condition(deep: Tensor, context: Tensor | None) -> Tensor:
        """``(N, C)``: what the decoder's FiLM layers are conditioned on — the region's mean of the
        context encoder's contribution (what other regions say about it), or of its own deepest
        map without a context encoder; layer-normalised, so its scale does not depend on how large
        the backbone's features grow."""
        source = context if context is not None else deep
        return F.layer_norm(source.mean(dim=(2, 3)), (source.shape[1],))


@register_head("xview3")
def xview3(channels: list[int], reductions: list[int], config) -> XView3Head:
    """The xView3 dense head over the whole feature pyramid (``head_kwargs`` tune the decoder)."""
    return XView3Head(channels, reductions, **config.head_kwargs)


def gaussian_heatmap(points: Sequence[tuple[float, float]], shape: tuple[int, int],
                     sigma: float = 2.0) -> np.ndarray:
    """``(H, W)`` float32 map: the max over ``points`` (``(row, col)``) of unit Gaussians of ``sigma``."""
    h, w = shape
    out = np.zeros((h, w), dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for r, c in points:
        np.maximum(out, np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)), out=out)
    return out
