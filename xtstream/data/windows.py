"""Window readers: pixels of a scene window by window, and read planning over a store's tiles.

One protocol: ``reader.read_window(window) -> (bands, h, w)`` numpy, with ``shape`` ``(bands, H,
W)``, ``dtype``, ``bands`` (names), ``tiles`` (``(tile_h, tile_w)``: the store's or source's own
storage blocks) and ``scene_id``. :class:`ZarrWindows` reads scene stores with zarr directly (no
dask per read); :class:`SourceWindows` reads anything :func:`~xtstream.data.sources.open_source`
takes. :func:`open_windows` picks one.

Reading a scene: regions are read in blocks planned by :func:`plan_reads` — a block is either a
run of regions in one region row, or whole region rows sharing the store's tile rows — so that
each tile is decoded once where memory allows. A block never exceeds ``max_read_bytes`` (default
16 MiB) unless one region alone is bigger; past that, tiles taller than a region are decoded once
per region row instead (exact, only slower).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from xtstream._runtime.malloc import limit_arenas
from xtstream.data.grid import RegionGrid, Window, check_block_bytes, pad_region
from xtstream.data.sample import RegionSample
from xtstream.errors import SourceError, StoreError

DEFAULT_MAX_READ_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ReadBlock:
    """One read: ``window`` (inside the scene) covering regions ``start .. stop - 1`` (row-major)."""

    window: Window
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_reads(grid: RegionGrid, tiles: tuple[int, int] | None, pixel_bytes: int,
               max_read_bytes: int = DEFAULT_MAX_READ_BYTES) -> list[ReadBlock]:
    """Blocks to read a scene with, in row-major region order (see the module docstring).

    ``tiles``: the store's ``(tile_h, tile_w)`` storage blocks (``None``: any); ``pixel_bytes``:
    bytes of one pixel over all bands. Several region rows share one full-width block when they
    lie in the same tile rows and fit ``max_read_bytes``; otherwise a row is read in runs of
    regions, cut at tile-column boundaries where possible.
    """
    R, H, W = grid.region, grid.height, grid.width
    th, tw = tiles or (R, R)
    rows, cols = grid.shape

    def band_bytes(r0: int, r1: int) -> int:
        return (min(r1 * R, H) - r0 * R) * W * pixel_bytes

    blocks: list[ReadBlock] = []
    r = 0
    while r < rows:
        r1 = r + 1
        while r1 < rows and (r1 * R) % th and band_bytes(r, r1 + 1) <= max_read_bytes:
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
            if c1 < cols and (c1 * R) % tw:
                aligned = [k for k in range(c + 1, c1) if (k * R) % tw == 0]
                c1 = aligned[-1] if aligned else c1
            blocks.append(ReadBlock(Window(y0, c * R, y1, min(c1 * R, W)), r * cols + c, r * cols + c1))
            c = c1
        r = r1
    return blocks


def decode_passes(blocks: Sequence[ReadBlock], tiles: tuple[int, int], shape: tuple[int, int]) -> float:
    """How many times, on average, reading ``blocks`` decodes each ``(tile_h, tile_w)`` store tile
    of a scene of ``shape`` ``(H, W)`` (1.0 is ideal)."""
    th, tw = tiles
    decodes = sum((-(-b.window.y1 // th) - b.window.y0 // th) * (-(-b.window.x1 // tw) - b.window.x0 // tw)
                  for b in blocks)
    return decodes / (-(-shape[0] // th) * -(-shape[1] // tw))


# -- window readers ---------------------------------------------------------------------------

class ZarrWindows:
    """Windows of a scene store's ``image`` array, read with zarr directly (no dask per read).

    Picklable: holds the path, opens the array lazily in each process. Tiles are read through
    :class:`~xtstream.data.store.CheckedStore`: a missing, corrupt or truncated tile raises
    :class:`StoreError` naming it, never fill values or a crash; opening lists the tiles once.
    """

    def __init__(self, path: str | Path):
        from xtstream.data.store import check_tiles, read_status

        self.path = Path(path)
        status = read_status(self.path)
        if not status.ours:
            raise StoreError(f"{self.path}: not an xtstream scene store")
        if not status.complete:
            raise StoreError(f"{self.path}: incomplete scene store (its ingest did not finish); "
                             "rerun `xtstream ingest` to resume it")
        check_tiles(self.path)
        self.scene_id = str(status.attrs.get("scene_id") or self.path.name.removesuffix(".zarr"))
        self.attrs = status.attrs
        arr = self._array()
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        # the Zarr array's chunks: in our API a storage block is a tile (a chunk is C regions)
        self.tiles = (int(arr.chunks[1]), int(arr.chunks[2]))
        self.bands = [str(b) for b in status.attrs.get("band_names") or self._band_coords()]
        #: ``{"crs": WKT or None, "transform": [a, b, c, d, e, f] or None}`` (see :mod:`xtstream.data.georef`)
        self.georef = {"crs": status.attrs.get("crs"), "transform": status.attrs.get("transform")}
        self._arr = None
        self._tiles = None

    def _tile_reader(self):
        """Whole tiles read and decoded directly (:mod:`~xtstream.data.tile_reader`), checked as
        zarr's reads are; ``False`` where the store's codecs need zarr."""
        from xtstream.data.store import IMAGE_VAR, checked_store
        from xtstream.data.tile_reader import tile_reader

        store = checked_store(self.path)
        reader = tile_reader(self.path / IMAGE_VAR, lambda key: store.read_tile(f"{IMAGE_VAR}/{key}"),
                             f"{self.path}: variable '{IMAGE_VAR}'")
        return reader or False

    def _array(self):
        import zarr

        from xtstream.data.store import IMAGE_VAR, checked_store

        return zarr.open_array(checked_store(self.path), path=IMAGE_VAR, mode="r", zarr_format=3)

    def _band_coords(self) -> list[str]:
        from xtstream.data.store import open_store

        return [str(b) for b in open_store(self.path)["band"].values]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arr": None, "_tiles": None}

    def read_window(self, window: Window) -> np.ndarray:
        """``(bands, h, w)`` pixels of ``window`` (inside the scene)."""
        if self._tiles is None:
            self._tiles = self._tile_reader()
        if self._tiles:
            return self._tiles.read((0, window.y0, window.x0), (self.shape[0], window.y1, window.x1))
        if self._arr is None:
            self._arr = self._array()
        try:
            return np.asarray(self._arr[:, window.y0:window.y1, window.x0:window.x1])
        except StoreError:
            raise
        except (ValueError, RuntimeError, OSError) as err:  # a decoder's complaint, without the tile
            raise StoreError(f"{self.path}: variable 'image': cannot read window {tuple(window)} "
                             f"({type(err).__name__}: {err})") from err


#: bytes of whole source chunks a dask-backed source keeps computed (see :class:`BlockCache`)
SOURCE_CACHE_BYTES = 512 * 2**20
#: bytes of chunks computed together, ahead along a row, on a miss: enough chunks for dask's
#: threads to compute in parallel, and a bound that does not grow with the scene's width
READ_AHEAD_BYTES = 64 * 2**20


class BlockCache:
    """Whole chunks of a dask array, each computed once and kept (least recently used first out)
    within ``max_bytes``; windows are cut from them (:meth:`read`).

    Why: regions are read row-major, one 256-px region row at a time, and a dask slice computes
    every chunk it touches *whole*: a source of 2,048-row chunks was computed 8 times over (once
    per region row), 7× slower than the same source read by windows. Kept, a chunk row serves all
    its region rows. A chunk read by :meth:`read_view` down to its last row is dropped there and
    then (row-major reading never comes back to it), so what is kept is one row of chunks, not
    ``max_bytes``. When one row of chunks does not fit ``max_bytes`` chunks are computed again,
    and that is said once, with the fix (:meth:`SourceWindows.plan_for` first asks the source
    for chunks one region high).
    """

    def __init__(self, array: Any, name: str, max_bytes: int = SOURCE_CACHE_BYTES) -> None:
        self.array, self.name, self.max_bytes = array, name, max_bytes
        self.edges = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in array.chunks]
        self._kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._seen: set[tuple[int, ...]] = set()
        self.recomputed = 0

    def _compute(self, wanted: list[tuple[int, ...]]) -> None:
        """Compute the chunks ``wanted`` in one call of the current dask scheduler (they run in
        parallel) and keep them.

        The graph is culled to their tasks and handed to the scheduler as it is: ``dask.compute``
        of ``array.blocks[c]`` optimised the whole array's graph on every call (60 ms a call
        for 16 chunks of a 100,000² source of 19,000 chunks, against 35 ms culled; 2026-12-04)."""
        import dask
        import dask.threaded

        missing = [c for c in wanted if c not in self._kept]
        if not missing:
            return
        keys = [(self.array.name, *c) for c in missing]
        graph = dict(self.array.__dask_graph__().cull(set(keys)))
        get = dask.base.get_scheduler(collections=[self.array]) or dask.threaded.get
        for coords, data in zip(missing, get(graph, keys)):
            self._keep(coords, np.asarray(data))

    def _evict(self) -> None:
        """Drop the least recently used chunks down to the budget (never the last one)."""
        while self._bytes > self.max_bytes and len(self._kept) > 1:
            self._bytes -= self._kept.popitem(last=False)[1].nbytes

    def _keep(self, coords: tuple[int, ...], data: np.ndarray) -> None:
        if coords in self._seen:
            self.recomputed += 1
            if self.recomputed == 1:
                row = data.nbytes * len(self.array.chunks[-1])
                warnings.warn(f"{self.name}: source chunks of {data.shape[-2]}x{data.shape[-1]} px are computed "
                              f"again for later region rows (a row of chunks is {row / 2**20:.0f} MiB, over the "
                              f"{self.max_bytes / 2**20:.0f} MiB kept): let to_dataarray(chunks) take (y, x) "
                              "chunk sides (it is asked for chunks one region high), read the source by windows "
                              "(WindowedSource), or ingest it to a store first (xtstream ingest)",
                              stacklevel=4)
        self._seen.add(coords)
        self._kept[coords] = data
        self._bytes += data.nbytes

    def read(self, starts: tuple[int, ...], stops: tuple[int, ...]) -> np.ndarray:
        """The window ``[starts:stops]``; the chunks it touches are computed together first."""
        import itertools

        from xtstream.data.tile_reader import assemble, block_ranges

        wanted = list(itertools.product(*block_ranges(starts, stops, self.edges)))
        self._compute(wanted)
        # from the kept chunks, evicted only afterwards: a window over more chunks than the budget
        # holds is still computed once
        out = assemble(starts, stops, self.edges, self._kept.__getitem__, np.dtype(self.array.dtype))
        for coords in wanted:
            self._kept.move_to_end(coords)
        self._evict()
        return out

    def read_view(self, starts: tuple[int, ...], stops: tuple[int, ...]) -> np.ndarray:
        """Like :meth:`read`, but a window inside one chunk comes back as a read-only view of it
        (no copy): cutting regions from a view, not from an assembled copy, was what kept a dask
        source at half the speed of the same source read by windows. On a miss the chunk's whole
        row of chunks is computed in one call (in parallel, as :meth:`read` of a full-width window
        does) when that row fits the budget."""
        import itertools

        from xtstream.data.tile_reader import block_ranges

        wanted = list(itertools.product(*block_ranges(starts, stops, self.edges)))
        if len(wanted) != 1:
            return self.read(starts, stops)
        coords = wanted[0]
        if coords not in self._kept:
            self._compute(self._row_of(coords))
        data = self._kept[coords]
        self._kept.move_to_end(coords)
        # its bottom-right corner: row-major reading is done with it
        if stops[-2] >= self.edges[-2][coords[-2] + 1] and stops[-1] >= self.edges[-1][coords[-1] + 1]:
            self._bytes -= self._kept.pop(coords).nbytes
        self._evict()
        view = data[tuple(slice(a - int(e[i]), b - int(e[i])) for a, b, e, i in zip(starts, stops, self.edges, coords))]
        view.flags.writeable = False
        return view

    def _row_of(self, coords: tuple[int, ...]) -> list[tuple[int, ...]]:
        """``coords`` and the chunks after it along the last axis, as many as fit
        :data:`READ_AHEAD_BYTES` (and the budget)."""
        # bytes of one column of the row: every axis but the last at this chunk's size
        column = np.dtype(self.array.dtype).itemsize * int(np.prod(
            [e[i + 1] - e[i] for e, i in zip(self.edges[:-1], coords[:-1])]))
        widths = np.diff(self.edges[-1])[coords[-1]:]
        ahead = min(self.max_bytes, READ_AHEAD_BYTES)
        fits = max(1, int(np.searchsorted(np.cumsum(widths) * column, ahead, side="right")))
        return [(*coords[:-1], j) for j in range(coords[-1], coords[-1] + fits)]


class SourceWindows:
    """Windows of any raster source (:mod:`xtstream.data.sources`); window sources read directly,
    dask-backed ones through a :class:`BlockCache` (each source chunk computed once)."""

    def __init__(self, source: Any, tile: int = 2048, cache_bytes: int = SOURCE_CACHE_BYTES):
        from xtstream.data.sources import WindowedSource, open_source

        self.source = open_source(source)
        self.scene_id = str(getattr(self.source, "scene_id", None) or Path(str(self.source.name)).name.split(".")[0])
        from xtstream.data.georef import to_wkt, transform_list

        self.georef = {"crs": to_wkt(getattr(self.source, "crs", None)),
                       "transform": transform_list(getattr(self.source, "transform", None))}
        if isinstance(self.source, WindowedSource):
            self.shape, self.dtype = tuple(self.source.shape), np.dtype(self.source.dtype)
            self.bands = [str(b) for b in self.source.band_names]
            self.tiles = (tile, tile)
            self._array = None
        else:
            arr = self.source.to_dataarray(chunks=tile)
            if arr.dims != ("band", "y", "x"):
                raise SourceError(f"{self.source.name}: dims {arr.dims}, expected (band, y, x)")
            self.shape, self.dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
            self.bands = [str(b) for b in arr["band"].values]
            self.tiles = tuple(int(c) for c in arr.data.chunksize[1:])
            self._array = arr.data
        self.cache_bytes = cache_bytes
        self._blocks: BlockCache | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_blocks": None}  # computed chunks stay in the process that made them

    def plan_for(self, region: int) -> None:
        """Ask a dask source for chunks one ``region`` high when a row of its chunks is over the
        cache budget: row-major regions then take every pixel computed once, from one chunk at a
        time, in memory that does not grow with the scene. A source that does not take ``(y, x)``
        chunk sides (or ignores them) keeps its chunks; :class:`BlockCache` says what that costs."""
        if self._array is None or self.tiles[0] <= region:
            return
        row = self.shape[0] * self.tiles[0] * self.shape[2] * self.dtype.itemsize
        if row <= self.cache_bytes:
            return
        try:
            arr = self.source.to_dataarray(chunks=(region, self.tiles[1]))
        except (TypeError, ValueError):  # a source written for one chunk side
            return
        tiles = tuple(int(c) for c in arr.data.chunksize[1:])
        if tuple(int(s) for s in arr.shape) == self.shape and tiles[0] <= region:
            self._array, self.tiles, self._blocks = arr.data, tiles, None

    @property
    def cuts_chunks(self) -> bool:
        """True when reads are cut from computed source chunks (a dask-backed source): blocks
        inside one chunk are then views (:meth:`read_block`), so :func:`iter_regions` plans them so."""
        return self._array is not None

    def read_window(self, window: Window) -> np.ndarray:
        """``(bands, h, w)`` pixels of ``window`` (inside the scene)."""
        if self._array is None:
            return np.asarray(self.source.read_window(window))
        return self._cache().read((0, window.y0, window.x0), (self.shape[0], window.y1, window.x1))

    def read_block(self, window: Window) -> np.ndarray:
        """Like :meth:`read_window`, possibly a read-only view of a computed source chunk."""
        if self._array is None:
            return self.read_window(window)
        return self._cache().read_view((0, window.y0, window.x0), (self.shape[0], window.y1, window.x1))

    def _cache(self) -> BlockCache:
        if self._blocks is None:
            self._blocks = BlockCache(self._array, str(self.source.name), self.cache_bytes)
        return self._blocks


def open_windows(source: Any) -> ZarrWindows | SourceWindows:
    """A window reader for a scene store path (fast zarr path) or anything :func:`open_source` takes."""
    from xtstream.data.store import read_status

    if isinstance(source, (ZarrWindows, SourceWindows)):
        return source
    if isinstance(source, (str, Path)) and read_status(source).ours:
        return ZarrWindows(source)
    return SourceWindows(source)


def iter_regions(reader: ZarrWindows | SourceWindows, grid: RegionGrid, start: int = 0,
                 stop: int | None = None, *, labels: Any = None,
                 max_read_bytes: int = DEFAULT_MAX_READ_BYTES, scene_id: str | None = None) -> Iterator[RegionSample]:
    """Regions ``start .. stop - 1`` of a scene in row-major order, zero-padded to ``(bands, R, R)``.

    ``labels``: one scene's labels (from a task's ``read_labels``, with a ``region_targets(grid,
    index)`` method) to attach targets and objects.
    """
    limit_arenas()
    stop = len(grid) if stop is None else stop
    scene_id = scene_id or reader.scene_id
    check_block_bytes(getattr(reader, "path", None) or scene_id, "region", grid.region, reader.shape[0],
                      reader.dtype, (grid.height, grid.width), error=SourceError)
    pixel_bytes = reader.shape[0] * reader.dtype.itemsize
    read = reader.read_window
    if getattr(reader, "cuts_chunks", False):
        reader.plan_for(grid.region)
        # blocks no wider than a chunk: each is a view of one computed chunk, not an assembled copy
        max_read_bytes = min(max_read_bytes, grid.region * reader.tiles[1] * pixel_bytes)
        read = reader.read_block
    for block in plan_reads(grid, reader.tiles, pixel_bytes, max_read_bytes):
        if block.stop <= start or block.start >= stop:
            continue
        data = read(block.window)
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


