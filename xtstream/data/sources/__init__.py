"""Raster sources: anything giant and multi-band, as a lazy dask-backed ``(band, y, x)`` DataArray.

:func:`open_source` picks the right source for a path or an in-memory object; plug in your own
by implementing :class:`RasterSource` or subclassing :class:`WindowedSource`. Plain images (PNG,
JPEG, …), directories and CSV lists of them: :mod:`xtstream.data.sources.images`
(:func:`expand_sources` turns those into one source per image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from xtstream.errors import SourceError
from xtstream.data.specs import DatasetSpec, load_spec
from xtstream.data.sources.base import (DEFAULT_CHUNK, RasterSource, WindowedSource, build_dataarray, chunk_sides,
                                        source_fingerprint)
from xtstream.data.sources.geotiff import TIFF_SUFFIXES, GeoTIFFSource, path_name, is_remote
from xtstream.data.sources.images import (IMAGE_SUFFIXES, ImageRef, ImageSource, expand_sources,
                                          is_image_dir, is_image_list, list_images)
from xtstream.data.sources.memory import ArraySource
from xtstream.data.sources.zarr_store import ZarrSource

__all__ = ["RasterSource", "WindowedSource", "GeoTIFFSource", "ImageSource", "ImageRef", "ZarrSource",
           "ArraySource", "open_source", "expand_sources", "list_images", "scene_files", "build_dataarray", "chunk_sides",
           "DEFAULT_CHUNK", "IMAGE_SUFFIXES", "TIFF_SUFFIXES", "is_image_dir", "is_image_list", "source_fingerprint",
           "is_remote"]


def open_source(src: Any, spec: str | Path | DatasetSpec | None = None,
                bands: Sequence[str] | None = None, channels: int | None = None) -> RasterSource:
    """A :class:`RasterSource` for ``src``.

    ``src`` may be a GeoTIFF file, a scene directory of band files (named by ``spec``, or every
    GeoTIFF in it, sorted), an image file of any other format GDAL reads (PNG, JPEG…; an
    :class:`ImageSource`, scene id = file stem) or its :class:`ImageRef`, a Zarr store, a
    numpy/dask array, an :class:`xarray.DataArray`, or already a source. ``bands`` selects spec
    bands by name; ``channels`` (1 or 3) converts an image's grey/RGB bands.
    """
    if isinstance(src, ImageRef):
        return ImageSource(src.path, scene_id=src.scene_id, channels=channels or src.channels,
                           band_names=_spec_names(spec, bands))
    if isinstance(src, (RasterSource, WindowedSource)) and not isinstance(src, (str, Path)):
        return src
    if isinstance(src, (np.ndarray, xr.DataArray)) or hasattr(src, "dask"):
        return ArraySource(src, band_names=bands)
    if not isinstance(src, (str, Path)):
        raise SourceError(f"cannot open {type(src).__name__} as a raster source")
    spec = load_spec(spec) if spec is not None else None
    if spec is not None:
        spec = spec.select(list(bands) if bands else None)
    if is_remote(src):  # a GDAL network path or URL: one raster file, read by GDAL
        return GeoTIFFSource([str(src)], _one_file_names(spec, str(src)), dtype=spec.dtype if spec else None)
    path = Path(src)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return ZarrSource(path)
    if path.is_dir():
        if spec is None and is_image_dir(path):
            raise SourceError(f"{path}: a directory of {len(list_images(path))} image files, each one scene, "
                              "not one raster: pass it to xtstream predict / ingest / stream_scenes, or "
                              "open its images one by one (xtstream.data.sources.expand_sources)")
        files, names, resample = scene_files(path, spec, required=bands)
        return GeoTIFFSource(files, names, resample=resample, dtype=spec.dtype if spec else None)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return GeoTIFFSource([path], _one_file_names(spec, path.name), dtype=spec.dtype if spec else None)
    if path.suffix.lower() == ".csv":
        raise SourceError(f"{path}: a CSV is a list of images (one scene per row), not one raster: pass it "
                          "to xtstream predict / ingest / stream_scenes (xtstream.data.sources.expand_sources)")
    return ImageSource(path, channels=channels, band_names=_spec_names(spec, None))


def _one_file_names(spec: DatasetSpec | None, path: str) -> list[str] | None:
    """Band names a spec gives one raster file: its one band, or the bands that all name this file
    (``red``, ``green``, ``blue`` of ``RGB.tif``, in the file's band order); else ``None``."""
    if spec is None:
        return None
    name = path_name(path)
    if len(spec.bands) == 1 or all(b.file == name for b in spec.bands):
        return [b.name for b in spec.bands]
    return None


def _spec_names(spec: str | Path | DatasetSpec | None, bands: Sequence[str] | None) -> list[str] | None:
    """An image's band names from a spec (its ``bands`` selection), so that the spec's
    normalisation applies to them by name; ``None`` without a spec."""
    if spec is None:
        return None
    return [b.name for b in load_spec(spec).select(list(bands) if bands else None).bands]


def scene_files(directory: Path, spec: DatasetSpec | None, required: Sequence[str] | None = None
                ) -> tuple[list[Path], list[str] | None, list]:
    """Band files of a scene directory: ``(paths, band names, resampling per file)``.

    A band the spec marks ``optional`` whose file is missing is left out (the raster has the
    other bands), unless ``required`` names it."""
    if spec is None:
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise SourceError(f"{directory}: no GeoTIFF files in this scene directory")
        return files, None, [None] * len(files)
    files, names, resample = [], [], []
    for band in spec.bands:
        path = directory / band.file
        if not path.exists():
            if band.optional and band.name not in (required or ()):
                continue
            raise SourceError(f"{path}: band '{band.name}' of spec '{spec.name}' is missing")
        names.append(band.name)
        if files and files[-1] == path:
            continue  # consecutive bands naming one file: the bands of a multi-band file, in its order
        files.append(path)
        resample.append(band.resample)
    return files, names, resample
