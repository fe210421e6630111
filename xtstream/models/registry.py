"""Create models by name, timm-style: named presets, or any timm backbone name plus options.

>>> model = create_model("convnext_atto", context="xl", region=256, chunk=4, depth=2,
...                      head="xview3", in_chans=2)                          # doctest: +SKIP
>>> model = create_model("xt_swinv2_tiny_xl", in_chans=2)                    # doctest: +SKIP
>>> list_models("xt_*")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from xtstream.errors import ModelConfigError
from xtstream.models.config import config_from_kwargs
from xtstream.models.xt import XTModel

_PRESETS: dict[str, Callable[..., XTModel]] = {}

_TINY_SWINV2 = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
_TINY_HIERA = dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))


def register_model(fn: Callable[..., XTModel]) -> Callable[..., XTModel]:
    """Decorator: register ``fn(**overrides) -> XTModel`` under its function name."""
    if fn.__name__ in _PRESETS:
        raise ModelConfigError(f"a model named {fn.__name__!r} is already registered")
    _PRESETS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a glob ``pattern``."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: Any) -> XTModel:
    """A preset by name (``kwargs`` override it), or an xT model around the timm backbone ``name``.

    Keyword arguments are :class:`XTConfig` fields (``context=``, ``region=``, ``chunk=``,
    ``depth=``, ``heads=``, ``dim=``, ``head=``, ``in_chans=``, ``num_classes=``, …), context
    knobs (``mem_len=``, ``attention=``, …) or backbone options (``embed_dim=``, …).
    ``context="none"`` is the plain backbone with the same head: the baseline.
    """
    if name in _PRESETS:
        return _PRESETS[name](**kwargs)
    return XTModel(config_from_kwargs(name, **kwargs))


def _preset(backbone: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> XTModel:
    merged = {**defaults, **overrides}
    return XTModel(config_from_kwargs(backbone, **merged))


# Presets. xView3 ones take the two SAR bands (VV, VH); the paper used 4 XL layers for xView3.
@register_model
def xt_convnext_atto_xl(**kw: Any) -> XTModel:
    """ConvNeXt-atto regions of 256 px, 4 per chunk, 2 Transformer-XL layers of width 256."""
    return _preset("convnext_atto", dict(region=256, chunk=4, context="xl", dim=256, depth=2, heads=8,
                                         head="xview3", in_chans=2), kw)


@register_model
def xt_convnext_atto(**kw: Any) -> XTModel:
    """The baseline of :func:`xt_convnext_atto_xl`: same backbone and head, no context."""
    return _preset("convnext_atto", dict(region=256, chunk=4, context="none", head="xview3",
                                         in_chans=2), kw)


@register_model
def xt_swinv2_tiny_xl(**kw: Any) -> XTModel:
    """SwinV2-T (window 8) regions of 256 px, 4 Transformer-XL layers (the paper's xView3 setup)."""
    return _preset("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="xl", dim=256, depth=4,
                                                   heads=8, head="xview3", in_chans=2), kw)


@register_model
def xt_swinv2_tiny_mamba(**kw: Any) -> XTModel:
    """SwinV2-T regions of 256 px, 4 Mamba layers."""
    return _preset("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="mamba", dim=256,
                                                   depth=4, heads=8, head="xview3", in_chans=2), kw)


@register_model
def xt_swinv2_tiny_hyper(**kw: Any) -> XTModel:
    """SwinV2-T regions of 256 px, 2 full-sequence HyperAttention layers (classification)."""
    return _preset("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="full", dim=256,
                                                   depth=2, heads=8, head="classification",
                                                   context_kwargs={"attention": "hyper"}), kw)


@register_model
def xt_swinv2_tiny(**kw: Any) -> XTModel:
    """The SwinV2-T baseline: no context."""
    return _preset("swinv2_tiny_window8_256", dict(region=256, chunk=4, context="none", head="xview3",
                                                   in_chans=2), kw)


@register_model
def xt_test_convnext_xl(**kw: Any) -> XTModel:
    """Tiny test config: ConvNeXt-atto at 64 px, 1 XL layer of width 32."""
    return _preset("convnext_atto", dict(region=64, chunk=2, context="xl", dim=32, depth=1, heads=2,
                                         head="xview3", in_chans=2,
                                         head_kwargs={"decoder_channels": [16, 8, 8]}), kw)


@register_model
def xt_test_swinv2_xl(**kw: Any) -> XTModel:
    """Tiny test config: a 1.2 M-parameter SwinV2 at 64 px, 1 XL layer of width 32."""
    return _preset("swinv2_tiny_window8_256", dict(region=64, chunk=2, context="xl", dim=32, depth=1,
                                                   heads=2, head="xview3", in_chans=2,
                                                   head_kwargs={"decoder_channels": [16, 8, 8]},
                                                   **_TINY_SWINV2), kw)


@register_model
def xt_test_hiera_none(**kw: Any) -> XTModel:
    """Tiny test config: a 0.26 M-parameter Hiera at 64 px, no context, classification."""
    return _preset("hiera_tiny_224", dict(region=64, chunk=2, context="none", head="classification",
                                          num_classes=5, in_chans=2, **_TINY_HIERA), kw)
