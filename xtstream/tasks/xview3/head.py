"""xView3-style dense head: a UNet decoder over one region's feature pyramid, five maps at full size.

The decoder starts from the deepest map (the one the context encoder has contextualised), and at
each step upsamples ×2, concatenates the next shallower skip map and applies two 3×3 convolutions;
below the shallowest map it keeps upsampling (no skip) to the region's resolution. Outputs, each
``(N, 1, R, R)``:

* ``vessel``: mask logit (any object's footprint);
* ``centre``: centre heat-map logit, trained against Gaussians (σ = 2 px) at object centres;
* ``length``: vessel length in metres (regressed where an object is);
* ``is_vessel``, ``is_fishing``: classification logits, read at detected centres.

GroupNorm, not BatchNorm: a region's output must not depend on which other regions share its
batch (batches follow chunks and memory budgets, not the data's statistics).
"""

from __future__ import annotations

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


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


class ConvBlock(nn.Sequential):
    """Two 3×3 conv → GroupNorm → ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class XView3Head(Head):
    """UNet decoder: ``[(N, C_i, R / r_i, R / r_i)]`` (shallow → deep) → ``{name: (N, 1, R, R)}``.

    ``channels`` and ``reductions`` describe the encoder's maps (``feature_info``); the decoder has
    one block per map, then one per remaining ×2 step down to reduction 1.
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int],
                 decoder_channels: Sequence[int] = (128, 64, 32, 16), tail_channels: int = 16) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            raise ModelConfigError(f"xview3 head: {len(channels)} channel counts for "
                                   f"{len(reductions)} reductions")
        for a, b in zip(reductions, reductions[1:]):
            if b != 2 * a:
                raise ModelConfigError(f"xview3 head needs reductions doubling per stage, got {list(reductions)}")
        if reductions[0] & (reductions[0] - 1):
            raise ModelConfigError(f"xview3 head needs a power-of-two first reduction, got {reductions[0]}")
        self.channels, self.reductions = list(channels), list(reductions)
        steps = len(channels) - 1
        dec = list(decoder_channels)[:steps] + [decoder_channels[-1]] * max(0, steps - len(decoder_channels))
        self.blocks = nn.ModuleList()
        cin = channels[-1]
        for skip, cout in zip(reversed(channels[:-1]), dec):
            self.blocks.append(ConvBlock(cin + skip, cout))
            cin = cout
        self.tail = nn.ModuleList()
        for _ in range(int(np.log2(reductions[0]))):  # ×2 steps from the shallowest map to pixels
            self.tail.append(ConvBlock(cin, tail_channels))
            cin = tail_channels
        self.out = nn.Conv2d(cin, len(OUTPUTS), 1)

    def forward(self, features: Sequence[Tensor], scenes: int = 1, state: None = None
                ) -> tuple[dict[str, Tensor], None]:
        """``[(N, C_i, h_i, w_i)]`` → ``{name: (N, 1, R, R)}``; regions are decoded one by one, so
        ``scenes`` and ``state`` do not matter here."""
        if [f.shape[1] for f in features] != self.channels:
            raise ModelConfigError(f"xview3 head built for channels {self.channels}, got "
                                   f"{[f.shape[1] for f in features]}")
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        for block in self.tail:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        y = self.out(x)
        return {name: y[:, i: i + 1] for i, name in enumerate(OUTPUTS)}, None


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
