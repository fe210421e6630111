"""Step policies: which chunks' gradients one optimiser step takes.

Both keep memory at one chunk's graph: every chunk group is forwarded, its loss back-propagated
at once, and the context state carried to the scene's next chunk is detached (gradient flows only
inside a chunk). They differ in when the optimiser steps:

* ``per_chunk`` — truncated backprop through time, as Transformer-XL language models train: one
  step per chunk group (a chunk, or the chunks of up to ``scenes_per_step`` scenes at the same
  grid positions that arrived one after another), the group's losses averaged.
* ``per_scene`` — gradients accumulated over a scene's chunks, one step per ``scenes_per_step``
  finished scenes. Each chunk's loss is weighted ``1 / (chunks in its scene x scenes_per_step)``,
  so a step's gradient is the mean over its scenes of each scene's mean chunk loss — the gradient
  of the summed per-chunk losses (state detached) divided by the chunk count, whatever the scene
  size. When DataLoader workers interleave scenes, the step taken when the k-th scene finishes
  also holds the chunks other open scenes sent since the previous step: every chunk counts in
  exactly one step, and with one worker (or scenes arriving whole) a step is exactly its scenes.

**Truncated BPTT over windows of chunks** (``bptt_chunks = k > 1``, either policy): with
stop-gradient memory a chunk's loss never reaches the computation of earlier chunks, so nothing
teaches a region to *write* what a later chunk will need (the across-chunk context probe stayed at
AUC ~0.5). With ``k > 1`` the context state is handed on with its gradient and the losses of ``k``
consecutive chunk groups are back-propagated together (``per_chunk``: their mean, one step per
window); then every carried state is detached. Memory is ``k`` groups' graphs — bounded by
``k``, not by the scene — and ``k = 1`` is exactly the stop-gradient training above.

A scene read twice (a model of ``order="two_pass"``) takes its steps in the second pass; the first
pass's chunks only fill the context state (no loss of their own) and count with the next step's.
They take part in truncated-BPTT windows like any group: with ``bptt_chunks = 1`` the first pass
runs without gradient; with ``k > 1`` a loss of the second pass reaches the first pass's chunks in
its window — what teaches a region to write what an *earlier* region will read in the second pass.

:func:`accumulate` runs the forward and backward passes and yields after each step's gradients
are in the parameters' ``.grad``; the caller syncs (DDP), clips and steps, then zeroes them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from xtstream.data.chunk import RegionChunk
from xtstream.engine.state import SceneStates
from xtstream.errors import ModelConfigError, TrainingError
from xtstream.models.xt import carried_state
from xtstream.tasks.base import task_for_head

POLICIES = ("per_chunk", "per_scene")

#: ``loss_fn(chunk) -> scalar`` or ``-> (scalar, {part: value})`` (what :meth:`Task.loss` returns)
LossFn = Callable[[RegionChunk], "Tensor | tuple[Tensor, dict[str, float]]"]


@dataclass
class Accumulated:
    """One optimiser step's gradients, waiting in ``.grad``: ``loss`` (the step's objective),
    ``parts`` (``{part: mean over the step's chunks}``), ``scenes`` (in order of arrival),
    ``chunks`` (how many were processed since the previous step), ``last`` (the last chunk that
    contributed, pixels and outputs dropped), ``group`` (the last group's chunks, likewise)."""

    loss: float
    parts: dict[str, float]
    scenes: list[str]
    chunks: int
    last: RegionChunk
    group: list[RegionChunk] = field(default_factory=list)
    #: regions of these chunks' scenes that a reader could not deliver (``skip_bad``; chunk ``info``)
    lost_regions: int = 0


def accumulate(model: Any, items: Iterable[Any], *, policy: str = "per_chunk", scenes_per_step: int = 1,
               loss_fn: LossFn | None = None, device: torch.device | str | None = None,
               grad_ratio: float | None = None, generator: torch.Generator | None = None,
               states: SceneStates | None = None, autocast: Callable[[], Any] | None = None,
               bptt_chunks: int = 1) -> Iterator[Accumulated]:
    """Forward and backward over ``items`` (chunks of many scenes, interleaved or not), yielding
    each time a step's gradients are complete (see the module doc for the policies).

    ``loss_fn``: default, the loss of the task that trains the model's head. ``states``: the
    per-scene context states (pass one to resume mid-scene). ``autocast``: a context-manager
    factory wrapped around each forward and loss (e.g. bf16 autocast). ``bptt_chunks``: chunk
    groups per truncated-BPTT window (see the module doc; 1 = stop-gradient between chunks).
    Gradients must be zero (or ``None``) when iteration starts and after each yield. A non-finite
    chunk loss raises :class:`~xtstream.errors.TrainingError` naming the scene and the chunk's
    regions, before any backward of it.
    """
    if policy not in POLICIES:
        raise ModelConfigError(f"step policy {policy!r}: expected one of {list(POLICIES)}")
    if scenes_per_step < 1:
        raise ModelConfigError(f"scenes_per_step must be >= 1, got {scenes_per_step}")
    if not isinstance(bptt_chunks, int) or bptt_chunks < 1:
        raise ModelConfigError(f"bptt_chunks must be an integer >= 1, got {bptt_chunks!r}")
    if loss_fn is None:
        loss_fn = task_for_head(model.config.head).loss
    ctx_config = getattr(model.context, "config", None)
    if ctx_config is not None and not getattr(ctx_config, "detach_state", True):
        raise ModelConfigError("chunk-wise training needs detach_state=True in the context config: "
                               "with a carried graph the next chunk's backward would re-enter it "
                               "(for gradient through the state, train with bptt_chunks > 1)")
    autocast = autocast or contextlib.nullcontext
    per_scene = policy == "per_scene"
    states = states if states is not None else SceneStates()
    model.train()
    with torch.enable_grad(), carried_state(model) if bptt_chunks > 1 else contextlib.nullcontext():
        groups = iter(model.stream_groups(items, device=device, grad_ratio=grad_ratio, generator=generator,
                                          scenes_per_group=scenes_per_step, states=states))
        step = _Step()
        window: list[Tensor] = []  # the weighted losses of the groups not back-propagated yet
        in_window = 0  # groups forwarded since the last backward (first-pass groups too)

        def backward() -> None:
            nonlocal in_window
            in_window = 0
            if window:
                objective = window[0] if len(window) == 1 else torch.stack(window).sum()
                if not per_scene and len(window) > 1:
                    objective = objective / len(window)  # per_chunk: the mean over the window's groups
                objective.backward()
                window.clear()
            if bptt_chunks > 1:
                states.detach()  # the window's graph is freed: no state may point into it

        while True:
            with autocast():
                group = next(groups, None)
                if group is None:
                    break
                prime = bool(group[0].info.get("prime"))
                results = [] if prime else [loss_fn(c) for c in group]
            in_window += 1
            if prime:
                # a first pass (order="two_pass") fills the state: no loss of its own (with
                # bptt_chunks > 1 a later loss in its window reaches it); its chunks are counted
                # with the next step's (what resuming reads past)
                step.chunks += len(group)
            else:
                losses = [_scalar(r) for r in results]
                for c, loss in zip(group, losses):
                    _check_finite(loss, c)
                if per_scene:
                    weights = [1.0 / (_chunks_in_scene(c, model.config.chunk) * scenes_per_step) for c in group]
                else:
                    weights = [1.0 / len(group)] * len(group)
                total = sum(w * loss.float() for w, loss in zip(weights, losses))
                window.append(total)
                step.add(group, results, float(total.detach()))
            if in_window >= bptt_chunks:
                backward()
            if per_scene:
                if step.finished >= scenes_per_step:
                    backward()
                    yield step.done()
                    step = _Step()
            elif not window and step.group:
                if len(step.loss_parts) > 1:
                    step.loss = sum(step.loss_parts) / len(step.loss_parts)
                yield step.done()
                step = _Step()
        backward()
        if step.group:  # per_scene: the last scenes, fewer than scenes_per_step; per_chunk: a short window
            if not per_scene and len(step.loss_parts) > 1:
                step.loss = sum(step.loss_parts) / len(step.loss_parts)
            yield step.done()


class _Step:
    """What the chunks since the previous step added up to."""

    def __init__(self) -> None:
        self.loss, self.chunks, self.finished, self.lost = 0.0, 0, 0, 0
        self.loss_parts: list[float] = []  # each group's objective (per_chunk windows average them)
        self.scenes: list[str] = []
        self.parts: dict[str, list[float]] = {}
        self.group: list[RegionChunk] = []

    def add(self, group: list[RegionChunk], results: list[Any], loss: float) -> None:
        self.loss += loss
        self.loss_parts.append(loss)
        self.chunks += len(group)
        self.group = [_bare(c) for c in group]
        for c, r in zip(group, results):
            if c.scene_id not in self.scenes:
                self.scenes.append(c.scene_id)
            self.finished += int(c.ends_scene)
            self.lost += int(c.info.get("lost_regions", 0))
            if isinstance(r, tuple) and len(r) > 1 and r[1]:
                for name, value in r[1].items():
                    self.parts.setdefault(name, []).append(float(value))

    def done(self) -> Accumulated:
        parts = {name: sum(v) / len(v) for name, v in self.parts.items()}
        return Accumulated(self.loss, parts, self.scenes, self.chunks, self.group[-1], self.group, self.lost)


def _bare(c: RegionChunk) -> RegionChunk:
    """The chunk's identity only: holding its outputs would keep their memory alive."""
    return RegionChunk(c.scene_id, c.grid, list(c.indices), info={k: v for k, v in c.info.items()
                                                                  if k in ("worker", "skipped")})


def _chunks_in_scene(c: RegionChunk, chunk: int) -> int:
    return max(1, math.ceil(len(c.grid) / chunk))


def _scalar(value: Any) -> Tensor:
    """A loss function's scalar, whether it returned it alone or with its parts."""
    return value[0] if isinstance(value, tuple) else value


def _check_finite(loss: Tensor, c: RegionChunk) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"scene {c.scene_id!r}, chunk of regions {c.start}..{c.stop - 1}: the loss is "
                            f"{value} (not finite); stopped before its backward pass")
