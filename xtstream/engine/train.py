"""Training over a stream of chunks with a plain optimiser: forward, loss, backward and a step per
chunk group (or per scene), memory detached between chunks.

This is what bounds training memory on giant scenes: only the current group's graph is alive, the
context state carried to the scene's next chunk has no gradient (``detach_state=True``, the
default), and the classification pool is detached too. Gradient therefore flows only inside a
chunk. Chunks of several scenes may arrive interleaved (DataLoader workers): the engine keeps one
state per scene. :func:`xtstream.train` runs whole jobs (config, schedule, checkpoints, DDP) on
the same step policies (:mod:`xtstream.engine.policy`).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from xtstream.engine.policy import LossFn, accumulate


def train_chunks(model: Any, items: Iterable[Any], optimizer: torch.optim.Optimizer,
                 loss_fn: LossFn | None = None, *, device: torch.device | str | None = None,
                 grad_ratio: float | None = None, clip_grad_norm: float | None = None,
                 generator: torch.Generator | None = None, scenes_per_step: int = 1,
                 policy: str = "per_chunk", bptt_chunks: int = 1) -> Iterator[dict[str, Any]]:
    """Train on a stream of region chunks (or regions), one optimizer step per chunk group (or per
    ``scenes_per_step`` scenes with ``policy="per_scene"``).

    ``loss_fn(chunk) -> scalar`` (or ``(scalar, parts)``); default: the loss of the task that
    trains the model's head (:func:`xtstream.tasks.task_for_head`), e.g. the xView3 map losses, or
    the cross-entropy of a scene's logits against its ``label`` target. ``scenes_per_step``:
    chunks of that many scenes at the same grid positions, when they arrive one after another, are
    stepped together (their losses averaged). Records: ``scene_id`` (the first of the group),
    ``scenes``, ``indices``, ``loss``, ``parts`` (``{part: value}`` averaged over the group's
    chunks, each over the chunks that reported it; empty when ``loss_fn`` returns a scalar alone),
    and ``lost_regions``: regions the readers reported not delivered with these chunks (shards read
    with ``skip_bad=True``: :class:`~xtstream.data.shards.LostRegions`), so that a loop can count
    what an epoch missed. ``bptt_chunks``: gradient through the context state over windows of that
    many chunk groups (:mod:`xtstream.engine.policy`).
    """
    optimizer.zero_grad(set_to_none=True)
    for acc in accumulate(model, items, policy=policy, scenes_per_step=scenes_per_step, loss_fn=loss_fn,
                          device=device, grad_ratio=grad_ratio, generator=generator, bptt_chunks=bptt_chunks):
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield {"scene_id": acc.scenes[0], "scenes": acc.scenes if policy == "per_scene" else
               [c.scene_id for c in acc.group], "indices": acc.group[0].indices, "loss": acc.loss,
               "parts": acc.parts, "lost_regions": acc.lost_regions}
