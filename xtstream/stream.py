"""Scenes as ordered streams of regions — the interface every reader yields — and the direct path.

``for scene in scenes: for chunk in scene.chunks(C): …`` — a :class:`SceneStream` knows its
``scene_id`` and :class:`~xtstream.regions.RegionGrid` (enough to place every region back) and
yields :class:`~xtstream.sample.RegionSample` in row-major order. :func:`stream_scenes` builds
them straight from Zarr scene stores or any raster source (no shards); :mod:`xtstream.shards`
builds the same from WebDataset shards.

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

import os
import queue
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .errors import SourceError, StoreError
from .malloc import limit_arenas
from .regions import RegionGrid, Window, pad_region
from .sample import RegionSample

DEFAULT_MAX_READ_BYTES = 16 * 2**20
T = TypeVar("T")


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

    def chunks(self, size: int) -> Iterator[list[RegionSample]]:
        """Consecutive lists of at most ``size`` regions (context chunks), in row-major order."""
        return batched(iter(self), size)

    def __repr__(self) -> str:
        return f"SceneStream({self.scene_id!r}, grid={self.grid.rows}x{self.grid.cols}, region={self.grid.region})"


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` consecutive items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- splitting and prefetch -------------------------------------------------------------------

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


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def prefetched(iterator: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``iterator`` in a background thread, at most ``depth`` items ahead; errors propagate."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Raised(err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="xtstream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


# -- read planning ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadBlock:
    """One read: ``window`` (inside the scene) covering regions ``start .. stop - 1`` (row-major)."""

    window: Window
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_reads(grid: RegionGrid, chunks: tuple[int, int] | None, pixel_bytes: int,
               max_read_bytes: int = DEFAULT_MAX_READ_BYTES) -> list[ReadBlock]:
    """Blocks to read a scene with, in row-major region order (see the module docstring).

    ``chunks``: the store's ``(chunk_h, chunk_w)`` (``None``: any); ``pixel_bytes``: bytes of one
    pixel over all bands. Several region rows share one full-width block when they lie in the
    same chunk rows and fit ``max_read_bytes``; otherwise a row is read in runs of regions,
    cut at chunk-column boundaries where possible.
    """
    R, H, W = grid.region, grid.height, grid.width
    ch, cw = chunks or (R, R)
    rows, cols = grid.shape

    def band_bytes(r0: int, r1: int) -> int:
        return (min(r1 * R, H) - r0 * R) * W * pixel_bytes

    blocks: list[ReadBlock] = []
    r = 0
    while r < rows:
        r1 = r + 1
        while r1 < rows and (r1 * R) % ch and band_bytes(r, r1 + 1) <= max_read_bytes:
            r1 += 1
        y0, y1 = r * R, min(r1 * R, H)
        if r1 - r > 1:
            blocks.append(ReadBlock(Window(y0, 0, y1, W), r * cols, r1 * cols))
            r = r1
            continue
        c = 0
        while c < cols:
            c1 = c + 1
            while c1 < cols and (min((c1 + 1) * R, W) - c * R) * (y1 - y0) * pixel_bytes <= max_read_bytes:
                c1 += 1
            if c1 < cols and (c1 * R) % cw:
                aligned = [k for k in range(c + 1, c1) if (k * R) % cw == 0]
                c1 = aligned[-1] if aligned else c1
            blocks.append(ReadBlock(Window(y0, c * R, y1, min(c1 * R, W)), r * cols + c, r * cols + c1))
            c = c1
        r = r1
    return blocks


def decode_passes(blocks: Sequence[ReadBlock], chunks: tuple[int, int], shape: tuple[int, int]) -> float:
    """How many times, on average, reading ``blocks`` decodes each store chunk (1.0 is ideal)."""
    ch, cw = chunks
    decodes = sum((-(-b.window.y1 // ch) - b.window.y0 // ch) * (-(-b.window.x1 // cw) - b.window.x0 // cw)
                  for b in blocks)
    return decodes / (-(-shape[0] // ch) * -(-shape[1] // cw))


# -- window readers ---------------------------------------------------------------------------

class ZarrWindows:
    """Windows of a scene store's ``image`` array, read with zarr directly (no dask per read).

    Picklable: holds the path, opens the array lazily in each process.
    """

    def __init__(self, path: str | Path):
        from .store import read_status

        self.path = Path(path)
        status = read_status(self.path)
        if not status.ours:
            raise StoreError(f"{self.path}: not an xtstream scene store")
        if not status.complete:
            raise StoreError(f"{self.path}: incomplete scene store (its ingest did not finish); "
                             "rerun `xtstream ingest` to resume it")
        self.scene_id = str(status.attrs.get("scene_id") or self.path.name.removesuffix(".zarr"))
        self.attrs = status.attrs
        arr = self._array()
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.chunks = (int(arr.chunks[1]), int(arr.chunks[2]))
        self.bands = [str(b) for b in status.attrs.get("band_names") or self._band_coords()]
        self._arr = None

    def _array(self):
        import zarr

        from .store import IMAGE_VAR

        return zarr.open_array(self.path, path=IMAGE_VAR, mode="r", zarr_format=3)

    def _band_coords(self) -> list[str]:
        from .store import open_store

        return [str(b) for b in open_store(self.path)["band"].values]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arr": None}

    def read(self, window: Window) -> np.ndarray:
        """``(bands, h, w)`` pixels of ``window`` (inside the scene)."""
        if self._arr is None:
            self._arr = self._array()
        return np.asarray(self._arr[:, window.y0:window.y1, window.x0:window.x1])


class SourceWindows:
    """Windows of any raster source (:mod:`xtstream.sources`); window sources read directly."""

    def __init__(self, source: Any, chunks: int = 2048):
        from .sources import WindowedSource, open_source

        self.source = open_source(source)
        self.scene_id = str(getattr(self.source, "scene_id", None) or Path(str(self.source.name)).name.split(".")[0])
        if isinstance(self.source, WindowedSource):
            self.shape, self.dtype = tuple(self.source.shape), np.dtype(self.source.dtype)
            self.bands = [str(b) for b in self.source.band_names]
            self.chunks = (chunks, chunks)
            self._array = None
        else:
            arr = self.source.to_dataarray(chunks=chunks)
            if arr.dims != ("band", "y", "x"):
                raise SourceError(f"{self.source.name}: dims {arr.dims}, expected (band, y, x)")
            self.shape, self.dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
            self.bands = [str(b) for b in arr["band"].values]
            self.chunks = tuple(int(c) for c in arr.data.chunksize[1:])
            self._array = arr.data

    def read(self, window: Window) -> np.ndarray:
        if self._array is None:
            return np.asarray(self.source.read_window(window))
        return np.asarray(self._array[:, window.y0:window.y1, window.x0:window.x1].compute())


def open_windows(source: Any) -> ZarrWindows | SourceWindows:
    """A window reader for a scene store path (fast zarr path) or anything :func:`open_source` takes."""
    from .store import read_status

    if isinstance(source, (ZarrWindows, SourceWindows)):
        return source
    if isinstance(source, (str, Path)) and read_status(source).ours:
        return ZarrWindows(source)
    return SourceWindows(source)


def iter_regions(reader: ZarrWindows | SourceWindows, grid: RegionGrid, start: int = 0,
                 stop: int | None = None, *, labels: Any = None,
                 max_read_bytes: int = DEFAULT_MAX_READ_BYTES, scene_id: str | None = None) -> Iterator[RegionSample]:
    """Regions ``start .. stop - 1`` of a scene in row-major order, zero-padded to ``(bands, R, R)``.

    ``labels``: a :class:`~xtstream.labels.SceneLabels` to attach targets and objects.
    """
    limit_arenas()
    stop = len(grid) if stop is None else stop
    scene_id = scene_id or reader.scene_id
    pixel_bytes = reader.shape[0] * reader.dtype.itemsize
    for block in plan_reads(grid, reader.chunks, pixel_bytes, max_read_bytes):
        if block.stop <= start or block.start >= stop:
            continue
        data = reader.read(block.window)
        for index in range(max(block.start, start), min(block.stop, stop)):
            win = grid.valid_window(index)
            ys = slice(win.y0 - block.window.y0, win.y1 - block.window.y0)
            xs = slice(win.x0 - block.window.x0, win.x1 - block.window.x0)
            # a copy, so that a region handed on never pins the whole block in memory
            pixels = np.array(pad_region(data[:, ys, xs], grid.region), copy=True)
            sample = RegionSample(scene_id, index, grid, pixels)
            if labels is not None:
                sample.targets, sample.objects = labels.region_targets(grid, index)
            yield sample
        del data


def open_scene(source: Any, region: int, *, labels: Any = None, prefetch: int = 0,
               max_read_bytes: int = DEFAULT_MAX_READ_BYTES) -> SceneStream:
    """One scene straight from a Zarr scene store or any raster source, as a :class:`SceneStream`.

    >>> scene = open_scene("scene.zarr", region=512)                  # doctest: +SKIP
    >>> for chunk in scene.chunks(16): ...                            # lists of RegionSample
    """
    reader = open_windows(source)
    bands, height, width = reader.shape
    grid = RegionGrid(height, width, region)
    if labels is not None:
        labels.check_inside(height, width, source=f"labels of {reader.scene_id}")
    return SceneStream(reader.scene_id, grid,
                       lambda: iter_regions(reader, grid, labels=labels, max_read_bytes=max_read_bytes),
                       bands=reader.bands, prefetch=prefetch, info={"source": str(getattr(reader, "path", ""))})


class SourceScenes:
    """Several sources as scenes, split by node/worker and optionally shuffled at each iteration.

    Re-iterable; call :meth:`set_epoch` between epochs to reshuffle. Safe to hand to DataLoader
    workers: the split is computed inside the worker that iterates.
    """

    def __init__(self, sources: Sequence[Any], region: int, *, labels: dict | None = None,
                 shuffle: bool = False, seed: int = 0, by_node: bool = True, by_worker: bool = True,
                 prefetch: int = 0, max_read_bytes: int = DEFAULT_MAX_READ_BYTES):
        self.sources, self.region, self.labels = list(sources), region, labels or {}
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


def stream_scenes(sources: Sequence[Any] | Any, region: int, **kw: Any) -> SourceScenes:
    """Scenes straight from stores/sources, same interface as :func:`xtstream.shards.read_scenes`.

    ``kw``: ``labels`` (``{scene_id: SceneLabels}`` from :func:`xtstream.labels.read_labels`),
    ``shuffle``, ``seed``, ``by_node``, ``by_worker``, ``prefetch``, ``max_read_bytes``.
    """
    if isinstance(sources, (str, Path)) or not isinstance(sources, Sequence):
        sources = [sources]
    return SourceScenes(sources, region, **kw)
