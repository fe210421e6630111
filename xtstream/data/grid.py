"""Nested tokenization: the region grid of a scene.

A scene of ``H x W`` pixels is cut into non-overlapping ``R x R`` regions laid out on a grid of
``rows x cols = ceil(H / R) x ceil(W / R)``, in row-major order. Regions on the bottom and right
edges reach past the image; those pixels are zero padding. Regions are grouped, in order, into
context chunks of ``C`` regions for the context encoder.

Everything here is pure arithmetic on integers and arrays: *where* regions are, never *what* they
hold (readers in :mod:`xtstream.data.sources` and :mod:`xtstream.data.shards` do that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

#: the most bytes one region or store tile may take in memory: readers pad, copy and decode a
#: region (writers a tile) whole, so a size typed with a digit too many must stop before allocating
MAX_BLOCK_BYTES = 2 << 30


class Window(NamedTuple):
    """A half-open pixel window ``[y0, y1) x [x0, x1)`` in scene coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RegionGrid:
    """The ``rows x cols`` grid of ``region x region`` tiles covering an ``height x width`` scene.

    >>> grid = RegionGrid(height=1000, width=600, region=256)
    >>> grid.shape, len(grid)
    ((4, 3), 12)
    >>> grid.window(5)       # row 1, col 2: reaches past the right edge (x1 = 768 > 600)
    Window(y0=256, x0=512, y1=512, x1=768)
    >>> grid.valid_window(5)  # the part inside the image
    Window(y0=256, x0=512, y1=512, x1=600)
    """

    height: int
    width: int
    region: int

    def __post_init__(self) -> None:
        for name in ("height", "width", "region"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"RegionGrid: {name} must be a positive integer, got {value!r}")

    @property
    def rows(self) -> int:
        return ceil_div(self.height, self.region)

    @property
    def cols(self) -> int:
        return ceil_div(self.width, self.region)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(rows * R, cols * R)``: the scene size once zero-padded to whole regions."""
        return self.rows * self.region, self.cols * self.region

    @property
    def padding(self) -> tuple[int, int]:
        """Zero rows added at the bottom and zero columns added at the right."""
        ph, pw = self.padded_shape
        return ph - self.height, pw - self.width

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"region index {index} outside a {self.rows}x{self.cols} grid")
        return index

    def position(self, index: int) -> tuple[int, int]:
        """Row-major index → ``(row, col)``."""
        return divmod(self._check_index(index), self.cols)

    def index(self, row: int, col: int) -> int:
        """``(row, col)`` → row-major index."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"region ({row}, {col}) outside a {self.rows}x{self.cols} grid")
        return int(row) * self.cols + int(col)

    def window(self, index: int) -> Window:
        """The full ``R x R`` window of a region; may reach past the image (padding)."""
        row, col = self.position(index)
        y0, x0 = row * self.region, col * self.region
        return Window(y0, x0, y0 + self.region, x0 + self.region)

    def valid_window(self, index: int) -> Window:
        """The part of the region's window that lies inside the image (never empty)."""
        y0, x0, y1, x1 = self.window(index)
        return Window(y0, x0, min(y1, self.height), min(x1, self.width))

    def region_of_pixel(self, y: int, x: int) -> int:
        """Index of the region holding scene pixel ``(y, x)``."""
        if not (0 <= y < self.height and 0 <= x < self.width):
            raise IndexError(f"pixel ({y}, {x}) outside a {self.height}x{self.width} scene")
        return self.index(int(y) // self.region, int(x) // self.region)

    def regions_overlapping(self, window: Window) -> list[int]:
        """Row-major indices of the regions that intersect ``window`` (clipped to the scene)."""
        y0, x0 = max(window.y0, 0), max(window.x0, 0)
        y1, x1 = min(window.y1, self.height), min(window.x1, self.width)
        if y1 <= y0 or x1 <= x0:
            return []
        r0, r1 = y0 // self.region, ceil_div(y1, self.region)
        c0, c1 = x0 // self.region, ceil_div(x1, self.region)
        return [r * self.cols + c for r in range(r0, r1) for c in range(c0, c1)]

    def positions(self) -> np.ndarray:
        """``(N, 2)`` int64 array of ``(row, col)`` for every region, row-major."""
        rr, cc = np.divmod(np.arange(len(self), dtype=np.int64), self.cols)
        return np.stack([rr, cc], axis=1)

    def chunks(self, size: int) -> list[range]:
        """Consecutive row-major index ranges of at most ``size`` regions (context chunks)."""
        return chunk_ranges(len(self), size)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "region": self.region,
                "grid": [self.rows, self.cols]}


