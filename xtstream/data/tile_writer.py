"""Write whole Zarr v3 chunks of a local array directly: encode with the array's own codecs, write
the chunk file, atomically.

Why: zarr-python 3 spends ~2.5 ms of CPU per chunk written through ``array[...] = block`` (its
async machinery, not the codecs: an uncompressed write costs the same), which was a quarter of
streaming prediction's time on CPU — five maps per region. A chunk written here is the same file
zarr writes (``bytes`` little-endian → optional ``zstd`` or ``blosc`` → optional ``crc32c``, as
the array's ``zarr.json`` says; tests compare the bytes), for ~0.3 ms. Anything else — another
codec, a sharded or non-local array — is refused by :func:`tile_writer`, which then returns
``None`` so callers keep zarr's path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xtstream._runtime.atomic import replacing

_SUPPORTED = {"bytes", "zstd", "blosc", "crc32c"}


@dataclass(frozen=True)
class TileWriter:
    """Writes whole chunks of the array at ``root`` (``.../var``): ``write((i, j), block)``."""

    root: Path
    dtype: np.dtype
    chunk_shape: tuple[int, ...]
    fill_value: Any
    separator: str
    encode: Callable[[bytes], bytes]

    def key_path(self, coords: Sequence[int]) -> Path:
        """The chunk file of chunk ``coords`` (``var/c/i/j`` with the default key encoding)."""
        return self.root / ("c" + "".join(f"{self.separator}{int(c)}" for c in coords))

    def write(self, coords: Sequence[int], block: np.ndarray) -> None:
        """Write chunk ``coords``; ``block`` may be smaller than a chunk at the array's edges (the rest
        is the fill value, as zarr stores edge chunks)."""
        block = np.asarray(block)
        if block.shape != self.chunk_shape:
            if len(block.shape) != len(self.chunk_shape) or any(b > c for b, c in zip(block.shape, self.chunk_shape)):
                raise ValueError(f"{self.root}: block {block.shape} does not fit chunks of {self.chunk_shape}")
            full = np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        data = self.encode(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        path = self.key_path(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a reader sees the old chunk or the new one; a full disk keeps no half-written chunk
        with replacing(path, f".{os.getpid()}.partial") as tmp:
            tmp.write_bytes(data)


def tile_writer(array_dir: str | Path) -> TileWriter | None:
    """A :class:`TileWriter` for the Zarr v3 array in ``array_dir`` (its ``zarr.json``), or ``None``
    when its layout or codecs are not ones this module writes (zarr's own path must be used)."""
    root = Path(array_dir)
    try:
        meta = json.loads((root / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
        return None
    grid, keys = meta.get("chunk_grid") or {}, meta.get("chunk_key_encoding") or {}
    if grid.get("name") != "regular" or keys.get("name") != "default":
        return None
    codecs = [c if isinstance(c, dict) else {"name": c} for c in meta.get("codecs") or []]
    names = [c.get("name") for c in codecs]
    if not names or names[0] != "bytes" or not set(names) <= _SUPPORTED:
        return None
    try:
        dtype = np.dtype(meta["data_type"])
    except TypeError:
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    steps = []
    for c in codecs[1:]:
        step = _codec(c)
        if step is None:
            return None
        steps.append(step)
    fill = meta.get("fill_value")
    fill = np.nan if fill == "NaN" else fill

    def encode(raw: bytes) -> bytes:
        for step in steps:
            raw = step(raw)
        return raw

    sep = (keys.get("configuration") or {}).get("separator", "/")
    return TileWriter(root, dtype, tuple(int(n) for n in grid["configuration"]["chunk_shape"]), fill, sep, encode)


def _codec(c: dict) -> Callable[[bytes], bytes] | None:
    """One bytes → bytes codec as zarr-python applies it (the same numcodecs calls), or ``None``."""
    conf = c.get("configuration") or {}
    if c["name"] == "zstd":
        from numcodecs import Zstd

        z = Zstd(level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False)))
        return lambda raw: bytes(z.encode(raw))
    if c["name"] == "crc32c":
        from xtstream.data.store import crc32c

        return lambda raw: raw + crc32c(raw)
    if c["name"] == "blosc":
        from numcodecs import Blosc

        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        if conf.get("shuffle") not in shuffle:
            return None
        b = Blosc(cname=conf.get("cname", "zstd"), clevel=int(conf.get("clevel", 5)),
                  shuffle=shuffle[conf["shuffle"]], blocksize=int(conf.get("blocksize", 0)))
        typesize = int(conf.get("typesize", 1))
        # numcodecs' Blosc takes the element size from the buffer's itemsize, as zarr passes it
        return lambda raw: bytes(b.encode(np.frombuffer(raw, dtype=f"V{typesize}" if typesize > 1 else np.uint8)))
    return None
