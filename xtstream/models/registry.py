"""Create models by name, timm-style: named presets, or any timm backbone name plus options.

>>> model = create_model("convnext_atto", context="xl", region=256, chunk=4, depth=2,
...                      head="xview3", in_chans=2)                          # doctest: +SKIP
>>> model = create_model("xt_swinv2_tiny_xl", in_chans=2)                    # doctest: +SKIP
>>> list_models("xt_*")                                                      # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from xtstream._runtime.registry import Registry
from xtstream.errors import ModelConfigError
from xtstream.models.config import config_from_kwargs
from xtstream.models.xt import XTModel

#: preset name -> ``fn(**overrides) -> XTModel``; the tasks' preset modules are imported on first
#: lookup (tasks import models, not the other way round)
PRESETS: Registry[Callable[..., XTModel]] = Registry(
    "model", ModelConfigError, ["xtstream.tasks.xview3.presets", "xtstream.tasks.classification.presets"])


def register_model(fn: Callable[..., XTModel]) -> Callable[..., XTModel]:
    """Decorator: register ``fn(**overrides) -> XTModel`` under its function name."""
    if fn.__name__ in PRESETS.entries:
        raise ModelConfigError(f"a model named {fn.__name__!r} is already registered")
    return PRESETS.add(fn.__name__, fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names matching a glob ``pattern``."""
    return [n for n in PRESETS.names() if fnmatch.fnmatch(n, pattern)]


def create_model(name: str, **kwargs: Any) -> XTModel:
    """A preset by name (``kwargs`` override it), or an xT model around the timm backbone ``name``.

    Keyword arguments are :class:`XTConfig` fields (``context=``, ``region=``, ``chunk=``,
    ``depth=``, ``heads=``, ``dim=``, ``head=``, ``in_chans=``, ``num_classes=``, …), context
    knobs (``mem_len=``, ``attention=``, …) or backbone options (``embed_dim=``, …).
    ``context="none"`` is the plain backbone with the same head: the baseline.
    """
    if name in PRESETS:
        return PRESETS.get(name)(**kwargs)
    return XTModel(config_from_kwargs(name, **kwargs))


def preset_model(backbone: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> XTModel:
    """A preset's model: ``defaults`` (the preset's :class:`XTConfig` fields and options) updated
    by the caller's ``overrides``."""
    merged = {**defaults, **overrides}
    return XTModel(config_from_kwargs(backbone, **merged))
