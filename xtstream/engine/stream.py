"""The streaming engine: region chunks in, chunks with outputs out, one context state per scene.

Stages, for a stream of :class:`~xtstream.data.chunk.RegionChunk` (scenes may interleave):

1. **Encode**, batched by memory: consecutive chunks share a backbone batch whose size a memory
   budget sets (:func:`~xtstream.models.encoders.encode_regions`), independent of the chunk size.
   In training (grad mode on) a step must see the weights the previous step left, so the batch is
   the group of chunks that will be stepped together (step 2).
2. **Group**: consecutive chunks of *different* scenes at the same grid positions go through the
   context encoder and head as one ``(B, C)`` batch, their per-scene states stacked (at most
   ``scenes_per_group``; in training 1 unless asked, so the step count does not depend on how
   many DataLoader workers interleave).
3. **Context + head** with each scene's state taken from :class:`~xtstream.engine.SceneStates`
   and put back after; order within a scene is checked there.

**Two passes** (a model of ``order="two_pass"``, data read with ``passes=2``): a scene's
first-pass chunks (``info["prime"]``) only fill its context state — no head, and no gradient unless
the state carries one (truncated-BPTT windows, :mod:`xtstream.engine.policy`) — and
its second pass starts from that state; the first pass comes out too, with ``outputs`` ``None``
(training counts what it read), which :meth:`~xtstream.models.XTModel.stream` leaves out.

A whole-scene context encoder (``context="full"``) is different by nature: a scene's encoded
chunks are held until its last chunk, then the encoder runs once over all its tokens, and the
scene's chunks come out together as one group (memory grows with the scene).
"""

from __future__ import annotations

import contextlib
from dataclasses import fields, is_dataclass, replace
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from xtstream.data.chunk import RegionChunk, chunked
from xtstream.engine.state import SceneStates, order_error
from xtstream.errors import ModelConfigError, StreamOrderError
from xtstream.models.encoders import (assign_features, budget_batch_size, encode_regions,
                                      forward_with_grad_ratio, stack_pixels)


def stream_groups(model: Any, items: Iterable[Any], *, device: torch.device | str | None = None,
                  batch_size: int | None = None, memory_budget: int | None = None,
                  grad_ratio: float | None = None, generator: torch.Generator | None = None,
                  scenes_per_group: int | None = None, states: SceneStates | None = None
                  ) -> Iterator[list[RegionChunk]]:
    """Run ``model`` (an :class:`~xtstream.models.XTModel`) over a stream of chunks.

    Parameters
    ----------
    items : :class:`RegionChunk` of ``model.config.chunk`` regions (a scene's last chunk may be
        shorter), or loose region samples (chunked here).
    device : where to run; default the model's device.
    batch_size, memory_budget : the backbone batch in regions, or the bytes that set it
        (default: :func:`~xtstream.models.encoders.default_budget`). Inference only.
    grad_ratio, generator : the share of regions encoded with gradient (training), and its
        random source.
    scenes_per_group : most scenes per context batch; default unlimited in inference, 1 in
        training (always 1 when training a whole-scene encoder, which runs scene by scene).
    states : the per-scene states to use (default: a fresh :class:`SceneStates`); pass one to
        resume streams across calls.

    Yields
    ------
    Lists of chunks processed together, each with ``outputs`` set (on the device) and
    ``features`` dropped; every chunk of the input comes out exactly once.
    """
    cfg = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ratio = cfg.grad_ratio if grad_ratio is None else grad_ratio
    states = states if states is not None else SceneStates()
    training = torch.is_grad_enabled()
    max_b = scenes_per_group if scenes_per_group is not None else (1 if training else None)
    if training and model.whole_scene:
        # its scenes are back-propagated one by one as each completes; chunks of several scenes in
        # one backbone batch would share a graph that the first scene's backward frees
        max_b = 1
    chunks = _checked_sizes(chunked(items, cfg.chunk), cfg.chunk)
    chunks = _checked_passes(chunks, cfg.passes == 2, states)
    if training:
        encoded = _encode_groups(model, _groups(chunks, max_b, states), device, ratio, generator)
    else:
        if batch_size is None:
            batch_size = budget_batch_size(model.encoder, device=device, memory_budget=memory_budget)
        encoded = _groups(encode_regions(chunks, model.encoder, chunk=cfg.chunk, batch_size=batch_size,
                                         device=device), max_b, states)
    run = _whole_scenes if model.whole_scene else _chunk_groups
    yield from run(model, encoded, states)


