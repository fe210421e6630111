"""Scenes → a ``torch.utils.data.IterableDataset`` of :class:`~xtstream.data.chunk.RegionChunk`.

``DataLoader(read_scenes(SHARD_DIR, chunk=C), batch_size=None, num_workers=N)`` is the contract:
the scene set (shards, stores or sources) splits itself by scene inside each worker and node, so
every scene's chunks come from one worker, in row-major order; chunks of different scenes
interleave in the loader's output, and the model keeps one context state per scene
(:class:`xtstream.engine.SceneStates`), so interleaving loses nothing.

Lost regions: a scene set that skips bad data (shards read with ``skip_bad=True``) records the
regions it did not deliver (:class:`~xtstream.data.shards.LostRegions`); each chunk carries those
recorded since the worker's previous chunk in ``info["lost"]`` (plain dicts: ``scene_id``,
``start``, ``stop``, ``cause``) and their count in ``info["lost_regions"]``, so the training loop
sees every loss whichever worker found it. A worker holds its latest chunk back until the next one
is built (or its pass ends), so that losses found after it — a scene wholly lost at the end of the
worker's share — still travel with a chunk.

Memory: each worker holds at most ``prefetch_factor`` finished chunks in the DataLoader's queue
plus the chunk held back plus the chunk it is building plus its reader's bound —
``(N x (prefetch_factor + 2) + 1) x C`` regions in all, whatever the scenes' sizes.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np
import torch

from xtstream.data.chunk import RegionChunk
from xtstream.data.split import worker_info
from xtstream.data.streams import SceneStream
from xtstream.errors import ShardError


#: dtypes ``torch.from_numpy`` takes (and the region encoder casts to float)
_TORCH_DTYPES = {np.dtype(t) for t in ("float32", "float64", "float16", "uint8", "int8", "int16", "int32",
                                       "int64", "bool")}


def shareable_pixels(pixels: Any) -> Any:
    """``pixels`` as a CPU tensor over the same memory, when numpy can hand it to torch.

    A DataLoader moves tensors from its workers through shared memory and pickles numpy arrays
    through a pipe: for a chunk of 4 two-band 256-px regions (2 MiB) the training process spent
    ~4 ms receiving the array against ~1.3 ms the tensor (2026-12-04, 2 cores), time taken from
    its training step. Read-only views and dtypes torch lacks (e.g. ``uint16``) stay numpy."""
    if isinstance(pixels, np.ndarray) and pixels.flags.writeable and pixels.dtype in _TORCH_DTYPES:
        return torch.from_numpy(pixels)
    return pixels


class SceneSet(Protocol):
    """A re-iterable collection of scenes that splits itself per node and worker when iterated."""

    def __iter__(self) -> Iterator[SceneStream]: ...

    def set_epoch(self, epoch: int) -> None: ...


class SceneChunks(torch.utils.data.IterableDataset):
    """Chunks of ``chunk`` consecutive regions of every scene of ``scenes``, scene after scene.

    Iterating yields :class:`RegionChunk` (numpy pixels and targets; ``info["worker"]`` names the
    DataLoader worker that read it); :meth:`scenes` yields the :class:`SceneStream` themselves;
    :meth:`set_epoch` reshuffles (when the scene set shuffles). Inside a DataLoader worker the
    pixels come as a CPU tensor over the same memory (:func:`shareable_pixels`).

    ``passes=2`` reads every scene twice in a row (a model of ``order="two_pass"``): the first
    pass's chunks carry ``info["prime"] = True`` (they only fill the context state), the second's
    are the scored ones. Memory stays one scene's stream: the scene is read again, not kept.
    """

    def __init__(self, scenes: SceneSet, chunk: int, passes: int = 1) -> None:
        super().__init__()
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a whole number of regions >= 1, got {chunk!r}")
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2 (two_pass), got {passes!r}")
        self.scene_set, self.chunk, self.passes = scenes, chunk, passes

    def set_epoch(self, epoch: int) -> None:
        self.scene_set.set_epoch(epoch)

    def scenes(self) -> Iterator[SceneStream]:
        """This process's scenes (split by node and worker), each an ordered region stream."""
        return iter(self.scene_set)

    def __iter__(self) -> Iterator[RegionChunk]:
        worker = worker_info()[2]
        in_worker = torch.utils.data.get_worker_info() is not None
        held, told = None, 0  # the chunk held back; how many loss records chunks have carried
        carried: set[tuple] = set()  # the records told: a scene read twice loses its regions twice
        for scene in self.scene_set:
            for chunk in self._passes(scene):
                chunk.info.update(scene.info, worker=worker)
                if in_worker:
                    chunk.pixels = shareable_pixels(chunk.pixels)
                if held is not None:
                    told = self._carry_lost(held, told, carried)
                    yield held
                held = chunk
        if held is not None:
            self._carry_lost(held, told, carried)
            yield held
        elif self._lost()[told:]:
            lost = self._lost()[told:]
            raise ShardError(f"every region this reader was to deliver was lost ({sum(len(x) for x in lost)} "
                             f"in {len(lost)} run(s)); first: {lost[0]}")

    def _passes(self, scene: SceneStream) -> Iterator[RegionChunk]:
        if self.passes == 2:
            for chunk in scene.chunks(self.chunk):
                chunk.info["prime"] = True
                yield chunk
        yield from scene.chunks(self.chunk)

    def _lost(self) -> list[Any]:
        # re-read each time: the scene set replaces its list at every pass
        return list(getattr(self.scene_set, "lost", None) or [])

    def _carry_lost(self, chunk: RegionChunk, told: int, carried: set[tuple]) -> int:
        """Put the loss records not yet carried into ``chunk.info``; return how many are now told.
        A first-pass chunk (``prime``) carries none: its losses come again in the scored pass."""
        if chunk.info.get("prime"):
            return told
        lost = self._lost()
        new = [x for x in lost[told:] if (x.scene_id, x.start, x.stop) not in carried]
        carried.update((x.scene_id, x.start, x.stop) for x in new)
        if new:
            chunk.info["lost"] = [x.as_dict() for x in new]
            chunk.info["lost_regions"] = sum(len(x) for x in new)
        return len(lost)

    def __getattr__(self, name: str) -> Any:
        # options and reports of the scene set (``bad``, ``report()``, ``skip_bad``) read through
        if name == "scene_set":
            raise AttributeError(name)
        return getattr(self.scene_set, name)

    def __repr__(self) -> str:
        passes = ", passes=2" if self.passes == 2 else ""
        return f"SceneChunks({type(self.scene_set).__name__}, chunk={self.chunk}{passes})"
