"""Dask-backed sources stream with each source chunk computed once (BlockCache), values unchanged."""

from __future__ import annotations

import threading
import warnings

import dask.array as da
import numpy as np
import pytest

from xtstream.data.grid import RegionGrid
from xtstream.data.sources.base import build_dataarray
from xtstream.data.windows import BlockCache, SourceWindows, iter_regions


class CountingSource:
    """A RasterSource whose chunks are computed by a function that counts its calls per chunk."""

    name = "counting"

    def __init__(self, height: int, width: int, bands: int = 2):
        self.shape = (bands, height, width)
        self.calls: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def to_dataarray(self, chunks: int = 2048):
        bands, h, w = self.shape

        def block(block_info=None):
            (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
            with self._lock:
                self.calls[(y0, x0)] = self.calls.get((y0, x0), 0) + 1
            y = np.arange(y0, y1, dtype="f4")[None, :, None]
            x = np.arange(x0, x1, dtype="f4")[None, None, :]
            return np.arange(bands, dtype="f4")[:, None, None] * 1e6 + y * 1000 + x

        sizes = [(bands,), *[tuple(min(chunks, n - i) for i in range(0, n, chunks)) for n in (h, w)]]
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
    with pytest.warns(UserWarning, match=r"counting: source chunks of 128x128 px are computed again.*chunks as high.*xtstream ingest"):
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
    view = cache.read_view((0, 32, 40), (2, 64, 64))
    np.testing.assert_array_equal(view, whole[:, 32:64, 40:64])
    assert np.shares_memory(view, cache._kept[(0, 1, 1)]) and not view.flags.writeable
    # its whole row of chunks came in the same call, and is read from without computing again
    assert set(cache._kept) == {(0, 1, 1), (0, 1, 2)}
    across = cache.read_view((0, 10, 20), (2, 40, 50))  # four chunks: assembled, as read() does
    np.testing.assert_array_equal(across, whole[:, 10:40, 20:50])
    assert across.flags.writeable
