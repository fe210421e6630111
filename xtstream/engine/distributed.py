"""Data-parallel training (``torchrun``): one process per GPU (or CPU), gradients averaged by hand.

The model is not wrapped in ``DistributedDataParallel``: training drives it through
:meth:`~xtstream.models.XTModel.stream_groups`, not ``forward``, and a step may accumulate many
backward passes (``per_scene``). Instead, after each rank has accumulated a step's gradients,
:func:`sync_gradients` all-reduces them in one flat buffer together with

* which parameters got a gradient anywhere (a parameter no rank touched keeps ``grad=None``, so
  AdamW skips it exactly as a single process would),
* a flag "this rank still had data", and the rank's loss.

Ranks read different scenes (split by :mod:`xtstream.data.split` from ``RANK``/``WORLD_SIZE``),
so their step counts differ. Policy: **drop** — the epoch ends for every rank at the first step
some rank has no data for (it joins that all-reduce with the flag down); what the other ranks
accumulated for that step is discarded. Every rank thus takes the same number of optimiser steps
per epoch, the fewest any rank's data allows, and the weights stay identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes; ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cuda: bool) -> Dist:
    """Join the process group ``torchrun`` (or any launcher setting ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) describes: NCCL on CUDA, gloo on CPU. One process: nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def broadcast_parameters(module: nn.Module, d: Dist) -> None:
    """Every rank starts from rank 0's weights and buffers."""
    if d.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, 0)


def sync_gradients(params: Sequence[nn.Parameter], has_data: bool, loss: float, d: Dist
                   ) -> tuple[bool, float]:
    """Average the ranks' gradients in place (see the module doc). Returns ``(every rank had data,
    the mean loss over ranks)``; when some rank had none, gradients are left as they were."""
    if d.world == 1:
        return has_data, loss
    import torch.distributed as dist

    device = params[0].device
    touched = [p.grad is not None for p in params]
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype)
             for p in params]
    extra = torch.tensor([*map(float, touched), float(has_data), float(loss) if has_data else 0.0],
                         device=device, dtype=grads[0].dtype)
    flat = torch.cat([*grads, extra])
    dist.all_reduce(flat)
    n = len(params)
    tail = flat[-(n + 2):]
    if int(round(float(tail[n]))) < d.world:
        return False, loss
    flat /= d.world
    offset = 0
    for p, anywhere in zip(params, (tail[:n] > 0).tolist()):
        k = p.numel()
        p.grad = flat[offset:offset + k].view_as(p).clone() if anywhere else None
        offset += k
    return True, float(tail[n + 1])


def gather(obj: Any, d: Dist) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); ``None`` elsewhere. ``obj`` is pickled:
    keep its tensors on the CPU."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * d.world if d.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def agree(value: Any, d: Dist) -> Any:
    """Rank 0's ``value`` on every rank (e.g. whether to resume)."""
    if d.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
