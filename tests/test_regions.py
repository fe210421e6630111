"""Nested-tokenization grid: coverage, padding, order, round trip (property-based)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xtstream.data.grid import RegionGrid, Window, assemble_regions, chunk_ranges, extract_region

sizes = st.integers(min_value=1, max_value=200)
regions = st.integers(min_value=4, max_value=64)
tiny_regions = st.integers(min_value=1, max_value=64)


@given(h=sizes, w=sizes, r=regions)
def test_every_pixel_is_covered_exactly_once(h, w, r):
    _check_coverage(h, w, r)


@given(h=st.integers(1, 40), w=st.integers(1, 40), r=tiny_regions)
def test_coverage_with_tiny_regions(h, w, r):
    _check_coverage(h, w, r)


def _check_coverage(h, w, r):
    grid = RegionGrid(h, w, r)
    count = np.zeros((h, w), dtype=np.int32)
    for i in range(len(grid)):
        ys, xs = grid.valid_window(i).slices()
        count[ys, xs] += 1
    assert (count == 1).all()
    assert len(grid) == -(-h // r) * -(-w // r)


@given(h=sizes, w=sizes, r=regions)
def test_padding_lies_only_outside_the_image(h, w, r):
    grid = RegionGrid(h, w, r)
    image = np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w)  # no zero inside the image
    for i in range(len(grid)):
        block = extract_region(image, grid, i)
        assert block.shape == (r, r)
        win, valid = grid.window(i), grid.valid_window(i)
        assert (block[: valid.height, : valid.width] != 0).all()
        padding = np.ones((r, r), bool)
        padding[: valid.height, : valid.width] = False
        assert (block[padding] == 0).all()
        # padding exists only where the full window reaches past the image
        assert padding.any() == (win.y1 > h or win.x1 > w)


@given(h=sizes, w=sizes, r=regions)
def test_order_is_row_major(h, w, r):
    grid = RegionGrid(h, w, r)
    windows = [grid.window(i) for i in range(len(grid))]
    assert windows == sorted(windows, key=lambda win: (win.y0, win.x0))
    for i in range(len(grid)):
        row, col = grid.position(i)
        assert grid.index(row, col) == i
        assert grid.window(i)[:2] == (row * r, col * r)
    assert (grid.positions() == np.array([grid.position(i) for i in range(len(grid))])).all()


@given(h=sizes, w=sizes, r=regions, bands=st.integers(1, 3))
@settings(max_examples=50)
def test_regions_round_trip_to_the_image(h, w, r, bands):
    grid = RegionGrid(h, w, r)
    image = np.random.default_rng(h * 1000 + w).standard_normal((bands, h, w)).astype(np.float32)
    tiles = [extract_region(image, grid, i) for i in range(len(grid))]
    assert np.array_equal(assemble_regions(tiles, grid), image)


@given(h=sizes, w=sizes, r=regions, y=st.integers(0, 199), x=st.integers(0, 199))
def test_region_of_pixel_holds_the_pixel(h, w, r, y, x):
    grid = RegionGrid(h, w, r)
    y, x = y % h, x % w
    y0, x0, y1, x1 = grid.valid_window(grid.region_of_pixel(y, x))
    assert y0 <= y < y1 and x0 <= x < x1


@given(h=sizes, w=sizes, r=regions, y0=st.integers(-20, 200), x0=st.integers(-20, 200),
       dh=st.integers(0, 120), dw=st.integers(0, 120))
def test_regions_overlapping_a_window(h, w, r, y0, x0, dh, dw):
    grid = RegionGrid(h, w, r)
    window = Window(y0, x0, y0 + dh, x0 + dw)
    cy0, cy1 = max(window.y0, 0), min(window.y1, h)
    cx0, cx1 = max(window.x0, 0), min(window.x1, w)
    nonempty = cy0 < cy1 and cx0 < cx1
    expected = [i for i in range(len(grid))
                if nonempty and (v := grid.valid_window(i)).y0 < min(window.y1, h) and max(window.y0, 0) < v.y1
                and v.x0 < min(window.x1, w) and max(window.x0, 0) < v.x1]
    assert grid.regions_overlapping(window) == expected


@given(n=st.integers(0, 500), size=st.integers(1, 64))
def test_context_chunks_partition_in_order(n, size):
    chunks = chunk_ranges(n, size)
    assert [i for c in chunks for i in c] == list(range(n))
    assert all(len(c) == size for c in chunks[:-1])
    assert not chunks or 1 <= len(chunks[-1]) <= size


def test_non_square_example_from_the_paper_setup():
    # a 4096/512 setup is 8 x 8 regions; a non-multiple, non-square scene pads right and bottom
    assert RegionGrid(4096, 4096, 512).shape == (8, 8)
    grid = RegionGrid(29400, 24400, 512)
    assert grid.shape == (58, 48)
    assert grid.padding == (58 * 512 - 29400, 48 * 512 - 24400)
    assert grid.valid_window(len(grid) - 1) == Window(57 * 512, 47 * 512, 29400, 24400)


@pytest.mark.parametrize("bad", [dict(height=0, width=5, region=2), dict(height=5, width=5, region=0),
                                 dict(height=5.5, width=5, region=2)])
def test_bad_grids_are_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        RegionGrid(**bad)


def test_out_of_range_indices_are_refused():
    grid = RegionGrid(10, 10, 4)
    with pytest.raises(IndexError):
        grid.window(9)
    with pytest.raises(IndexError):
        grid.index(3, 0)
    with pytest.raises(IndexError):
        grid.region_of_pixel(10, 0)


@given(rows=st.integers(1, 30), cols=st.integers(1, 30), order=st.sampled_from(["row_major", "column_major", "snake"]))
def test_region_orders_visit_every_region_once(rows, cols, order):
    from xtstream.data.grid import region_order

    seq = region_order(rows, cols, order)
    assert sorted(seq.tolist()) == list(range(rows * cols))
    r, c = np.divmod(seq, cols)
    steps = np.abs(np.diff(r)) + np.abs(np.diff(c))
    if order == "snake":  # consecutive regions always touch: what a causal reader carries is next door
        assert (steps == 1).all()
    elif order == "column_major":  # down a column, then the top of the next one
        assert (np.diff(c) >= 0).all() and ((np.diff(r) == 1) | (np.diff(c) == 1)).all()
    else:
        assert seq.tolist() == list(range(rows * cols))


def test_unknown_region_order_is_refused():
    from xtstream.data.grid import region_order

    with pytest.raises(ValueError, match="unknown region order 'zigzag'"):
        region_order(2, 2, "zigzag")
