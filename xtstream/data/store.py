"""The scene store: one Zarr v3 group per scene, written by :mod:`xtstream.data.ingest`.

Layout (plain xarray-readable, ``xarray.open_zarr(STORE)`` works)::

    STORE.zarr/
      zarr.json                 group attrs: {"xtstream": {format, complete, scene_id, ...}}
      image/                    (band, y, x) array, the scene at full size, chunks (band, N, N)
      band/ y/ x/ spatial_ref/  coordinates (y/x only when georeferenced), CRS as grid mapping
      _xtstream_done/           per-chunk done-markers (:mod:`xtstream.data.ledger`), only while an ingest runs

A store is *complete* only once every chunk is written and the group attribute
``xtstream.complete`` is set to true, which the ingest does last. :func:`open_store` refuses
anything else, so a half-written store is never mistaken for a finished one.

Integrity. Stores written since attribute ``all_tiles`` exists hold a file for every tile of
``image`` (even one equal to the fill value), so a missing file is a lost tile, and their tiles
end in a crc32c checksum (Zarr v3's ``crc32c`` codec, after the compressor). Reads go through
:class:`CheckedStore`, which refuses a missing tile, a tile failing its checksum and (for older
stores without checksums) a blosc tile whose header disagrees with its length — the truncation that
crashed blosc's decoder — with a :class:`~xtstream.errors.StoreError` naming the store, the variable
and the tile, before any decoder sees the bytes. Opening also lists the tiles once
(:func:`missing_tiles`), so a hole is reported before a long job starts, not in its middle.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from xtstream._runtime.lock import LOCK_FILE, holds_only_lock
from xtstream.data.ledger import DONE_DIR
from xtstream.errors import IncompleteStoreError, StoreError

STORE_FORMAT = "xtstream-scene/1"
#: present while an ingest lays out a new store (group, arrays, coordinates): a store killed then
#: is half a template, started over by the next ingest, never mistaken for someone else's
TEMPLATE_MARK = "_xtstream_template"
# a store being written holds these files at its root (a killed ingest leaves them): not zarr nodes
NOT_NODES = rf"Object at ({re.escape(LOCK_FILE)}|{TEMPLATE_MARK}) is not recognized"
warnings.filterwarnings("ignore", message=NOT_NODES)
IMAGE_VAR = "image"
#: ``(band, y, x)`` uint8 beside a normalised image: 1 where the source held data (see normalize.valid_mask)
VALID_VAR = "valid"


@dataclass(frozen=True)
class StoreStatus:
    """What is at a path: ``exists``, ``ours`` (an xtstream scene store), ``complete``."""

    path: Path
    exists: bool
    ours: bool
    complete: bool
    attrs: dict


def read_status(path: str | Path) -> StoreStatus:
    """Inspect ``path`` without opening arrays. Never raises for a missing path."""
    path = Path(path)
    meta = path / "zarr.json"
    if not path.exists():
        return StoreStatus(path, False, False, False, {})
    if (path / TEMPLATE_MARK).is_file():  # an ingest died laying it out: ours, nothing written yet
        return StoreStatus(path, True, True, False, {})
    if not meta.is_file():
        # a directory holding only a lock file is an ingest that has not started writing yet
        exists = not (path.is_dir() and holds_only_lock(path))
        return StoreStatus(path, exists, False, False, {})
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return StoreStatus(path, True, False, False, {})
    info = (doc.get("attributes") or {}).get("xtstream")
    if not isinstance(info, dict) or info.get("format") != STORE_FORMAT:
        return StoreStatus(path, True, False, False, {})
    if "crc32c" in info and info["crc32c"] != attrs_crc(info):
        raise StoreError(f"{path}: its attributes (zarr.json: scene id, bands, georeference…) fail their crc32c "
                         "checksum (a damaged byte); ingest the scene again (--overwrite)")
    return StoreStatus(path, True, True, bool(info.get("complete")), info)


#: attributes a store changes after its layout (status, not identity): outside its checksum
STATUS_KEYS = ("complete", "completed", "repaired", "crc32c")


def attrs_crc(info: dict[str, Any]) -> str:
    """crc32c (8 hex digits) of a store's ``xtstream`` attributes but :data:`STATUS_KEYS`, as JSON
    with sorted keys (what the store holds reads back to the same text)."""
    import google_crc32c

    body = {k: v for k, v in info.items() if k not in STATUS_KEYS}
    return f"{google_crc32c.value(json.dumps(body, sort_keys=True).encode()):08x}"


def seal_attrs(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as JSON gives it back, with its :func:`attrs_crc` (a flip in a scene id or a
    georeference is then detected, not carried into shards and predictions)."""
    info = json.loads(json.dumps(info, default=_plain))
    return {**info, "crc32c": attrs_crc(info)}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def open_store(path: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a scene store lazily as an :class:`xarray.Dataset` with ``image`` ``(band, y, x)``.

    Raises :class:`~xtstream.errors.IncompleteStoreError` if its ingest has not finished
    (rerun ``xtstream ingest`` to resume it) and :class:`~xtstream.errors.StoreError` if the path
    is not an xtstream scene store or a tile file of a complete store is missing. Reading a tile
    that is missing, corrupt or truncated raises :class:`~xtstream.errors.StoreError` naming it.
    """
    status = read_status(path)
    if not status.exists:
        raise StoreError(f"{path}: no such scene store")
    if not status.ours:
        raise StoreError(f"{path}: not an xtstream scene store (no '{STORE_FORMAT}' attributes)")
    if not status.complete and not allow_incomplete:
        raise IncompleteStoreError(
            f"{path}: incomplete scene store (its ingest did not finish); "
            "rerun `xtstream ingest` with the same arguments to resume it")
    if status.complete:
        check_tiles(path)
    ds = xr.open_zarr(checked_store(path), consolidated=False, zarr_format=3, decode_coords="all",
                      mask_and_scale=False)
    if IMAGE_VAR not in ds or ds[IMAGE_VAR].dims != ("band", "y", "x"):
        raise StoreError(f"{path}: scene store has no '{IMAGE_VAR}' variable with dims (band, y, x)")
    return ds


@dataclass(frozen=True)
class TileCheck:
    """What can be checked of one array's tiles (Zarr chunks) before they are decoded.

    ``prefix``: the store keys of its tiles (``"image/c/"``); ``all_written``: every tile has a
    file, so a missing one is lost, not fill; ``checksum``: tiles end in a crc32c; ``blosc``: the
    compressor is blosc (its 16-byte header states the compressed length).
    """

    store: str
    var: str
    prefix: str
    all_written: bool
    checksum: bool
    blosc: bool

    def missing(self, key: str) -> StoreError:
        return StoreError(f"{self.store}: variable '{self.var}': tile {key} is missing (its file was "
                          "deleted or never written); rerun `xtstream ingest` with the same arguments to "
                          "write it again")

    def check(self, key: str, data: bytes) -> None:
        """Raise :class:`StoreError` naming the tile unless ``data`` is whole (as far as the codecs tell)."""
        if self.checksum:
            if len(data) < 4 or crc32c(memoryview(data)[:-4]) != bytes(data[-4:]):
                raise StoreError(f"{self.store}: variable '{self.var}': tile {key} fails its crc32c checksum "
                                 f"({len(data)} bytes: corrupt or truncated file); rerun `xtstream ingest` "
                                 "with the same arguments and --verify to write it again")
        elif self.blosc:
            stated = int.from_bytes(data[12:16], "little") if len(data) >= 16 else None
            if stated != len(data):
                raise StoreError(f"{self.store}: variable '{self.var}': tile {key} is truncated or corrupt "
                                 f"(its blosc header states {stated} bytes, the file has {len(data)})")


class CheckedStore(LocalStore):
    """A read-only :class:`zarr.storage.LocalStore` that hands zarr only whole tiles of ``image``
    (see :class:`TileCheck`); everything else reads as from a plain ``LocalStore``."""

    def __init__(self, root: Path | str, *, read_only: bool = True, tiles: TileCheck | None = None) -> None:
        super().__init__(root, read_only=read_only)
        self.tiles = tiles

    def with_read_only(self, read_only: bool = False) -> "CheckedStore":
        return type(self)(self.root, read_only=read_only, tiles=self.tiles)

    def read_tile(self, key: str) -> bytes | None:
        """The file of tile ``key`` (``image/c/0/i/j``), checked (:class:`TileCheck`); ``None`` for a
        tile without a file in a store from before ``all_tiles`` (it reads as the fill value)."""
        try:
            data = (self.root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if self.tiles.all_written:
                raise self.tiles.missing(key) from None
            return None  # a store from before all_tiles: a tile equal to the fill value had no file
        self.tiles.check(key, data)
        return data

    def _is_tile(self, key: str, byte_range: Any) -> bool:
        return self.tiles is not None and byte_range is None and key.startswith(self.tiles.prefix)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if not self._is_tile(key, byte_range):
            return await super().get(key, prototype, byte_range)
        if not self._is_open:
            await self._open()
        data = await asyncio.to_thread(self.read_tile, key)
        return None if data is None else (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
        if not self._is_tile(key, byte_range):
            return super().get_sync(key, prototype=prototype, byte_range=byte_range)
        self._ensure_open_sync()
        data = self.read_tile(key)
        return None if data is None else (prototype or default_buffer_prototype()).buffer.from_bytes(data)


def consolidate(path: str | Path) -> None:
    """Write the group's consolidated metadata (Zarr v3: into its root ``zarr.json``), so that
    ``xarray.open_zarr(path)`` opens it in one read and without a warning. Written once a store is
    finished: its arrays' metadata do not change after that (status lives in the group's own
    attributes, which are not part of the consolidated copy)."""
    import zarr

    with warnings.catch_warnings():
        # zarr notes that v3 consolidation is an extension of the spec; zarr and xarray read it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(Path(path), zarr_format=3)


def tile_check(path: str | Path, var: str = IMAGE_VAR) -> TileCheck:
    """The :class:`TileCheck` of variable ``var`` of the store at ``path`` (from its metadata)."""
    path = Path(path)
    meta = _array_meta(path, var)
    names = [c.get("name") if isinstance(c, dict) else c for c in meta.get("codecs") or []]
    sep = ((meta.get("chunk_key_encoding") or {}).get("configuration") or {}).get("separator", "/")
    return TileCheck(str(path), var, f"{var}/c{sep}", bool(read_status(path).attrs.get("all_tiles")),
                     "crc32c" in names, "blosc" in names)


def checked_store(path: str | Path) -> CheckedStore:
    """A :class:`CheckedStore` over the scene store at ``path``, for zarr or xarray to open."""
    return CheckedStore(Path(path), read_only=True, tiles=tile_check(path))


def tile_keys(path: str | Path, var: str = IMAGE_VAR) -> list[str]:
    """The keys every tile of ``var`` has (``image/c/0/i/j``), from the array's shape and chunks."""
    meta = _array_meta(Path(path), var)
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    sep = ((meta.get("chunk_key_encoding") or {}).get("configuration") or {}).get("separator", "/")
    counts = [-(-int(n) // int(c)) for n, c in zip(meta["shape"], chunks)]
    keys = [""]
    for n in counts:
        keys = [f"{k}{sep}{i}" for k in keys for i in range(n)]
    return [f"{var}/c{k}" for k in keys]


def missing_tiles(path: str | Path, var: str = IMAGE_VAR) -> list[str]:
    """Tiles of ``var`` without a file (one directory listing); empty for stores from before
    ``all_tiles``, whose absent tiles may legitimately be fill."""
    path = Path(path)
    if not read_status(path).attrs.get("all_tiles"):
        return []
    present = set()
    root = path / var / "c"
    for dirpath, _, files in os.walk(root):
        rel = Path(dirpath).relative_to(path).as_posix()
        present.update(f"{rel}/{f}" for f in files)
    return [k for k in tile_keys(path, var) if k not in present]


def check_tiles(path: str | Path, var: str = IMAGE_VAR) -> None:
    """Raise :class:`StoreError` naming the first missing tiles of a store, if any."""
    lost = missing_tiles(path, var)
    if lost:
        more = f" and {len(lost) - 4} more" if len(lost) > 4 else ""
        raise StoreError(f"{path}: variable '{var}': tile(s) {', '.join(lost[:4])}{more} missing (files "
                         "deleted?); rerun `xtstream ingest` with the same arguments to write them again")


def crc32c(*parts: Any) -> bytes:
    """The crc32c of the bytes of ``parts`` one after the other (bytes-like objects, arrays), as the
    4 little-endian bytes Zarr's ``crc32c`` codec appends."""
    extend = _crc32c_extend()
    crc = 0
    for part in parts:  # a uint8 view, not a copy: the C extension takes arrays but refuses memoryviews
        data = np.frombuffer(part, np.uint8)
        crc = extend(crc, data.ctypes.data, data.nbytes) if extend is not None else _google_crc32c().extend(crc, data)
    return crc.to_bytes(4, "little")


def _google_crc32c() -> Any:
    import google_crc32c  # zarr's own crc32c backend (hardware crc32c: ~10 GB/s)

    return google_crc32c


@functools.lru_cache(maxsize=None)
def _crc32c_extend() -> Any:
    """google-crc32c's C function ``crc32c_extend`` called through ctypes, which releases the GIL
    around it, or ``None`` (then its Python extension is used). Why: that extension keeps the GIL
    unless handed ``bytes`` of 1 MiB or more, and a tile's checksum (2-3 ms for 24 MB) then stopped
    every other ingest thread."""
    try:
        ext = importlib.import_module("google_crc32c._crc32c")
        fn = ctypes.CDLL(ext.__file__).crc32c_extend  # from the library the extension links
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    return fn


def _array_meta(path: Path, var: str) -> dict:
    try:
        return json.loads((path / var / "zarr.json").read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: cannot read the metadata of variable '{var}' ({err})") from None


def describe_store(path: str | Path) -> str:
    """A few lines saying where a store is and what it holds."""
    path = Path(path)
    ds = open_store(path, allow_incomplete=True)
    info = read_status(path).attrs
    image = ds[IMAGE_VAR]
    on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raw = image.size * image.dtype.itemsize
    crs = image.rio.crs if "spatial_ref" in ds.coords else None
    return "\n".join([
        f"{path}  ({'complete' if info.get('complete') else 'INCOMPLETE'})",
        f"  scene {info.get('scene_id')}: image {dict(image.sizes)} {image.dtype}, "
        f"bands {[str(b) for b in ds['band'].values]}",
        f"  chunks {image.data.chunksize}, codec {info.get('codec')}, "
        f"{on_disk / 2**20:.1f} MiB on disk ({raw / max(on_disk, 1):.2f}x compression)",
        f"  crs {crs.to_string() if crs else None}, source {info.get('source_paths')}",
    ])
