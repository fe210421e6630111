"""GeoTIFF sources: one file, or several aligned single-/multi-band files as one raster.

Thread safety: every :meth:`GeoTIFFSource.read_window` call opens its own rasterio dataset and
closes it before returning, so no ``DatasetReader`` is ever shared between threads or processes
and no lock is needed (GDAL is thread-safe across separate handles). Opening costs ~1 ms against
tens of ms to decode a 2048² chunk. GDAL's block cache is capped per read (``GDAL_CACHEMAX``) so
its default of 5 % of RAM cannot inflate a worker's memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from xtstream.errors import SourceError
from xtstream.data.grid import Window
from xtstream.data.sources.base import WindowedSource

GDAL_CACHE_MB = 64
TIFF_SUFFIXES = (".tif", ".tiff")
# no directory listing on open: for a remote file GDAL would otherwise request the folder's index
_ENV = {"GDAL_CACHEMAX": GDAL_CACHE_MB, "GDAL_NUM_THREADS": 1, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: URL schemes rasterio hands to GDAL's network file systems (``s3://`` → ``/vsis3/``, …)
REMOTE_SCHEMES = ("http", "https", "s3", "gs", "az", "azure", "oss", "ftp")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a GDAL virtual path (``/vsicurl/…``, ``/vsis3/…``, any ``/vsi…/``) or a URL
    rasterio opens through one (``https://``, ``s3://``, ``gs://``, …): read by GDAL, never ``stat``-ed.
    """
    text = os.fspath(path)
    if text.startswith("/vsi"):
        return True
    m = _SCHEME.match(text)
    return bool(m) and m.group(1).lower() in REMOTE_SCHEMES


def path_name(path: str) -> str:
    """The last component of a local path, a ``/vsi…/`` path or a URL (query string dropped)."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class _BandFile:
    """One file's part of the raster: its path, bands, and how its grid maps onto the reference."""

    def __init__(self, path: Path, names: list[str], height: int, width: int, count: int,
                 dtype: np.dtype, nodata: float | None, resample: Resampling | None, warp: bool = False):
        self.path, self.names, self.count = path, names, count
        self.height, self.width, self.dtype, self.nodata = height, width, dtype, nodata
        # resample: same bounds, another size (windows scaled); warp: another CRS or footprint,
        # reprojected onto the reference grid through a WarpedVRT
        self.resample, self.warp = resample, warp


class GeoTIFFSource(WindowedSource):
    """Several aligned GeoTIFF files read as one ``(band, y, x)`` raster.

    Parameters
    ----------
    paths
        The files, in band order (one path alone: that file). A multi-band file contributes all
        its bands.
    band_names
        One name per band (default: file stem, with ``_1``, ``_2``… for multi-band files).
    resample
        Files whose pixel grid differs from the first file's but which cover the same bounds in
        the same CRS (xView3's lower-resolution ancillary bands) are read resampled onto the
        first file's grid: ``"bilinear"``, ``"nearest"``… (one method, or one per file).
        Files in another CRS, or with another footprint or pixel grid, are *warped* onto the first
        file's grid on read (a ``rasterio.vrt.WarpedVRT`` with that method; pixels outside a
        file's footprint are its nodata, 0 without one). ``None`` (default) refuses both: an
        alignment is always asked for, never assumed.
    dtype
        Output dtype (default: the common dtype of the files).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], band_names: Sequence[str] | None = None,
                 *, resample: str | Sequence[str | None] | None = None,
                 dtype: str | np.dtype | None = None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]  # a str is a sequence too: of one-letter "files"
        if not paths:
            raise SourceError("GeoTIFFSource: no files given")
        # remote paths stay strings as given: a Path would fold a URL's "//"
        self.paths = [os.fspath(p) if is_remote(p) else os.path.abspath(p) for p in paths]
        per_file = [resample] * len(self.paths) if resample is None or isinstance(resample, str) else list(resample)
        if len(per_file) != len(self.paths):
            raise SourceError(f"{self.paths}: {len(per_file)} resampling methods for {len(self.paths)} files")
        files, ref = [], None
        for path, resample in zip([p if is_remote(p) else Path(p) for p in self.paths], per_file):
            meta = _inspect(path)
            if ref is None:
                ref = meta
                self.crs, self.transform = meta["crs"], meta["transform"]
            mismatch = _grid_mismatch(ref, meta)
            if mismatch and not resample:
                hint = ("align lower-resolution bands" if mismatch == "shape" else
                        f"warp it onto {path_name(str(ref['path']))}'s grid (reprojected on read)")
                raise SourceError(f"{path}: {_describe(mismatch, ref, meta)}, unlike {ref['path']} (pass "
                                  f"resample='bilinear', or give the spec band a resample, to {hint})")
            if mismatch in ("crs", "transform", "bounds") and (ref["crs"] is None or meta["crs"] is None):
                raise SourceError(f"{path}: {_describe(mismatch, ref, meta)}, unlike {ref['path']}, and one of "
                                  "them has no CRS: it cannot be warped onto the other's grid")
            stem = path_name(str(path)).split(".")[0]
            names = [stem] if meta["count"] == 1 else [f"{stem}_{i + 1}" for i in range(meta["count"])]
            files.append(_BandFile(path, names, meta["height"], meta["width"], meta["count"],
                                   meta["dtype"], meta["nodata"],
                                   Resampling[resample] if mismatch else None, warp=mismatch not in (None, "shape")))
        self._files = files
        total = sum(f.count for f in files)
        default_names = [n for f in files for n in f.names]
        self.band_names = list(band_names) if band_names is not None else default_names
        if len(self.band_names) != total:
            raise SourceError(f"{self.paths}: {total} bands but {len(self.band_names)} names {self.band_names}")
        self.shape = (total, ref["height"], ref["width"])
        self.dtype = np.dtype(dtype) if dtype is not None else np.result_type(*[f.dtype for f in files])
        self.nodata = [f.nodata for f in files for _ in range(f.count)]
        self.name = (self.paths[0] if len(self.paths) == 1 or any(map(is_remote, self.paths))
                     else os.path.commonpath(self.paths))
        for f in files:
            _probe(f)

    #: every read_window call returns a new array nothing else holds (an ingest normalises it in place)
    fresh_windows = True
    #: read_window takes ``out=``: an ingest reads each tile into a buffer its thread keeps
    reads_into = True

    def read_window(self, window: Window, out: np.ndarray | None = None) -> np.ndarray:
        """Pixels of ``window`` as ``(bands, h, w)`` of ``self.dtype``: a new array, or ``out``
        (that shape and dtype, writable; a view into a larger array is fine: GDAL writes with
        its strides) read into and returned."""
        shape = (self.shape[0], window.height, window.width)
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.writeable:
            raise ValueError(f"{self.name}: out= must be a writable {shape} {self.dtype} array, "
                             f"got {out.shape} {out.dtype}")
        band = 0
        for f in self._files:
            part = out[band: band + f.count]
            got = self._read_file(f, window, part)
            if got is not part:
                part[...] = got
            band += f.count
        return out

    def _read_file(self, f: _BandFile, window: Window, out: np.ndarray) -> np.ndarray:
        """File ``f``'s bands of ``window``: read straight into ``out`` where GDAL can (same
        dtype, no resampling: no temporary, no copy), else returned for the caller to copy."""
        try:
            with rasterio.Env(**_ENV), rasterio.open(f.path, sharing=False) as ds:
                if f.warp:
                    return self._read_warped(ds, f, window)
                if f.resample is None:
                    rio_window = RioWindow(window.x0, window.y0, window.width, window.height)
                    if f.dtype == self.dtype:
                        return ds.read(window=rio_window, out=out)
                    return ds.read(window=rio_window, out_dtype=self.dtype)
                sy, sx = f.height / self.shape[1], f.width / self.shape[2]
                src = RioWindow(window.x0 * sx, window.y0 * sy, window.width * sx, window.height * sy)
                return ds.read(window=src, out_shape=(f.count, window.height, window.width),
                               resampling=f.resample, out_dtype=self.dtype)
        except RasterioError as err:
            raise SourceError(f"{f.path}: cannot read window {tuple(window)}: {err}") from err


    def _read_warped(self, ds, f: _BandFile, window: Window) -> np.ndarray:
        """``window`` of file ``f`` reprojected onto the reference grid (this source's CRS,
        transform and size); outside the file's footprint: its nodata (0 without one)."""
        from rasterio.vrt import WarpedVRT

        _, height, width = self.shape
        with WarpedVRT(ds, crs=self.crs, transform=self.transform, width=width, height=height,
                       resampling=f.resample) as vrt:
            return vrt.read(window=RioWindow(window.x0, window.y0, window.width, window.height),
                            out_dtype=self.dtype)


