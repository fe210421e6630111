"""Training one chunk at a time: forward, loss, backward and step per chunk group, memory detached
between.

This is what bounds training memory on giant scenes: only the current group's graph is alive, the
context state carried to the scene's next chunk has no gradient (``detach_state=True``, the
default), and the classification pool is detached too. Gradient therefore flows only inside a
chunk. Chunks of several scenes may arrive interleaved (DataLoader workers): the engine keeps one
state per scene.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from xtstream.data.chunk import RegionChunk
from xtstream.errors import ModelConfigError
from xtstream.tasks.base import task_for_head

#: ``loss_fn(chunk) -> scalar`` or ``-> (scalar, {part: value})`` (what :meth:`Task.loss` returns)
LossFn = Callable[[RegionChunk], "Tensor | tuple[Tensor, dict[str, float]]"]


def train_chunks(model: Any, items: Iterable[Any], optimizer: torch.optim.Optimizer,
                 loss_fn: LossFn | None = None, *, device: torch.device | str | None = None,
                 grad_ratio: float | None = None, clip_grad_norm: float | None = None,
                 generator: torch.Generator | None = None, scenes_per_step: int = 1
                 ) -> Iterator[dict[str, Any]]:
    """Train on a stream of region chunks (or regions), one optimizer step per chunk group.

    ``loss_fn(chunk) -> scalar`` (or ``(scalar, parts)``); default: the loss of the task that
    trains the model's head (:func:`xtstream.tasks.task_for_head`), e.g. the xView3 map losses, or
    the cross-entropy of a scene's logits against its ``label`` target. ``scenes_per_step``:
    chunks of that many scenes at the same grid positions, when they arrive one after another, are
    stepped together (their losses averaged). Records: ``scene_id`` (the first of the group),
    ``scenes``, ``indices``, ``loss``, ``parts`` (``{part: value}`` averaged over the group's
    chunks, each over the chunks that reported it; empty when ``loss_fn`` returns a scalar alone),
    and ``lost_regions``: regions the readers reported not delivered with these chunks (shards read
    with ``skip_bad=True``: :class:`~xtstream.data.shards.LostRegions`), so that a loop can count
    what an epoch missed.
    """
    if loss_fn is None:
        loss_fn = task_for_head(model.config.head).loss
    ctx_config = getattr(model.context, "config", None)
    if ctx_config is not None and not getattr(ctx_config, "detach_state", True):
        raise ModelConfigError("per-chunk training needs detach_state=True in the context config: "
                               "with a carried graph the next chunk's backward would re-enter it")
    model.train()
    with torch.enable_grad():
        for group in model.stream_groups(items, device=device, grad_ratio=grad_ratio, generator=generator,
                                         scenes_per_group=scenes_per_step):
            results = [loss_fn(c) for c in group]
            loss = sum(_scalar(r) for r in results) / len(group)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            yield {"scene_id": group[0].scene_id, "scenes": [c.scene_id for c in group],
                   "indices": group[0].indices, "loss": float(loss.detach()), "parts": _mean_parts(results),
                   "lost_regions": sum(int(c.info.get("lost_regions", 0)) for c in group)}


def _scalar(value: Any) -> Tensor:
    """A loss function's scalar, whether it returned it alone or with its parts."""
    return value[0] if isinstance(value, tuple) else value


def _mean_parts(results: list[Any]) -> dict[str, float]:
    """``{part: mean}`` over the loss results that came with parts: what each term contributed, so
    a record shows which term the step trained for."""
    sums: dict[str, list[float]] = {}
    for r in results:
        if isinstance(r, tuple) and len(r) > 1 and r[1]:
            for name, value in r[1].items():
                sums.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in sums.items()}
