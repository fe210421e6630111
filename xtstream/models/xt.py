"""The xT model: region encoder → context encoder over chunks of regions → head, streamed.

One chunk of ``C`` regions of one scene at a time:

1. the region encoder gives each region's feature pyramid ``[(C, C_i, h_i, w_i)]``;
2. the last maps become ``C * h * w`` tokens in row-major scene order (a region's ``h x w``
   tokens, then the next region's), each with its scene token position: region ``(r, c)``'s token
   ``(i, j)`` sits at ``(r * h + i, c * w + j)``;
3. tokens → linear projection to the context width → context encoder, with the state the
   scene's previous chunk returned → projection back (added to the tokens when ``residual``);
4. the tokens are folded back into the regions' last maps, and the head decodes.

:meth:`XTModel.stream` runs streams of region chunks this way — one context state per open scene,
so chunks of many scenes may interleave — and never builds the image (except ``context="full"``,
which must see a scene's tokens at once: the non-streaming reference).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from xtstream.data.chunk import RegionChunk
from xtstream.data.sample import RegionSample
from xtstream.errors import ModelConfigError
from xtstream.models.config import XTConfig
from xtstream.models.context import ContextConfig, create_context
from xtstream.models.encoders import RegionEncoder, create_region_encoder, forward_with_grad_ratio
from xtstream.models.heads import create_head


@dataclass
class ChunkState:
    """What one chunk hands to the next chunk of the same scene(s): the context encoder's state
    and the head's (e.g. a classification pool)."""

    context: Any = None
    head: Any = None


@contextlib.contextmanager
def carried_state(model: Any) -> Iterator[None]:
    """While open, ``model``'s context encoder hands its state on *with* its gradient
    (``config.detach_state = False``: truncated BPTT windows, receptive-field maps); the old value
    is restored on exit, also on error. A model without such an encoder is left as it is."""
    config = getattr(model.context, "config", None)
    if config is None or not hasattr(config, "detach_state"):
        yield
        return
    saved = config.detach_state
    config.detach_state = False
    try:
        yield
    finally:
        config.detach_state = saved


def token_positions(positions: Tensor, h: int, w: int) -> Tensor:
    """``(C, 2)`` region ``(row, col)`` → ``(C * h * w, 2)`` float scene token ``(row, col)``, in
    the order the tokens are flattened (region-major, then row-major inside a region)."""
    i = torch.arange(h, device=positions.device).view(1, h, 1)
    j = torch.arange(w, device=positions.device).view(1, 1, w)
    rows = positions[:, 0].view(-1, 1, 1) * h + i
    cols = positions[:, 1].view(-1, 1, 1) * w + j
    rows, cols = torch.broadcast_tensors(rows, cols)
    return torch.stack([rows, cols], dim=-1).reshape(-1, 2).float()


def _build_context(config: XTConfig, dim: int, region_tokens: int) -> nn.Module:
    kwargs = dict(config.context_kwargs)
    if kwargs.get("region_mem"):  # region memory pools each region's tokens: the token grid says how many
        given = kwargs.setdefault("region_tokens", region_tokens)
        if given != region_tokens:
            raise ModelConfigError(f"region_tokens={given}, but backbone {config.backbone!r} gives {region_tokens} "
                                   "tokens a region; leave region_tokens unset")
    try:
        return create_context(ContextConfig(kind=config.context, dim=dim, depth=config.depth,
                                            heads=config.heads, **kwargs))
    except (TypeError, ValueError) as e:
        raise ModelConfigError(f"context encoder {config.context!r} (dim={dim}, depth={config.depth}, "
                               f"heads={config.heads}, {config.context_kwargs}) cannot be built: {e}") from e


