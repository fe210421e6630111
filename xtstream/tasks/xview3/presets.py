"""xView3 model presets (``create_model("xt_…")``): the two SAR bands (VV, VH) in, the ``xview3``
dense head out. The paper used 4 Transformer-XL layers for xView3."""

from __future__ import annotations

from typing import Any

from xtstream.models.registry import preset_model, register_model
from xtstream.models.xt import XTModel

_TINY_SWINV2 = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@register_model
def xt_convnext_atto_xl(**kw: Any) -> XTModel:
    """ConvNeXt-atto regions of 256 px, 4 per chunk, 2 Transformer-XL layers of width 256."""
    return preset_model("convnext_atto", dict(region=256, chunk=4, context="xl", dim=256, depth=2, heads=8,
                                              head="xview3", in_chans=2), kw)


@register_model
def xt_convnext_atto(**kw: Any) -> XTModel:
    """The baseline of :func:`xt_convnext_atto_xl`: same backbone and head, no context."""
    return preset_model("convnext_atto", dict(region=256, chunk=4, context="none", head="xview3",
                                              in_chans=2), kw)


@register_model
def xt_swinv2_tiny_xl(**kw: Any) -> XTModel:
    """SwinV2-T (window 8) regions of 256 px, 4 Transformer-XL layers (the paper's xView3 setup)."""
    return preset_model("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="xl", dim=256, depth=4,
                                                        heads=8, head="xview3", in_chans=2), kw)


@register_model
def xt_swinv2_tiny_mamba(**kw: Any) -> XTModel:
    """SwinV2-T regions of 256 px, 4 Mamba layers."""
    return preset_model("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="mamba", dim=256,
                                                        depth=4, heads=8, head="xview3", in_chans=2), kw)


@register_model
def xt_swinv2_tiny(**kw: Any) -> XTModel:
    """The SwinV2-T baseline: no context."""
    return preset_model("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="none", head="xview3",
                                                        in_chans=2), kw)


@register_model
def xt_test_convnext_xl(**kw: Any) -> XTModel:
    """Tiny test config: ConvNeXt-atto at 64 px, 1 XL layer of width 32."""
    return preset_model("convnext_atto", dict(region=64, chunk=2, context="xl", dim=32, depth=1, heads=2,
                                              head="xview3", in_chans=2,
                                              head_kwargs={"decoder_channels": [16, 8, 8]}), kw)


@register_model
def xt_test_swinv2_xl(**kw: Any) -> XTModel:
    """Tiny test config: a 1.2 M-parameter SwinV2 at 64 px, 1 XL layer of width 32."""
    return preset_model("swinv2_tiny_window8_256", dict(region=64, chunk=2, context="xl", dim=32, depth=1,
                                                        heads=2, head="xview3", in_chans=2,
                                                        head_kwargs={"decoder_channels": [16, 8, 8]},
                                                        **_TINY_SWINV2), kw)