def check_block_bytes(name: Any, what: str, side: int, bands: int, dtype: Any, scene: tuple[int, int], *,
                      error: type[Exception] = ValueError, option: str | None = None,
                      limit: int = MAX_BLOCK_BYTES) -> int:
    """Bytes of one ``(bands, side, side)`` block of ``dtype`` (a region, a tile); raise ``error``
    naming ``name`` when it exceeds ``limit`` — before anything of that size is allocated.

    >>> check_block_bytes("a.zarr", "region", 512, 3, "float32", (700, 900))
    3145728
    """
    nbytes = int(bands) * int(side) * int(side) * np.dtype(dtype).itemsize
    if nbytes > limit:
        larger = f", larger than the {scene[0]}x{scene[1]} px scene" if side > max(scene) else ""
        flag = f" ({option})" if option else ""
        raise error(f"{name}: a {side} px {what}{flag} of {bands} band(s) {np.dtype(dtype).name} takes "
                    f"{nbytes / 2**30:.1f} GiB in memory{larger}; at most {limit / 2**30:.0f} GiB is allowed: "
                    f"choose a smaller {what}")
    return nbytes


def chunk_ranges(n: int, size: int) -> list[range]:
    """Split ``range(n)`` into consecutive ranges of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [range(start, min(start + size, n)) for start in range(0, n, size)]




#: the reading orders a scene's regions can be fed to a context encoder in (see :func:`region_order`)
REGION_ORDERS = ("row_major", "column_major", "snake")


def region_order(rows: int, cols: int, order: str = "row_major") -> np.ndarray:
    """The row-major indices of a ``rows x cols`` grid's regions in reading ``order``:
    ``row_major`` (left to right, row after row: how stores and shards hold them),
    ``column_major`` (top to bottom, column after column) or ``snake`` (row-major with every
    other row read right to left, so that consecutive regions always touch).

    >>> region_order(2, 3, "snake").tolist()
    [0, 1, 2, 5, 4, 3]
    >>> region_order(2, 3, "column_major").tolist()
    [0, 3, 1, 4, 2, 5]
    """
    if order not in REGION_ORDERS:
        raise ValueError(f"unknown region order {order!r}; known: {list(REGION_ORDERS)}")
    index = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    if order == "column_major":
        return index.T.reshape(-1)
    if order == "snake":
        index[1::2] = index[1::2, ::-1]
    return index.reshape(-1)


def pad_region(block: np.ndarray, region: int) -> np.ndarray:
    """Zero-pad a ``(..., h, w)`` block at the bottom/right to ``(..., region, region)``."""
    h, w = block.shape[-2:]
    if h > region or w > region:
        raise ValueError(f"block of {h}x{w} is larger than the region {region}x{region}")
    if h == region and w == region:
        return block
    out = np.zeros(block.shape[:-2] + (region, region), dtype=block.dtype)
    out[..., :h, :w] = block
    return out


def extract_region(image: np.ndarray, grid: RegionGrid, index: int) -> np.ndarray:
    """Region ``index`` of an in-memory ``(..., H, W)`` image, zero-padded to ``(..., R, R)``."""
    if image.shape[-2:] != (grid.height, grid.width):
        raise ValueError(f"image is {image.shape[-2:]}, grid expects {(grid.height, grid.width)}")
    ys, xs = grid.valid_window(index).slices()
    return pad_region(image[..., ys, xs], grid.region)


def assemble_regions(regions: Sequence[np.ndarray] | np.ndarray, grid: RegionGrid) -> np.ndarray:
    """Inverse of tokenization: ``N`` regions ``(..., R, R)`` in row-major order → ``(..., H, W)``.

    Padding is dropped. Meant for tests and small outputs; streaming writers place one region at
    a time with :meth:`RegionGrid.valid_window` instead.
    """
    if len(regions) != len(grid):
        raise ValueError(f"got {len(regions)} regions, a {grid.rows}x{grid.cols} grid has {len(grid)}")
    first = np.asarray(regions[0])
    out = np.zeros(first.shape[:-2] + (grid.height, grid.width), dtype=first.dtype)
    for index, block in enumerate(regions):
        win = grid.valid_window(index)
        ys, xs = win.slices()
        out[..., ys, xs] = np.asarray(block)[..., : win.height, : win.width]
    return out
