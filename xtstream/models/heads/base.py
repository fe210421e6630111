"""The head interface and its registry: heads are created by name, plug-ins register their own.

A head turns one chunk's (contextualised) features into outputs. The model calls
``head(features, scenes, state, context=context) -> (outputs, state)``:

* ``features``: the region encoder's pyramid ``[(B * C, C_i, h_i, w_i)]`` (shallow → deep), ``B``
  scenes of ``C`` regions each, scene-major; the deepest map carries the context encoder's output;
* ``scenes``: ``B``;
* ``state``: what the head returned for the same scenes' previous chunk (``None`` at a scene's
  start) — e.g. the running pool of a classification head;
* ``context``: the context encoder's own contribution to the deepest map, ``(B * C, C_deep, h,
  w)`` (``None`` without a context encoder) — the part of ``features[-1]`` that comes from other
  regions, for heads that condition on it explicitly (a head that ignores it still sees it inside
  ``features[-1]``).

``outputs`` is a tensor or a ``{name: tensor}`` dict whose leading axis is ``B * C`` (one row per
region, ``per_region = True``) or ``B`` (one row per scene, ``per_region = False``), so the engine
can hand every scene its part.

>>> @register_head("my_head")                                   # doctest: +SKIP
... def my_head(channels, reductions, config):
...     return MyHead(channels[-1], **config.head_kwargs)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn

from xtstream._runtime.registry import Registry
from xtstream.errors import ModelConfigError

HeadFactory = Callable[[Sequence[int], Sequence[int], Any], "Head"]

#: name -> factory(channels, reductions, config) -> Head; the built-in heads' modules are imported
#: on first lookup (tasks import models, not the other way round)
HEADS: Registry[HeadFactory] = Registry("head", ModelConfigError, ["xtstream.models.heads.classification",
                                                                  "xtstream.tasks.xview3.head"])


class Head(nn.Module):
    """Base class of heads; see the module docstring for the call contract."""

    per_region: bool = True

    def forward(self, features: list[Tensor], scenes: int, state: Any = None,
                context: Tensor | None = None) -> tuple[Any, Any]:
        raise NotImplementedError


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator: register ``factory(channels, reductions, config) -> Head`` under ``name``."""
    return HEADS.register(name)


def list_heads() -> list[str]:
    """Names of the registered heads (built-ins and plug-ins)."""
    return HEADS.names()


def create_head(name: str, channels: Sequence[int], reductions: Sequence[int], config: Any) -> Head:
    """The head registered as ``name`` for an encoder of ``channels`` / ``reductions`` maps."""
    head = HEADS.get(name)(list(channels), list(reductions), config)
    if not isinstance(head, Head):
        raise ModelConfigError(f"head {name!r}: its factory returned a {type(head).__name__}, "
                               "not an xtstream.models.heads.Head")
    return head
