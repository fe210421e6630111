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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from xtstream.data.ledger import DONE_DIR
from xtstream.errors import IncompleteStoreError, StoreError

STORE_FORMAT = "xtstream-scene/1"
IMAGE_VAR = "image"


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
    if not meta.is_file():
        return StoreStatus(path, True, False, False, {})
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return StoreStatus(path, True, False, False, {})
    info = (doc.get("attributes") or {}).get("xtstream")
    if not isinstance(info, dict) or info.get("format") != STORE_FORMAT:
        return StoreStatus(path, True, False, False, {})
    return StoreStatus(path, True, True, bool(info.get("complete")), info)


def open_store(path: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a scene store lazily as an :class:`xarray.Dataset` with ``image`` ``(band, y, x)``.

    Raises :class:`~xtstream.errors.IncompleteStoreError` if its ingest has not finished
    (rerun ``xtstream ingest`` to resume it) and :class:`~xtstream.errors.StoreError` if the path
    is not an xtstream scene store.
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
    ds = xr.open_zarr(path, consolidated=False, zarr_format=3, decode_coords="all",
                      mask_and_scale=False)
    if IMAGE_VAR not in ds or ds[IMAGE_VAR].dims != ("band", "y", "x"):
        raise StoreError(f"{path}: scene store has no '{IMAGE_VAR}' variable with dims (band, y, x)")
    return ds




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
