"""The chunk layout and codecs of a local Zarr v3 array, from its ``zarr.json``, as byte functions.

Why: zarr-python 3 spends ~1.5–2.5 ms of CPU per chunk read or written (its async machinery, not
the codecs), which on 2 cores took a fifth of streaming prediction's time and most of a DataLoader
worker's. :mod:`~xtstream.data.tile_writer` and :mod:`~xtstream.data.tile_reader` read and write
whole chunk files with the same numcodecs calls zarr makes — ``bytes`` (little- or big-endian) →
optional ``zstd`` or ``blosc`` → optional ``crc32c`` — and nothing else: another codec, sharding
or a storage transformer makes :func:`chunk_layout` return ``None`` so callers keep zarr's path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

_SUPPORTED = {"bytes", "zstd", "blosc", "crc32c"}


@dataclass(frozen=True)
class ChunkLayout:
    """One array's chunks: ``root`` (``.../var``), element ``dtype`` (with its byte order),
    ``chunk_shape``, ``fill_value``, key ``separator`` and the ``codecs`` after ``bytes`` (their
    ``zarr.json`` entries, in encoding order)."""

    root: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    fill_value: Any
    separator: str
    codecs: tuple[dict, ...]

    def key_path(self, coords: Any) -> Path:
        """The chunk file of chunk ``coords`` (``var/c/i/j`` with the default key encoding)."""
        return self.root / self.key(coords)

    def key(self, coords: Any) -> str:
        """The chunk's key relative to the array (``c/i/j``)."""
        return "c" + "".join(f"{self.separator}{int(c)}" for c in coords)

    def encoder(self) -> Callable[[bytes], bytes] | None:
        """Raw chunk bytes → the file's bytes (``None``: a codec configuration not handled here)."""
        steps = [_codec(c) for c in self.codecs]
        if any(s is None for s in steps):
            return None

        def encode(raw: bytes) -> bytes:
            for enc, _ in steps:
                raw = enc(raw)
            return raw
        return encode

    def decoder(self) -> Callable[[bytes], Any] | None:
        """The file's bytes → the raw chunk (a bytes-like buffer); a ``crc32c`` suffix is stripped, not checked (the
        caller checks it before anything is decoded, see :class:`~xtstream.data.store.TileCheck`)."""
        steps = [_codec(c) for c in self.codecs]
        if any(s is None for s in steps):
            return None

        def decode(data: bytes) -> bytes:
            for _, dec in reversed(steps):
                data = dec(data)
            return data
        return decode


def chunk_layout(array_dir: str | Path) -> ChunkLayout | None:
    """The :class:`ChunkLayout` of the Zarr v3 array in ``array_dir``, or ``None`` when its layout or
    codecs are not ones read and written here."""
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
    fill = meta.get("fill_value")
    fill = np.nan if fill == "NaN" else fill
    sep = (keys.get("configuration") or {}).get("separator", "/")
    return ChunkLayout(root, dtype, tuple(int(n) for n in meta["shape"]),
                       tuple(int(n) for n in grid["configuration"]["chunk_shape"]), fill, sep, tuple(codecs[1:]))


def _codec(c: dict) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    """``(encode, decode)`` of one bytes → bytes codec as zarr-python applies it, or ``None``."""
    conf = c.get("configuration") or {}
    if c["name"] == "zstd":
        from numcodecs import Zstd

        z = Zstd(level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False)))
        return (lambda raw: bytes(z.encode(raw))), z.decode
    if c["name"] == "crc32c":
        from xtstream.data.store import crc32c

        return (lambda raw: raw + crc32c(raw)), (lambda data: memoryview(data)[:-4])
    if c["name"] == "blosc":
        from numcodecs import Blosc

        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        if conf.get("shuffle") not in shuffle:
            return None
        b = Blosc(cname=conf.get("cname", "zstd"), clevel=int(conf.get("clevel", 5)),
                  shuffle=shuffle[conf["shuffle"]], blocksize=int(conf.get("blocksize", 0)))
        typesize = int(conf.get("typesize", 1))
        # numcodecs' Blosc takes the element size from the buffer's itemsize, as zarr passes it
        return ((lambda raw: bytes(b.encode(np.frombuffer(raw, dtype=f"V{typesize}" if typesize > 1 else np.uint8)))),
                b.decode)
    return None
