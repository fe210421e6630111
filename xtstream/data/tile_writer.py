"""Write whole Zarr v3 chunks of a local array directly: encode with the array's own codecs, write
the chunk file, atomically.

Why: zarr-python 3 spends ~2.5 ms of CPU per chunk written through ``array[...] = block`` (its
async machinery, not the codecs: an uncompressed write costs the same), which was a quarter of
streaming prediction's time on CPU — five maps per region. A chunk written here is the same file
zarr writes (:mod:`~xtstream.data.chunk_codecs`; tests compare the bytes), for ~0.3 ms. Any other
layout is refused by :func:`tile_writer`, which then returns ``None`` so callers keep zarr's path.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xtstream._runtime.atomic import replacing
from xtstream._runtime.direct_io import write_direct
from xtstream._runtime.scratch import thread_array
from xtstream.data.chunk_codecs import ChunkLayout, chunk_layout


@dataclass(frozen=True)
class TileWriter:
    """Writes whole chunks of one array (its :class:`ChunkLayout`): ``write((i, j), block)``."""

    layout: ChunkLayout
    encode: Callable[[Any], list[Any]]  # ChunkLayout.part_encoder
    direct: bool = False  # chunk files written past the page cache where possible (direct_io)

    def key_path(self, coords: Sequence[int]) -> Path:
        """The chunk file of chunk ``coords`` (``var/c/i/j`` with the default key encoding)."""
        return self.layout.key_path(coords)

    def write(self, coords: Sequence[int], block: np.ndarray) -> None:
        """Write chunk ``coords``; ``block`` may be smaller than a chunk at the array's edges (the rest
        is the fill value, as zarr stores edge chunks)."""
        lay = self.layout
        block = np.asarray(block)
        if block.shape != lay.chunk_shape:
            if len(block.shape) != len(lay.chunk_shape) or any(b > c for b, c in zip(block.shape, lay.chunk_shape)):
                raise ValueError(f"{lay.root}: block {block.shape} does not fit chunks of {lay.chunk_shape}")
            block = _padded(block, lay.chunk_shape, lay.dtype, lay.fill_value)
        # the array itself, not .tobytes(): a tile-sized copy fewer
        parts = self.encode(np.ascontiguousarray(block, dtype=lay.dtype))
        path = self.key_path(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a reader sees the old chunk or the new one; a full disk keeps no half-written chunk.
        # (per thread: two threads writing one chunk never share a temporary file)
        with replacing(path, f".{os.getpid()}-{threading.get_ident()}.partial") as tmp:
            if not (self.direct and write_direct(tmp, parts)):
                with open(tmp, "wb") as f:
                    for part in parts:
                        f.write(part)


def _padded(block: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, fill: Any) -> np.ndarray:
    """``block`` in the corner of a chunk of ``shape`` whose rest is ``fill``, in a buffer this
    thread keeps (:func:`~xtstream._runtime.scratch.thread_array`; valid until its next edge chunk
    of that dtype). Why kept: a fresh tile-sized array each edge tile was faulted in anew — 40-60 ms
    for a 2,048² two-band tile on this VM, against a few ms to refill a kept one."""
    buf = thread_array(("tile-pad", np.dtype(dtype).str), shape, dtype)
    buf[fill_margins(buf, block.shape, fill)] = block
    return buf


def fill_margins(buf: np.ndarray, corner: tuple[int, ...], fill: Any) -> tuple[slice, ...]:
    """Set every element of ``buf`` outside its leading ``corner``-shaped block to ``fill`` (each
    margin once, the corner untouched); return the corner's index."""
    inner: list[slice] = []
    for n in corner:
        buf[(*inner, slice(n, None))] = fill
        inner.append(slice(0, n))
    return tuple(inner)


def tile_writer(array_dir: str | Path, *, direct: bool = False) -> TileWriter | None:
    """A :class:`TileWriter` for the Zarr v3 array in ``array_dir`` (its ``zarr.json``), or ``None``
    when its layout or codecs are not ones this module writes (zarr's own path must be used).
    ``direct``: write the chunk files with ``O_DIRECT`` where the file system takes it
    (:func:`~xtstream._runtime.direct_io.write_direct`) — for bulk output not read back soon."""
    layout = chunk_layout(array_dir)
    encode = layout.part_encoder() if layout is not None else None
    if encode is None:
        return None
    return TileWriter(layout, encode, direct)
