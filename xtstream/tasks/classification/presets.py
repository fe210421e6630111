"""Scene-classification model presets (``create_model("xt_…")``): the ``classification`` head."""

from __future__ import annotations

from typing import Any

from xtstream.models.registry import preset_model, register_model
from xtstream.models.xt import XTModel

_TINY_HIERA = dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))


@register_model
def xt_swinv2_tiny_hyper(**kw: Any) -> XTModel:
    """SwinV2-T regions of 256 px, 2 full-sequence HyperAttention layers (classification)."""
    return preset_model("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="full", dim=256,
                                                        depth=2, heads=8, head="classification",
                                                        context_kwargs={"attention": "hyper"}), kw)


@register_model
def xt_test_hiera_none(**kw: Any) -> XTModel:
    """Tiny test config: a 0.26 M-parameter Hiera at 64 px, no context, classification."""
    return preset_model("hiera_tiny_224", dict(region=64, chunk=2, context="none", head="classification",
                                               num_classes=5, in_chans=2, **_TINY_HIERA), kw)