class XTModel(nn.Module):
    """An xT model built from an :class:`XTConfig` (see :func:`xtstream.create_model`).

    ``context_encoder`` may be given ready-made (any :class:`~xtstream.models.context.ContextEncoder`);
    its ``config.dim`` must then be the config's context width.
    """

    def __init__(self, config: XTConfig, *, context_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder: RegionEncoder = create_region_encoder(
            config.backbone, region=config.region, in_chans=config.in_chans,
            checkpoint_path=config.backbone_weights, grad_checkpointing=config.grad_checkpointing,
            **config.backbone_kwargs)
        channels = self.encoder.channels[-1]
        self.token_grid = self.encoder.token_grid
        if config.context == "none":
            if context_encoder is not None:
                raise ModelConfigError("context='none' takes no context encoder, one was given")
            self.context, self.proj_in, self.proj_out = None, nn.Identity(), nn.Identity()
        else:
            dim = config.dim or channels
            if not config.project and dim != channels:
                raise ModelConfigError(
                    f"backbone {config.backbone!r} gives {channels}-channel tokens but the context "
                    f"encoder takes dim={dim}, and project=False forbids a projection")
            if context_encoder is not None:
                given = getattr(getattr(context_encoder, "config", None), "dim", None)
                if given != dim:
                    raise ModelConfigError(
                        f"the given context encoder has dim={given}, but backbone {config.backbone!r} "
                        f"({channels} channels) is projected to dim={dim}")
            self.context = context_encoder if context_encoder is not None else _build_context(
                config, dim, self.token_grid[0] * self.token_grid[1])
            self.proj_in = nn.Linear(channels, dim) if config.project else nn.Identity()
            self.proj_out = nn.Linear(dim, channels) if config.project else nn.Identity()
        self.head = create_head(config.head, self.encoder.channels, self.encoder.reductions, config)

    # -- one chunk -----------------------------------------------------------------------------
    @property
    def whole_scene(self) -> bool:
        """True when the context encoder must see a whole scene at once (``context="full"``)."""
        return bool(getattr(self.context, "whole_scene", False))

    def contextualise(self, last: Tensor, positions: Tensor, scenes: int, state: Any = None
                      ) -> tuple[Tensor, Tensor | None, Any]:
        """The context stage on the deepest maps ``last`` ``(B * C, ch, h, w)`` of ``B`` scenes at the
        same ``C`` grid ``positions`` ``(C, 2)``: tokens in row-major scene order → context
        encoder (with ``state``) → back into maps. Returns the contextualised maps, the context
        encoder's own contribution as maps (``None`` without a context encoder; what heads
        condition on) and the new context state."""
        if self.context is None:
            return last, None, state
        bc, ch, h, w = last.shape
        n_regions = positions.shape[0]
        # (B*C, ch, h, w) -> (B, C*h*w, ch): region-major, row-major inside a region
        tokens = last.reshape(scenes, n_regions, ch, h, w).permute(0, 1, 3, 4, 2).reshape(scenes, -1, ch)
        pos = token_positions(positions.to(last.device), h, w).unsqueeze(0).expand(scenes, -1, -1)
        y, state = self.context(self.proj_in(tokens), pos, state)
        y = self.proj_out(y)

        def as_maps(t: Tensor) -> Tensor:
            return t.reshape(scenes, n_regions, h, w, ch).permute(0, 1, 4, 2, 3).reshape(bc, ch, h, w)

        return as_maps(tokens + y if self.config.residual else y), as_maps(y), state

    def forward_features(self, features: list[Tensor], positions: Tensor,
                         state: ChunkState | None = None) -> tuple[Any, ChunkState]:
        """Context + head on encoded regions.

        ``features``: ``[(B * C, C_i, h_i, w_i)]``, ``B`` scenes of the same ``C`` grid positions
        ``positions`` ``(C, 2)`` (``(row, col)``), scene-major. Returns the head's outputs
        (``{name: (B * C, 1, R, R)}`` or ``(B, num_classes)``) and the state for the next chunk.
        A whole-scene context encoder sees only these ``C`` regions here (see :meth:`forward_scene`).
        """
        state = state or ChunkState()
        n_regions = positions.shape[0]
        bc = features[-1].shape[0]
        if bc % n_regions:
            raise ModelConfigError(f"{bc} encoded regions do not split into scenes of {n_regions}")
        b = bc // n_regions
        maps, context, context_state = self.contextualise(features[-1], positions, b, state.context)
        out, head_state = self.head([*features[:-1], maps], b, state.head, context=context)
        return out, ChunkState(context_state, head_state)

    def prime_features(self, features: list[Tensor], positions: Tensor,
                       state: ChunkState | None = None) -> ChunkState:
        """A first pass's chunk (``order="two_pass"``): the context encoder only, to fill the
        state the scored pass starts from; no head, whose state (e.g. a classification pool)
        must see each region once. Arguments as :meth:`forward_features`."""
        state = state or ChunkState()
        b = features[-1].shape[0] // positions.shape[0]
        _, _, context_state = self.contextualise(features[-1], positions, b, state.context)
        return ChunkState(context_state, None)

    def forward_scene(self, features: list[list[Tensor]], positions: list[Tensor]) -> list[Any]:
        """A whole scene at once: ``features[k]`` / ``positions[k]`` of its chunk ``k`` (one scene,
        all chunks in order). The context encoder runs once over every token of the scene; the
        head then decodes chunk by chunk. Returns each chunk's outputs."""
        sizes = [f[-1].shape[0] for f in features]
        last = torch.cat([f[-1] for f in features])
        maps, context, _ = self.contextualise(last, torch.cat(positions), 1, None)
        contexts = context.split(sizes) if context is not None else [None] * len(sizes)
        outs, head_state = [], None
        for f, m, c in zip(features, maps.split(sizes), contexts):
            out, head_state = self.head([*f[:-1], m], 1, head_state, context=c)
            outs.append(out)
        return outs

    def forward(self, pixels: Tensor, positions: Tensor, state: ChunkState | None = None
                ) -> tuple[Any, ChunkState]:
        """One chunk: ``pixels`` ``(C, bands, R, R)`` or ``(B, C, bands, R, R)`` (``B`` scenes at the
        same grid positions), ``positions`` ``(C, 2)`` region ``(row, col)``; see
        :meth:`forward_features` for what comes back."""
        if pixels.ndim == 4:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != 5 or pixels.shape[1] != positions.shape[0]:
            raise ModelConfigError(f"pixels {tuple(pixels.shape)} do not match {positions.shape[0]} "
                                   "region positions (expected (B, C, bands, R, R) with C positions)")
        features, _ = forward_with_grad_ratio(self.encoder, pixels.flatten(0, 1), self.config.grad_ratio)
        return self.forward_features(features, positions, state)

    # -- streams of scenes ---------------------------------------------------------------------
    def stream(self, items: Iterable[RegionChunk | RegionSample], **kw: Any) -> Iterator[RegionChunk]:
        """Run scenes chunk by chunk, with one context state per open scene.

        ``items``: :class:`~xtstream.data.chunk.RegionChunk` of ``config.chunk`` regions (what
        ``read_scenes(..., chunk=C)`` / ``stream_scenes`` / a ``DataLoader`` over them yield;
        chunks of several scenes may interleave, each scene's in order), or loose
        :class:`~xtstream.data.sample.RegionSample` (grouped into chunks here). Yields every chunk
        with ``outputs`` set, in the order processed. Keywords: see
        :func:`xtstream.engine.stream_groups` (``device``, ``batch_size``, ``memory_budget``,
        ``grad_ratio``, ``generator``, ``scenes_per_group``, ``states``). A model of
        ``order="two_pass"`` takes scenes read twice (``passes=2``) and yields the second pass.
        """
        for group in self.stream_groups(items, **kw):
            if not group[0].info.get("prime"):  # a first pass (order="two_pass") has no outputs
                yield from group

    def stream_groups(self, items: Iterable[RegionChunk | RegionSample], **kw: Any
                      ) -> Iterator[list[RegionChunk]]:
        """Like :meth:`stream`, yielding the chunks that went through the context encoder together
        (one step of training: see :func:`xtstream.engine.stream_groups`)."""
        from xtstream.engine.stream import stream_groups

        return stream_groups(self, items, **kw)

    # -- reporting -----------------------------------------------------------------------------
    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: ``encoder``, ``projection``, ``context``, ``head``, ``total``."""
        def count(*mods: nn.Module | None) -> int:
            return sum(p.numel() for m in mods if m is not None for p in m.parameters())

        parts = {"encoder": count(self.encoder), "projection": count(self.proj_in, self.proj_out),
                 "context": count(self.context), "head": count(self.head)}
        parts["total"] = sum(parts.values())
        return parts

    def summary(self) -> str:
        """One line per part, with parameter counts."""
        c, n = self.config, self.num_parameters()
        lines = [f"xT {c.backbone} / context={c.context} / head={c.head}: region {c.region}, "
                 f"chunk {c.chunk}, {c.in_chans} bands, token grid {self.token_grid} per region"]
        if self.whole_scene:
            lines.append("  context sees the whole scene at once: memory grows with the scene "
                         "(the non-streaming reference)")
        if c.input is not None:
            side = -(-c.input // c.region)
            lines.append(f"  input {c.input}x{c.input}: {side}x{side} = {side * side} regions, "
                         f"{-(-side * side // c.chunk)} chunks per image")
        lines += [f"  {k:<10} {v:>12,}" for k, v in n.items()]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        n = self.num_parameters()
        return (f"backbone={self.config.backbone!r}, context={self.config.context!r}, "
                f"head={self.config.head!r}, params={n['total']:,} (encoder {n['encoder']:,}, "
                f"context {n['context']:,}, head {n['head']:,})")