def _checked_sizes(chunks: Iterable[RegionChunk], size: int) -> Iterator[RegionChunk]:
    for c in chunks:
        # shorter only at a scene's end or before regions a reader lost (skip_bad)
        if len(c) > size or (len(c) < size and not c.last and not c.info.get("skipped_after")):
            raise ModelConfigError(
                f"scene {c.scene_id!r}: a chunk of {len(c)} regions ({c.start}..{c.stop - 1}), but the "
                f"model's context chunk is {size} (only a scene's last chunk may be shorter); read "
                f"with chunk={size}")
        yield c


def _checked_passes(chunks: Iterable[RegionChunk], two_pass: bool, states: SceneStates) -> Iterator[RegionChunk]:
    """Refuse data read with another number of passes than the model's, naming the scene: a
    two-pass model fed one pass would score regions from an empty state it never trained on.
    Checked on arrival (``states`` lags behind: it learns of a chunk once the context has run)."""
    primed: set[str] = set()  # scenes whose first pass has arrived whole
    for c in chunks:
        prime = bool(c.info.get("prime"))
        if prime and not two_pass:
            raise StreamOrderError(
                f"scene {c.scene_id!r}: chunk of regions {c.start}..{c.stop - 1} is from a first pass "
                "(info['prime']), but the model reads order='row_major': read the scenes with passes=1")
        if two_pass and not prime and c.scene_id not in primed and not states.primed(c.scene_id):
            raise StreamOrderError(
                f"scene {c.scene_id!r}: chunk of regions {c.start}..{c.stop - 1} is not from a first pass, but "
                "the model reads order='two_pass' and the scene's first pass has not come: read the "
                "scenes with passes=2 (read_scenes / stream_scenes)")
        if c.ends_scene:
            (primed.add if prime else primed.discard)(c.scene_id)
        yield c


def _key(c: RegionChunk) -> tuple:
    # chunks at the same grid positions of equally wide grids share the token positions; a first
    # pass's chunks never share a group with scored ones (no head, no gradient)
    return (c.start, len(c), c.grid.cols, c.first, bool(c.info.get("prime")))


def _groups(chunks: Iterable[RegionChunk], max_b: int | None, states: SceneStates
            ) -> Iterator[list[RegionChunk]]:
    """Consecutive chunks of distinct scenes at the same positions, at most ``max_b`` per group.

    Order is checked here, as chunks arrive, so an error names the chunk that broke it."""
    pending: list[RegionChunk] = []
    ahead: dict[str, int] = {}
    for c in chunks:
        _check_arrival(c, states, ahead)
        if pending and (_key(c) != _key(pending[0]) or any(p.scene_id == c.scene_id for p in pending)
                        or (max_b is not None and len(pending) >= max_b)):
            yield pending
            pending = []
        pending.append(c)
    if pending:
        yield pending


def _check_arrival(c: RegionChunk, states: SceneStates, ahead: dict[str, int]) -> None:
    # chunks are checked on arrival, before earlier ones have passed the context stage, so the
    # scenes' next indices are tracked here ahead of ``states``
    expected = ahead[c.scene_id] if c.scene_id in ahead else states.expected(c.scene_id)
    if c.start != expected and c.info.get("skipped") != list(range(expected, c.start)):
        raise order_error(c, expected)
    if c.ends_scene and not c.info.get("prime"):
        ahead.pop(c.scene_id, None)
    else:  # a first pass's end: the scored pass starts over at region 0
        ahead[c.scene_id] = 0 if c.ends_scene else c.stop


def _encode_groups(model: Any, groups: Iterable[list[RegionChunk]], device: torch.device, ratio: float,
                   generator: torch.Generator | None) -> Iterator[list[RegionChunk]]:
    """Training: each group is one backbone batch, encoded when the consumer asks for it."""
    for group in groups:
        x = stack_pixels(group, model.encoder).to(device)
        # a first pass only fills the state: no gradient unless the state carries one (truncated
        # BPTT windows); no yield inside no_grad, which would leave the consumer without gradient
        with _first_pass_grad(model, group):
            encoded = forward_with_grad_ratio(model.encoder, x, ratio, generator)
        yield assign_features(group, *encoded)


