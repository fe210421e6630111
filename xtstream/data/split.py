"""Which scenes this process reads: scene-level splitting over nodes and DataLoader workers.

A scene goes to exactly one node and one worker, so its regions stay in order; shuffling permutes
scenes, never regions, with the same seed everywhere so every process agrees on the order.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Sequence, TypeVar

T = TypeVar("T")


def worker_info() -> tuple[int, int, int, int]:
    """``(rank, world_size, worker, num_workers)`` of this process.

    Rank and world size come from ``RANK``/``WORLD_SIZE`` or an initialised ``torch.distributed``;
    the worker from ``torch.utils.data.get_worker_info()``. torch is only consulted if something
    already imported it (a DataLoader worker has), so the torch-free paths stay torch-free.
    """
    rank, world, worker, workers = 0, 1, 0, 1
    torch = sys.modules.get("torch")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    elif torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if torch is not None:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            worker, workers = info.id, info.num_workers
    return rank, world, worker, workers


def split_scenes(items: Sequence[T], *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 by_node: bool = True, by_worker: bool = True,
                 info: tuple[int, int, int, int] | None = None) -> list[T]:
    """The scenes this process should read: shuffled as a whole (same seed everywhere, so every
    node and worker agrees on the order), then every ``world_size``-th for this node and every
    ``num_workers``-th of those for this DataLoader worker. Scenes are never split.
    """
    items = list(items)
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(items)
    rank, world, worker, workers = info if info is not None else worker_info()
    if by_node and world > 1:
        items = items[rank::world]
    if by_worker and workers > 1:
        items = items[worker::workers]
    return items
