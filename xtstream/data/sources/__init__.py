"""Raster sources: anything giant and multi-band, as a lazy dask-backed ``(band, y, x)`` DataArray.

:func:`open_source` picks the right source for a path or an in-memory object; plug in your own
by implementing :class:`RasterSource` or subclassing :class:`WindowedSource`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from xtstream.errors import SourceError
from xtstream.data.specs import DatasetSpec, load_spec
from xtstream.data.sources.base import DEFAULT_CHUNK, RasterSource, WindowedSource, build_dataarray
from xtstream.data.sources.geotiff import GeoTIFFSource
from xtstream.data.sources.memory import ArraySource
from xtstream.data.sources.zarr_store import ZarrSource

__all__ = ["RasterSource", "WindowedSource", "GeoTIFFSource", "ZarrSource", "ArraySource",
           "open_source", "scene_files", "build_dataarray", "DEFAULT_CHUNK"]

TIFF_SUFFIXES = (".tif", ".tiff")


def open_source(src: Any, spec: str | Path | DatasetSpec | None = None,
                bands: Sequence[str] | None = None) -> RasterSource:
    """A :class:`RasterSource` for ``src``.

    ``src`` may be a GeoTIFF file, a scene directory of band files (named by ``spec``, or every
    GeoTIFF in it, sorted), a Zarr store, a numpy/dask array, an :class:`xarray.DataArray`, or
    already a source. ``bands`` selects spec bands by name.
    """
    if isinstance(src, (RasterSource, WindowedSource)) and not isinstance(src, (str, Path)):
        return src
    if isinstance(src, (np.ndarray, xr.DataArray)) or hasattr(src, "dask"):
        return ArraySource(src, band_names=bands)
    if not isinstance(src, (str, Path)):
        raise SourceError(f"cannot open {type(src).__name__} as a raster source")
    path = Path(src)
    spec = load_spec(spec) if spec is not None else None
    if spec is not None:
        spec = spec.select(list(bands) if bands else None)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return ZarrSource(path)
    if path.is_dir():
        files, names, resample = scene_files(path, spec)
        return GeoTIFFSource(files, names, resample=resample, dtype=spec.dtype if spec else None)
    if path.suffix.lower() in TIFF_SUFFIXES:
        names = [b.name for b in spec.bands] if spec and len(spec.bands) == 1 else None
        return GeoTIFFSource([path], names, dtype=spec.dtype if spec else None)
    raise SourceError(f"{path}: not a GeoTIFF, a scene directory or a Zarr store")


def scene_files(directory: Path, spec: DatasetSpec | None) -> tuple[list[Path], list[str] | None, list]:
    """Band files of a scene directory: ``(paths, band names, resampling per file)``."""
    if spec is None:
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise SourceError(f"{directory}: no GeoTIFF files in this scene directory")
        return files, None, [None] * len(files)
    files, names, resample = [], [], []
    for band in spec.bands:
        path = directory / band.file
        if not path.exists():
            if band.optional:
                continue
            raise SourceError(f"{path}: band '{band.name}' of spec '{spec.name}' is missing")
        files.append(path)
        names.append(band.name)
        resample.append(band.resample)
    return files, names, resample
