"""The context-encoder interface, the identity encoder, and the per-scene stream that holds state.

A context encoder mixes information across the regions of a scene. It sees the scene one *chunk*
at a time: ``C`` regions' tokens in row-major scene order, with their ``(row, col)`` positions in
scene token coordinates, plus whatever *state* it returned for the previous chunk of the same
scene (``None`` at a scene's start). What the state holds is the encoder's business (XL: per-layer
memory; Mamba: SSM and conv states; full/none: nothing).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.models.context.config import ContextConfig


class ContextEncoder(nn.Module):
    """Base class: ``forward(x (B, L, D), pos (B, L, 2), state) -> (y (B, L, D), new_state)``.

    ``x`` holds one chunk's tokens in row-major scene order (a region's ``h*w`` patch tokens, then
    the next region's); ``pos`` their ``(row, col)`` in patch units over the whole scene. The
    encoder adds its own 2D sin-cos embedding of ``pos``. Pass back the returned state with the
    next chunk of the same scene, ``None`` for a new scene (or use :class:`ContextStream`).
    """

    config: ContextConfig
    #: True for encoders that must see a scene's tokens all at once (``full``): the model then
    #: gathers the whole scene before running them, and their memory grows with the scene
    whole_scene: bool = False

    def __init__(self, config: ContextConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: Tensor, pos: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def check_inputs(self, x: Tensor, pos: Tensor) -> None:
        """Raise :class:`ModelConfigError` unless ``x`` is ``(B, L, dim)`` and ``pos`` ``(B, L, 2)``."""
        name = type(self).__name__
        if x.ndim != 3 or x.shape[-1] != self.config.dim:
            raise ModelConfigError(f"{name}: tokens must be (B, L, {self.config.dim}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ModelConfigError(f"{name}: a chunk must hold at least one token, got {tuple(x.shape)}")
        if pos.shape != (*x.shape[:2], 2):
            raise ModelConfigError(f"{name}: pos must be (B, L, 2) = {(*x.shape[:2], 2)} to match tokens "
                                   f"{tuple(x.shape)}, got {tuple(pos.shape)}")

    def hand_on(self, t: Tensor) -> Tensor:
        """A state tensor as handed to the next chunk: detached when ``config.detach_state``."""
        return t.detach() if self.config.detach_state else t

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind!r}, dim={c.dim}, depth={c.depth}"


class IdentityContext(ContextEncoder):  # registered as "none" by the package
    """``kind="none"``: returns the tokens unchanged and no state (the backbone-only baseline)."""

    def forward(self, x: Tensor, pos: Tensor, state: Any = None) -> tuple[Tensor, None]:
        self.check_inputs(x, pos)
        return x, None


def check_batch(name: str, state_batch: int, x: Tensor) -> None:
    if state_batch != x.shape[0]:
        raise ModelConfigError(f"{name}: the state is for a batch of {state_batch} scenes but this chunk "
                               f"has {x.shape[0]}; reset the state (state=None) when the scenes change")


class ContextStream:
    """The stateful consumer of one scene's chunks: holds the encoder's state between calls.

    >>> from xtstream.models.context import create_context
    >>> enc = create_context(kind="xl", dim=16, heads=2, depth=1)
    >>> stream = ContextStream(enc)
    >>> x, pos = torch.zeros(1, 4, 16), torch.zeros(1, 4, 2)
    >>> stream(x, pos).shape, stream.chunks
    (torch.Size([1, 4, 16]), 1)
    >>> stream.reset()  # before the next scene
    """

    def __init__(self, encoder: ContextEncoder) -> None:
        if not isinstance(encoder, ContextEncoder):
            raise ModelConfigError(f"ContextStream needs a ContextEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.state: Any = None
        self.chunks = 0

    def __call__(self, x: Tensor, pos: Tensor) -> Tensor:
        """Encode the next chunk ``x (B, L, D)`` at ``pos (B, L, 2)``; returns ``(B, L, D)``."""
        y, self.state = self.encoder(x, pos, self.state)
        self.chunks += 1
        return y

    def reset(self) -> None:
        """Forget the scene: the next call starts a new one."""
        self.state = None
        self.chunks = 0

    def __repr__(self) -> str:
        return f"ContextStream({self.encoder.config.kind!r}, chunks={self.chunks})"


def detach_all(obj: Any) -> Any:
    """``obj`` with every tensor inside (tuples, lists, NamedTuples, dataclasses) detached."""
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(detach_all(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_all(v) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: detach_all(getattr(obj, f.name)) for f in fields(obj)})
    return obj


__all__ = ["ContextEncoder", "IdentityContext", "ContextStream", "detach_all"]
