"""Dask-backed sources stream with each source chunk computed once (BlockCache), values unchanged."""

from __future__ import annotations

import threading
import warnings

import dask.array as da
import numpy as np
import pytest

from xtstream.data.grid import RegionGrid
from xtstream.data.sources.base import build_dataarray, chunk_sides
from xtstream.data.windows import BlockCache, SourceWindows, iter_regions


class CountingSource:
    """A RasterSource whose chunks are computed by a function that counts its calls per chunk."""

    name = "counting"

    def __init__(self, height: int, width: int, bands: int = 2, *, sides: bool = False):
        self.shape = (bands, height, width)
        self.calls: dict[tuple[int, int], int] = {}
        self.asked: list = []
        self.sides = sides  # takes (y, x) chunk sides, as the protocol asks; else one side only
        self._lock = threading.Lock()

    def to_dataarray(self, chunks: int | tuple[int, int] = 2048):
        bands, h, w = self.shape
        self.asked.append(chunks)
        if not isinstance(chunks, int) and not self.sides:
            raise TypeError("'<' not supported between instances of 'tuple' and 'int'")
        ys, xs = chunk_sides(chunks)

        def block(block_info=None):
            (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
            with self._lock:
                self.calls[(y0, x0)] = self.calls.get((y0, x0), 0) + 1
            y = np.arange(y0, y1, dtype="f4")[None, :, None]
            x = np.arange(x0, x1, dtype="f4")[None, None, :]
            return np.arange(bands, dtype="f4")[:, None, None] * 1e6 + y * 1000 + x

        sizes = [(bands,), *[tuple(min(c, n - i) for i in range(0, n, c)) for c, n in ((ys, h), (xs, w))]]
        return build_dataarray(da.map_blocks(block, dtype="f4", chunks=sizes), ["a", "b"][:bands], name=self.name)


def _expected(src, grid, index):
    win = grid.valid_window(index)
    y = np.arange(win.y0, win.y1, dtype="f4")[:, None]
    x = np.arange(win.x0, win.x1, dtype="f4")[None, :]
    return np.arange(src.shape[0], dtype="f4")[:, None, None] * 1e6 + y * 1000 + x


def test_each_source_chunk_is_computed_once_and_regions_are_exact():
    """Issue 13: a source of 128-row chunks read in 32-px regions computed every chunk once per
    region row (4 times here; 8 times for 2,048-row chunks and 256-px regions: 7x slower)."""
    src = CountingSource(300, 260)
    reader = SourceWindows(src, tile=128)
    grid = RegionGrid(300, 260, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sample in iter_regions(reader, grid, max_read_bytes=32 * 260 * 8):
            win = grid.valid_window(sample.index)
            np.testing.assert_array_equal(sample.pixels[:, :win.height, :win.width], _expected(src, grid, sample.index))
            assert not sample.pixels[:, win.height:, :].any() and not sample.pixels[:, :, win.width:].any()
    assert len(src.calls) == 3 * 3 and set(src.calls.values()) == {1}


def test_a_budget_below_one_chunk_row_recomputes_and_says_how_to_fix_it():
    src = CountingSource(256, 256, bands=1)
    reader = SourceWindows(src, tile=128, cache_bytes=128 * 128 * 4)  # one chunk of a row of two
    grid = RegionGrid(256, 256, 32)
    with pytest.warns(UserWarning, match=r"counting: source chunks of 128x128 px are computed again.*\(y, x\) chunk "
                                         r"sides.*xtstream ingest"):
        regions = list(iter_regions(reader, grid, max_read_bytes=32 * 256 * 4))
    assert len(regions) == 64 and max(src.calls.values()) > 1
    for s in regions[::7]:
        np.testing.assert_array_equal(s.pixels, _expected(src, grid, s.index))


def test_block_cache_keeps_within_its_budget():
    arr = da.ones((1, 64, 256), chunks=(1, 64, 32), dtype="f4")
    cache = BlockCache(arr, "ones", max_bytes=3 * 64 * 32 * 4)
    np.testing.assert_array_equal(cache.read((0, 10, 5), (1, 60, 250)), np.ones((1, 50, 245), "f4"))
    assert cache._bytes <= cache.max_bytes and len(cache._kept) == 3


def test_a_window_inside_one_chunk_is_a_read_only_view_of_it_not_a_copy():
    # the assembled copy of every block was what held a dask source at half the speed of windows
    arr = da.arange(2 * 64 * 96, dtype="f4").reshape(2, 64, 96).rechunk((2, 32, 32))
    cache = BlockCache(arr, "ramp")
    whole = arr.compute()
    view = cache.read_view((0, 32, 40), (2, 48, 64))
    np.testing.assert_array_equal(view, whole[:, 32:48, 40:64])
    assert np.shares_memory(view, cache._kept[(0, 1, 1)]) and not view.flags.writeable
    # its whole row of chunks came in the same call, and is read from without computing again
    assert set(cache._kept) == {(0, 1, 1), (0, 1, 2)}
    across = cache.read_view((0, 10, 20), (2, 40, 50))  # four chunks: assembled, as read() does
    np.testing.assert_array_equal(across, whole[:, 10:40, 20:50])
    assert across.flags.writeable


def test_a_chunk_read_to_its_bottom_right_corner_is_dropped():
    # row-major reading never comes back to it: what stays kept is one row of chunks, not the budget
    arr = da.arange(64 * 96, dtype="f4").reshape(1, 64, 96).rechunk((1, 32, 32))
    cache = BlockCache(arr, "ramp")
    cache.read_view((0, 0, 0), (1, 16, 32))
    assert (0, 0, 0) in cache._kept
    last = cache.read_view((0, 16, 0), (1, 32, 32))
    np.testing.assert_array_equal(last, arr[:, 16:32, 0:32].compute())
    assert (0, 0, 0) not in cache._kept and (0, 0, 1) in cache._kept
    assert cache._bytes == sum(a.nbytes for a in cache._kept.values())


def test_a_row_of_chunks_over_the_budget_is_asked_for_again_one_region_high():
    """Issue 13: a 100,000² two-band source of 2,048² chunks (a chunk row: 1.5 GiB, over the
    512 MiB kept) computed every chunk 8 times, 5x slower than windows, its peak RSS 4.4x that of
    a 4,096² one. Asked for chunks one region high, each pixel is computed once, and what is kept
    at any time does not grow with the width."""
    kept = {}
    for width in (512, 2048):
        src = CountingSource(256, width, sides=True)
        reader = SourceWindows(src, tile=128, cache_bytes=2 * 32 * 128 * 4 * 2)  # two chunks one region high
        grid = RegionGrid(256, width, 32)
        peak = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for sample in iter_regions(reader, grid):
                peak = max(peak, reader._blocks._bytes)
                if sample.index % 13 == 0:
                    np.testing.assert_array_equal(sample.pixels, _expected(src, grid, sample.index))
        assert src.asked == [128, (32, 128)] and reader.tiles == (32, 128)
        assert len(src.calls) == (256 // 32) * (width // 128) and set(src.calls.values()) == {1}
        kept[width] = peak
    assert kept[2048] == kept[512]


def test_a_source_taking_one_chunk_side_keeps_its_chunks():
    src = CountingSource(256, 512, bands=1)
    reader = SourceWindows(src, tile=128, cache_bytes=128 * 128 * 4)
    with pytest.warns(UserWarning, match="computed again"):
        regions = list(iter_regions(reader, RegionGrid(256, 512, 32)))
    assert reader.tiles == (128, 128) and src.asked == [128, (32, 128)] and len(regions) == 8 * 16


def test_built_in_sources_take_y_x_chunk_sides(tmp_path):
    from xtstream.data.ingest import ingest
    from xtstream.data.sources import ArraySource, WindowedSource, ZarrSource

    class Ramp(WindowedSource):
        name, shape, dtype, band_names = "ramp", (2, 100, 90), np.dtype("f4"), ["a", "b"]

        def read_window(self, w):
            return np.zeros((2, w.height, w.width), "f4")

    pixels = np.arange(2 * 100 * 90, dtype="f4").reshape(2, 100, 90)
    store = ingest(ArraySource(pixels, scene_id="ramp"), tmp_path / "ramp.zarr", tile=64, progress=False)
    for src in (Ramp(), ArraySource(pixels), ArraySource(da.from_array(pixels)), ZarrSource(store)):
        arr = src.to_dataarray(chunks=(32, 48))
        assert arr.data.chunksize == (2, 32, 48), type(src).__name__
        assert src.to_dataarray(chunks=40).data.chunksize == (2, 40, 40)
