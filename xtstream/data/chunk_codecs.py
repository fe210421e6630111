"""The chunk layout and codecs of a local Zarr v3 array, from its ``zarr.json``, as byte functions.

Why: zarr-python 3 spends ~1.5–2.5 ms of CPU per chunk read or written (its async machinery, not
the codecs), which on 2 cores took a fifth of streaming prediction's time and most of a DataLoader
worker's. :mod:`~xtstream.data.tile_writer` and :mod:`~xtstream.data.tile_reader` read and write
whole chunk files with the same numcodecs calls zarr makes — ``bytes`` (little- or big-endian) →
optional ``zstd`` or ``blosc`` → optional ``crc32c`` — and nothing else: another codec, sharding
or a storage transformer makes :func:`chunk_layout` return ``None`` so callers keep zarr's path.

Writing, a chunk's file is a list of parts (:meth:`ChunkLayout.part_encoder`), not one ``bytes``:
blosc compresses into a buffer the thread keeps, and the crc32c is a 4-byte part of its own. Why:
zarr's path allocates four tile-sized buffers per chunk (the compressor's output, its trimmed
copy, the crc32c codec's ``np.append`` copy, the file's bytes), each mapped and faulted in afresh;
ingesting a 2,048² two-band tile took 140-220 ms that way and 80-135 ms with the parts (one
process, 24-36 tiles, alternating runs), with 0.5 k page faults a tile instead of 6.7 k and a
peak 70 MiB lower.
"""

from __future__ import annotations

import ctypes
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xtstream._runtime.direct_io import aligned_scratch

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

    def encoder(self) -> Callable[[Any], bytes] | None:
        """Raw chunk bytes → the file's bytes (``None``: a codec configuration not handled here)."""
        encode_parts = self.part_encoder()
        if encode_parts is None:
            return None
        return lambda raw: b"".join(encode_parts(raw))

    def part_encoder(self) -> Callable[[Any], list[Any]] | None:
        """Raw chunk (any C-contiguous buffer: bytes, an array) → the file's bytes as parts to
        write in order (``None``: a codec configuration not handled here). A part may be a view of
        this thread's scratch buffer: write it before the thread encodes again."""
        steps = [_part_codec(c) for c in self.codecs]
        if any(s is None for s in steps):
            return None

        def encode(raw: Any) -> list[Any]:
            parts = [raw]
            for step in steps:
                parts = step(parts)
            return parts
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


def _part_codec(c: dict) -> Callable[[list[Any]], list[Any]] | None:
    """One bytes → bytes codec on a chunk's parts: a compressor takes them whole (joined if
    there are several) and gives one part; crc32c adds its checksum of them all as a part."""
    if c["name"] == "crc32c":
        from xtstream.data.store import crc32c

        return lambda parts: [*parts, crc32c(*parts)]
    if c["name"] == "blosc":
        params = _blosc_params(c.get("configuration") or {})
        compress = blosc_into(**params) if params is not None else None
        if compress is not None:
            return lambda parts: [compress(_whole(parts))]
    codec = _codec(c)
    if codec is None:
        return None
    encode = codec[0]
    return lambda parts: [encode(_whole(parts))]


def _whole(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def blosc_into(*, cname: str, clevel: int, shuffle: int, typesize: int, blocksize: int = 0
               ) -> Callable[[Any], memoryview] | None:
    """A blosc compressor writing into this thread's scratch buffer: buffer → a view of it, the
    same bytes as numcodecs' ``Blosc(cname, clevel, shuffle, blocksize).encode`` of the buffer as
    elements of ``typesize`` bytes outside the main thread, where zarr runs it (c-blosc's
    ``blosc_compress_ctx`` with one internal thread, what numcodecs calls there; in the main
    thread numcodecs uses blosc's global threads, whose zstd output differs).
    ``None`` where numcodecs' extension does not export c-blosc's function (then use numcodecs).

    The view stays valid until the thread uses its scratch buffer again: the buffer is
    :func:`~xtstream._runtime.direct_io.aligned_scratch`, kept for the thread's life, where a direct
    write of the chunk's file finds the compressed bytes already in place.
    """
    fn = _blosc_compress_ctx()
    if fn is None:
        return None
    name = cname.encode()

    def compress(raw: Any) -> memoryview:
        src = np.frombuffer(raw, np.uint8)
        size = src.nbytes + 16  # BLOSC_MAX_OVERHEAD: any input fits
        # the buffer a direct write assembles its file in: the compressed bytes are not copied
        dest = aligned_scratch(size)
        # destsize exactly nbytes + 16, as numcodecs gives it: with more room blosc keeps an
        # expanded (incompressible) result instead of storing the bytes as they are
        n = fn(clevel, shuffle, typesize, src.nbytes, src.ctypes.data, dest.ctypes.data, size, name, blocksize, 1)
        if n <= 0:
            raise ValueError(f"blosc ({cname}, level {clevel}) failed to compress {src.nbytes} bytes: {n}")
        return memoryview(dest)[:n]
    return compress


@functools.lru_cache(maxsize=None)
def _blosc_compress_ctx() -> Any:
    """c-blosc's ``blosc_compress_ctx`` from numcodecs' extension module (ctypes releases the GIL
    around it), or ``None``; looked up once."""
    try:
        import numcodecs.blosc

        fn = ctypes.CDLL(numcodecs.blosc.__file__).blosc_compress_ctx
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def _blosc_params(conf: dict) -> dict[str, Any] | None:
    """A ``blosc`` codec's ``zarr.json`` configuration as :func:`blosc_into`'s keywords (shuffle as
    c-blosc's number, which numcodecs' constants are too); ``None`` for a shuffle not known here."""
    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}.get(conf.get("shuffle"))
    if shuffle is None:
        return None
    return dict(cname=conf.get("cname", "zstd"), clevel=int(conf.get("clevel", 5)), shuffle=shuffle,
                typesize=int(conf.get("typesize", 1)), blocksize=int(conf.get("blocksize", 0)))


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

        params = _blosc_params(conf)
        if params is None:
            return None
        typesize = params.pop("typesize")
        b = Blosc(**params)
        # numcodecs' Blosc takes the element size from the buffer's itemsize, as zarr passes it
        return ((lambda raw: bytes(b.encode(np.frombuffer(raw, dtype=f"V{typesize}" if typesize > 1 else np.uint8)))),
                b.decode)
    return None
