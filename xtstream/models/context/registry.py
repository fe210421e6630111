"""Create a context encoder by kind."""

from __future__ import annotations

from typing import Any, Callable

from xtstream.errors import ModelConfigError
from xtstream.models.context.base import ContextEncoder, IdentityContext
from xtstream.models.context.config import ContextConfig
from xtstream.models.context.full import FullContext
from xtstream.models.context.mamba import MambaContext
from xtstream.models.context.xl import TransformerXLContext

#: kind -> encoder class (a plug-in kind is one more entry)
CONTEXT_ENCODERS: dict[str, Callable[[ContextConfig], ContextEncoder]] = {
    "xl": TransformerXLContext,
    "mamba": MambaContext,
    "full": FullContext,
    "none": IdentityContext,
}


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
    try:
        factory = CONTEXT_ENCODERS[config.kind]
    except KeyError:
        raise ModelConfigError(f"create_context: no encoder registered for kind {config.kind!r}; "
                               f"known: {sorted(CONTEXT_ENCODERS)}") from None
    return factory(config)
