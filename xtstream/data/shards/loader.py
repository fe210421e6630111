"""Scenes → a ``torch.utils.data.IterableDataset`` of region chunks, for ``DataLoader`` workers.

Each item is one context chunk: up to ``C`` consecutive regions of one scene, as tensors, with
what is needed to place them back. Use ``DataLoader(dataset, batch_size=None, num_workers=K)``:
the scenes (from :func:`xtstream.data.shards.read_scenes` or :func:`xtstream.data.streams.stream_scenes`)
are split between workers and nodes by scene, so every scene's chunks come from one worker, in
row-major order; chunks of different scenes interleave (route them by ``scene_id``).

Memory: each worker holds at most ``prefetch_factor`` finished chunks in the DataLoader's queue
plus the chunk it is building plus its reader's bound (see the readers) — ``(K x
(prefetch_factor + 1) + 1) x C`` regions in all, whatever the scenes' sizes.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from xtstream.data.sample import RegionSample
from xtstream.data.split import worker_info
from xtstream.data.streams import SceneStream


def collate_chunk(chunk: Sequence[RegionSample], scene: SceneStream, *, worker: int = 0) -> dict[str, Any]:
    """A list of ``n`` regions of one scene → tensors.

    ``pixels`` ``(n, bands, R, R)``; ``indices`` ``(n,)`` row-major region indices; ``positions``
    ``(n, 2)`` (row, col); ``targets`` ``{name: (n, R, R)}`` for names every region has;
    ``objects`` (n lists); ``grid`` ``[rows, cols]``, ``scene_shape`` ``[H, W]``, ``region``;
    ``first`` / ``last``: the chunk holds the scene's first / last region; ``worker``.
    """
    grid = scene.grid
    indices = [s.index for s in chunk]
    names = [n for n in chunk[0].targets if all(n in s.targets for s in chunk)]
    return {
        "scene_id": scene.scene_id,
        "grid": torch.tensor([grid.rows, grid.cols]),
        "scene_shape": torch.tensor([grid.height, grid.width]),
        "region": grid.region,
        "indices": torch.tensor(indices, dtype=torch.int64),
        "positions": torch.tensor([grid.position(i) for i in indices], dtype=torch.int64).reshape(-1, 2),
        "pixels": torch.from_numpy(np.stack([s.pixels for s in chunk])),
        "targets": {n: torch.from_numpy(np.stack([s.targets[n] for s in chunk])) for n in names},
        "objects": [s.objects for s in chunk],
        "first": indices[0] == 0,
        "last": indices[-1] == len(grid) - 1,
        "worker": worker,
    }


class RegionChunks(torch.utils.data.IterableDataset):
    """Chunks of ``chunk_size`` regions of each scene of ``scenes``, as :func:`collate_chunk` dicts.

    ``scenes``: a re-iterable of :class:`SceneStream` that splits itself per worker/node when
    iterated (what ``read_scenes`` / ``stream_scenes`` return). :meth:`set_epoch` reshuffles.
    """

    def __init__(self, scenes: Iterable[SceneStream], chunk_size: int):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.scenes, self.chunk_size = scenes, chunk_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.scenes, "set_epoch"):
            self.scenes.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = worker_info()[2]
        for scene in self.scenes:
            for chunk in scene.chunks(self.chunk_size):
                yield collate_chunk(chunk, scene, worker=worker)
