"""Create models by name, timm-style: named presets, or any timm backbone name plus options.

>>> model = create_model("convnext_atto", context="xl", region=256, chunk=4, depth=2,
...                      head="xview3", in_chans=2)                          # doctest: +SKIP
>>> model = create_model("xt_swinv2_tiny_xl", in_chans=2)                    # doctest: +SKIP
>>> list_models("xt_*")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable

from xtstream.errors import ModelConfigError
from xtstream.models.config import config_from_kwargs
from xtstream.models.xt import XTModel

_PRESETS: dict[str, Callable[..., XTModel]] = {}
#: modules holding the tasks' presets, imported on first lookup (tasks import models, not the
#: other way round)
_PRESET_MODULES = ("xtstream.tasks.xview3.presets", "xtstream.tasks.classification.presets")


def register_model(fn: Callable[..., XTModel]) -> Callable[..., XTModel]:
    """Decorator: register ``fn(**overrides) -> XTModel`` under its function name."""
    if fn.__name__ in _PRESETS:
        raise ModelConfigError(f"a model named {fn.__name__!r} is already registered")
    _PRESETS[fn.__name__] = fn
    return fn


def _load_presets() -> None:
    for module in _PRESET_MODULES:
        importlib.import_module(module)


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a glob ``pattern``."""
    _load_presets()
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: Any) -> XTModel:
    """A preset by name (``kwargs`` override it), or an xT model around the timm backbone ``name``.

    Keyword arguments are :class:`XTConfig` fields (``context=``, ``region=``, ``chunk=``,
    ``depth=``, ``heads=``, ``dim=``, ``head=``, ``in_chans=``, ``num_classes=``, …), context
    knobs (``mem_len=``, ``attention=``, …) or backbone options (``embed_dim=``, …).
    ``context="none"`` is the plain backbone with the same head: the baseline.
    """
    _load_presets()
    if name in _PRESETS:
        return _PRESETS[name](**kwargs)
    return XTModel(config_from_kwargs(name, **kwargs))


def preset_model(backbone: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> XTModel:
    """A preset's model: ``defaults`` (the preset's :class:`XTConfig` fields and options) updated
    by the caller's ``overrides``."""
    merged = {**defaults, **overrides}
    return XTModel(config_from_kwargs(backbone, **merged))