def _first_pass_grad(model: Any, group: list[RegionChunk]) -> Any:
    """``no_grad`` for a first pass's group unless the context hands its state on with gradient
    (``detach_state`` off: truncated BPTT windows, where a later loss reaches the first pass)."""
    config = getattr(model.context, "config", None)
    carried = config is not None and not getattr(config, "detach_state", True)
    return torch.no_grad() if group[0].info.get("prime") and not carried else contextlib.nullcontext()


def _chunk_groups(model: Any, groups: Iterable[list[RegionChunk]], states: SceneStates
                  ) -> Iterator[list[RegionChunk]]:
    per_region = model.head.per_region
    for group in groups:
        b = len(group)
        state = stack_states([states.take(c) for c in group])
        feats = group[0].features if b == 1 else [torch.cat(level) for level in
                                                    zip(*(c.features for c in group))]
        positions = _positions(group[0], feats[-1].device)
        if group[0].info.get("prime"):
            with _first_pass_grad(model, group):
                out, new_state = None, model.prime_features(feats, positions, state)
        else:
            out, new_state = model.forward_features(feats, positions, state)
        n = len(group[0])
        for k, c in enumerate(group):
            c.outputs = None if out is None else _select(out, k * n, n) if per_region else _select(out, k, 1)
            states.put(c, select_state(new_state, k, b))
            c.features = None
        yield group


def _whole_scenes(model: Any, groups: Iterable[list[RegionChunk]], states: SceneStates
                  ) -> Iterator[list[RegionChunk]]:
    held: dict[str, list[RegionChunk]] = {}
    for group in groups:
        for c in group:
            states.take(c)
            states.put(c, None)
            held.setdefault(c.scene_id, []).append(c)
            if c.ends_scene:
                scene = held.pop(c.scene_id)
                outs = model.forward_scene([s.features for s in scene],
                                           [_positions(s, s.features[-1].device) for s in scene])
                for s, out in zip(scene, outs):
                    s.outputs, s.features = out, None
                yield scene


def _positions(c: RegionChunk, device: torch.device) -> Tensor:
    """``(n, 2)`` grid ``(row, col)`` made on ``device``: a host tensor copied there each chunk
    would make the host wait for the device, chunk after chunk."""
    idx = torch.arange(c.start, c.stop, device=device)
    return torch.stack([idx // c.grid.cols, idx % c.grid.cols], dim=1)


def _select(out: Any, start: int, n: int) -> Any:
    if isinstance(out, Tensor):
        return out[start:start + n]
    if isinstance(out, dict):
        return {k: _select(v, start, n) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_select(v, start, n) for v in out)
    return out


def stack_states(states: list[Any]) -> Any:
    """One state for a batch of scenes from each scene's own (tensors concatenated on axis 0;
    NamedTuples, tuples, lists and dataclasses walked; plain values must agree)."""
    first = states[0]
    if len(states) == 1:
        return first
    if first is None or any(s is None for s in states):
        if any(s is not None for s in states):
            raise ModelConfigError("cannot batch scenes at their start with scenes in progress")
        return None
    if isinstance(first, Tensor):
        return torch.cat(states)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(stack_states(list(parts)) for parts in zip(*states)))
    if isinstance(first, (tuple, list)):
        return type(first)(stack_states(list(parts)) for parts in zip(*states))
    if is_dataclass(first):
        return replace(first, **{f.name: stack_states([getattr(s, f.name) for s in states])
                                 for f in fields(first)})
    if any(s != first for s in states):
        raise ModelConfigError(f"scene states disagree on a plain value ({states}); cannot batch them")
    return first


def select_state(state: Any, k: int, b: int) -> Any:
    """Scene ``k``'s part of a state batched over ``b`` scenes (the inverse of :func:`stack_states`)."""
    if b == 1 or state is None:
        return state
    if isinstance(state, Tensor):
        return state[k:k + 1]
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(select_state(v, k, b) for v in state))
    if isinstance(state, (tuple, list)):
        return type(state)(select_state(v, k, b) for v in state)
    if is_dataclass(state):
        return replace(state, **{f.name: select_state(getattr(state, f.name), k, b) for f in fields(state)})
    return state
