"""Context encoders by kind: a registry that built-ins and plug-ins add themselves to.

>>> @register_context("my_kind")                                      # doctest: +SKIP
... class MyContext(ContextEncoder):
...     def forward(self, x, pos, state=None): ...
>>> create_context(kind="my_kind", dim=64, options={"knob": 3})     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable

from xtstream._runtime.registry import Registry
from xtstream.errors import ModelConfigError
from xtstream.models.context.base import ContextEncoder
from xtstream.models.context.config import ContextConfig

ContextFactory = Callable[[ContextConfig], ContextEncoder]

#: kind -> encoder class or factory ``f(config) -> ContextEncoder`` (the built-ins register when
#: :mod:`xtstream.models.context` is imported)
CONTEXT_ENCODERS: Registry[ContextFactory] = Registry("context encoder", ModelConfigError, ["xtstream.models.context"])


def register_context(kind: str) -> Callable[[ContextFactory], ContextFactory]:
    """Decorator: register a :class:`ContextEncoder` class (or factory) as ``kind``."""
    return CONTEXT_ENCODERS.register(kind)


def list_contexts() -> list[str]:
    """The registered context kinds (``"none"`` included)."""
    return CONTEXT_ENCODERS.names()


def create_context(config: ContextConfig | None = None, **overrides: Any) -> ContextEncoder:
    """A context encoder from ``config`` (default :class:`ContextConfig`) with ``overrides``
    applied: ``create_context(kind="mamba", dim=128, depth=4)``. Unknown fields or invalid values
    raise :class:`~xtstream.errors.ModelConfigError`.
    """
    if config is None:
        config = ContextConfig()
    elif not isinstance(config, ContextConfig):
        raise ModelConfigError(f"create_context: config must be a ContextConfig, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    encoder = CONTEXT_ENCODERS.get(config.kind)(config)
    if not isinstance(encoder, ContextEncoder):
        raise ModelConfigError(f"context kind {config.kind!r}: its factory returned a "
                               f"{type(encoder).__name__}, not a ContextEncoder")
    return encoder