def _inspect(path: Path | str) -> dict:
    if not is_remote(path) and not Path(path).exists():
        raise SourceError(f"{path}: no such file")
    try:
        with rasterio.Env(**_ENV), rasterio.open(path) as ds:
            dtypes = set(ds.dtypes)
            if len(dtypes) != 1:
                raise SourceError(f"{path}: bands of different dtypes {sorted(dtypes)}")
            nodata = ds.nodata
            return {"path": path, "height": ds.height, "width": ds.width, "count": ds.count,
                    "dtype": np.dtype(ds.dtypes[0]), "crs": ds.crs, "transform": ds.transform,
                    "bounds": tuple(ds.bounds),
                    "nodata": None if nodata is None else float(nodata)}
    except RasterioError as err:
        raise SourceError(f"{path}: not a readable raster: {err}") from err


def _grid_mismatch(ref: dict, meta: dict) -> str | None:
    if ref["crs"] != meta["crs"]:
        return "crs"
    if (ref["height"], ref["width"]) == (meta["height"], meta["width"]):
        if not ref["transform"].almost_equals(meta["transform"], precision=1e-9):
            return "transform"
        return None
    # different shape: acceptable for resampling only if both cover the same bounds
    px = max(abs(ref["transform"].a), abs(ref["transform"].e)) or 1.0
    if all(abs(a - b) < 0.5 * px for a, b in zip(ref["bounds"], meta["bounds"])):
        return "shape"
    return "bounds"


def _describe(kind: str, ref: dict, meta: dict) -> str:
    if kind == "crs":
        return f"CRS {meta['crs']} differs from {ref['crs']}"
    if kind == "transform":
        return "georeferencing (transform) differs"
    if kind == "shape":
        return f"shape {meta['height']}x{meta['width']} differs from {ref['height']}x{ref['width']}"
    return (f"shape {meta['height']}x{meta['width']} and bounds {meta['bounds']} differ from "
            f"{ref['height']}x{ref['width']} {ref['bounds']}")


def _probe(f: _BandFile) -> None:
    """Decode the first and last block now, so a corrupt file fails here, naming itself."""
    try:
        with rasterio.Env(**_ENV), rasterio.open(f.path, sharing=False) as ds:
            ds.read(1, window=RioWindow(0, 0, 1, 1))
            ds.read(ds.count, window=RioWindow(f.width - 1, f.height - 1, 1, 1))
    except RasterioError as err:
        raise SourceError(f"{f.path}: opens but cannot be decoded (corrupt?): {err}") from err
