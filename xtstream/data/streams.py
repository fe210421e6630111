"""Scenes as ordered streams of regions — the interface every reader yields — and the direct path.

A :class:`SceneStream` knows its ``scene_id`` and :class:`~xtstream.data.grid.RegionGrid` (enough
to place every region back); iterating it yields :class:`~xtstream.data.sample.RegionSample` in
row-major order, ``scene.chunks(C)`` yields :class:`~xtstream.data.chunk.RegionChunk`.
:func:`open_scene` opens one scene straight from a Zarr scene store or any raster source;
:func:`stream_scenes` opens many, as a ``torch`` ``IterableDataset`` of chunks
(:class:`~xtstream.data.dataset.SceneChunks`) — the same interface
:func:`xtstream.data.shards.read_scenes` gives over WebDataset shards.

Reading a store: regions are read in blocks planned by :func:`plan_reads` — a block is either a
run of regions in one region row, or whole region rows sharing the store's chunk rows — so that
each Zarr chunk is decoded once where memory allows. A block never exceeds ``max_read_bytes``
(default 16 MiB) unless one region alone is bigger; past that, chunks taller than a region are
decoded once per region row instead (exact, only slower). Memory of a stream is bounded by one
block plus ``prefetch`` regions plus the regions the consumer holds — independent of scene size.

Splitting for data-parallel training happens at the *scene* level (:func:`split_scenes`): a scene
goes to exactly one node and one DataLoader worker, so its regions stay in order.
"""


from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from xtstream._runtime.prefetch import prefetched
from xtstream.data.chunk import RegionChunk, chunked
from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample
from xtstream.data.split import split_scenes
from xtstream.data.windows import DEFAULT_MAX_READ_BYTES, iter_regions, open_windows

if TYPE_CHECKING:  # torch loads only when a dataset is made
    from xtstream.data.dataset import SceneChunks

#: regions per chunk when a reader is not told (the model's default chunk too)
DEFAULT_CHUNK = 4


class SceneStream:
    """One scene as an ordered, re-iterable stream of regions.

    ``scene_id``, ``grid`` (rows x cols of ``R x R`` regions, zero-padded edges), ``bands`` (names
    or ``None``); iterating yields :class:`RegionSample` with ``pixels`` ``(bands, R, R)`` in
    row-major order. Each iteration starts a new pass; with ``prefetch > 0`` a background thread
    decodes up to ``prefetch`` regions ahead of the consumer (the bound on extra memory).
    """

    def __init__(self, scene_id: str, grid: RegionGrid, regions: Callable[[], Iterator[RegionSample]],
                 *, bands: Sequence[str] | None = None, prefetch: int = 0, info: dict | None = None):
        self.scene_id = scene_id
        self.grid = grid
        self.bands = list(bands) if bands is not None else None
        self.prefetch = prefetch
        self.info = dict(info or {})
        self._regions = regions

    def __len__(self) -> int:
        return len(self.grid)

    def __iter__(self) -> Iterator[RegionSample]:
        it = self._regions()
        return prefetched(it, self.prefetch) if self.prefetch > 0 else it

    def chunks(self, size: int) -> Iterator[RegionChunk]:
        """Consecutive :class:`RegionChunk` of at most ``size`` regions, in row-major order (a region
        a reader skipped as bad closes a chunk early, and a lost tail is noted on the last chunk:
        see :func:`~xtstream.data.chunk.chunked`)."""
        return chunked(iter(self), size, grid_end=True)

    def __repr__(self) -> str:
        return f"SceneStream({self.scene_id!r}, grid={self.grid.rows}x{self.grid.cols}, region={self.grid.region})"




def open_scene(source: Any, region: int, *, labels: Any = None, prefetch: int = 0,
               max_read_bytes: int = DEFAULT_MAX_READ_BYTES) -> SceneStream:
    """One scene straight from a Zarr scene store or any raster source, as a :class:`SceneStream`.

    >>> scene = open_scene("scene.zarr", region=512)                  # doctest: +SKIP
    >>> for chunk in scene.chunks(16): ...                            # RegionChunk of 16 regions
    """
    reader = open_windows(source)
    bands, height, width = reader.shape
    grid = RegionGrid(height, width, region)
    if labels is not None and hasattr(labels, "check_inside"):  # labels with positions (xView3's)
        labels.check_inside(height, width, source=f"labels of {reader.scene_id}")
    return SceneStream(reader.scene_id, grid,
                       lambda: iter_regions(reader, grid, labels=labels, max_read_bytes=max_read_bytes),
                       bands=reader.bands, prefetch=prefetch,
                       info={"source": str(getattr(reader, "path", "")), **getattr(reader, "georef", {})})


class SourceSceneSet:
    """Several sources as scenes, split by node/worker and optionally shuffled at each iteration.

    Re-iterable; call :meth:`set_epoch` between epochs to reshuffle. Safe to hand to DataLoader
    workers: the split is computed inside the worker that iterates.
    """

    def __init__(self, sources: Sequence[Any], region: int, *, labels: dict | None = None,
                 shuffle: bool = False, seed: int = 0, by_node: bool = True, by_worker: bool = True,
                 prefetch: int = 0, max_read_bytes: int = DEFAULT_MAX_READ_BYTES, channels: int | None = None):
        from xtstream.data.sources.images import expand_sources

        # image directories and lists: one scene per image, listed (not opened) here
        self.sources, self.region, self.labels = expand_sources(sources, channels), region, labels or {}
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.by_node, self.by_worker = by_node, by_worker
        self.prefetch, self.max_read_bytes = prefetch, max_read_bytes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[SceneStream]:
        for src in split_scenes(self.sources, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                                by_node=self.by_node, by_worker=self.by_worker):
            reader = open_windows(src)
            yield open_scene(reader, self.region, labels=self.labels.get(reader.scene_id),
                             prefetch=self.prefetch, max_read_bytes=self.max_read_bytes)


def stream_scenes(sources: Sequence[Any] | Any, region: int, *, chunk: int = DEFAULT_CHUNK, passes: int = 1,
                  **kw: Any) -> "SceneChunks":
    """Scenes straight from stores/sources as chunks: the interface of :func:`xtstream.read_scenes`.

    Returns a ``torch.utils.data.IterableDataset`` of :class:`RegionChunk` (``chunk`` regions each,
    a scene's last chunk shorter), scene after scene; ``.scenes()`` iterates the scenes
    themselves. Give it to a ``DataLoader(..., batch_size=None, num_workers=N)``: scenes are split
    between workers (and nodes) whole, so each scene's chunks stay in order.

    ``sources``: anything :func:`open_scene` takes; an image directory or an image-list CSV is
    one scene per image (:mod:`xtstream.data.sources.images`).

    ``passes=2``: each scene twice, the first pass marked ``info["prime"]`` (a model of
    ``order="two_pass"``; see :class:`~xtstream.data.dataset.SceneChunks`).

    ``kw``: ``labels`` (``{scene_id: labels}`` with a ``region_targets(grid, index)`` method, e.g.
    from ``xtstream.tasks.get_task(name).read_labels(path)``), ``shuffle``, ``seed``, ``by_node``,
    ``by_worker``, ``prefetch``, ``max_read_bytes``, ``channels`` (1 or 3: convert grey/RGB images).
    """
    from xtstream.data.dataset import SceneChunks

    if isinstance(sources, (str, Path)) or not isinstance(sources, Sequence):
        sources = [sources]
    return SceneChunks(SourceSceneSet(sources, region, **kw), chunk, passes)
