"""The raster-source protocol: a giant multi-band raster as a lazy ``(band, y, x)`` DataArray.

Two ways to plug a source in:

* implement :class:`RasterSource` directly — ``name`` and ``to_dataarray(chunks)`` returning a
  dask-backed :class:`xarray.DataArray` with dims ``(band, y, x)``, chunked as asked (``chunks``
  is one side or ``(y, x)`` sides, :func:`chunk_sides`: streaming regions asks for chunks one
  region high when a row of square chunks would not fit its cache, so a source that honours
  the request streams every pixel once in flat memory); or
* subclass :class:`WindowedSource` and implement ``read_window`` (plus the metadata attributes);
  the base class turns window reads into a dask array, one task per chunk, so any reader that can
  cut a window out of the raster streams with bounded memory.

A source must be picklable (it travels to ``dask.distributed`` workers): hold paths and metadata,
never open file handles.

Identity. An interrupted ingest resumes only from a source it recognises as the one it started
from — in a new process, from a new instance. Sources with files are recognised by their paths,
sizes and modification times; anything else needs ``fingerprint()``: a string that stays the same
as long as the pixels do (a version, the parameters that make them) — :meth:`WindowedSource.fingerprint`
(overridable; default from ``paths``), or the same method on a :class:`RasterSource`
(:func:`source_fingerprint` reads either). Without one, resuming is refused, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Protocol, Sequence, runtime_checkable

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xtstream.errors import SourceError, XTStreamError
from xtstream.data.grid import Window

DEFAULT_CHUNK = 2048


@runtime_checkable
class RasterSource(Protocol):
    """Anything that yields a lazily evaluated ``(band, y, x)`` :class:`xarray.DataArray`.

    Optionally also ``fingerprint() -> str | None`` (see the module docstring): not part of the
    protocol's required members, so that sources written before it still qualify.
    """

    name: str

    def to_dataarray(self, chunks: int | tuple[int, int] = DEFAULT_CHUNK) -> xr.DataArray:
        """A dask-backed array with dims ``(band, y, x)``, chunked ``(bands, *chunk_sides(chunks))``."""
        ...


def chunk_sides(chunks: int | tuple[int, int]) -> tuple[int, int]:
    """``(y, x)`` chunk sides of a ``to_dataarray(chunks)`` request: one side for both, or two."""
    if isinstance(chunks, (int, np.integer)):
        return int(chunks), int(chunks)
    ys, xs = chunks
    return int(ys), int(xs)


class WindowedSource:
    """Base class for sources that can read a pixel window.

    Subclasses set ``name``, ``shape`` (bands, H, W), ``dtype``, ``band_names`` and optionally
    ``nodata`` (one value per band or None), ``crs`` (anything ``rasterio.crs.CRS`` accepts),
    ``transform`` (an ``affine.Affine``) and ``paths``; and implement :meth:`read_window`.

    Example — a source computed on the fly::

        class Gradient(WindowedSource):
            name, shape, dtype, band_names = "gradient", (1, 50_000, 50_000), np.dtype("f4"), ["g"]
            def read_window(self, window):
                y = np.arange(window.y0, window.y1, dtype="f4")[:, None]
                return np.broadcast_to(y, (1, window.height, window.width)).copy()
    """

    name: str = "<source>"
    shape: tuple[int, int, int]
    dtype: np.dtype
    band_names: Sequence[str]
    nodata: Sequence[float | None] | None = None
    crs: Any = None
    transform: Any = None
    paths: Sequence[str] = ()
    #: True when every ``read_window`` call returns a new array that nothing else holds: an
    #: ingest may then normalise it in place (a source returning views of its own memory, or
    #: cached arrays, must leave it False, the default)
    fresh_windows: bool = False
    #: True when ``read_window`` also takes ``out=``, a writable ``(bands, h, w)`` array of
    #: ``dtype`` to read into and return — possibly a strided view, the corner of a whole tile's
    #: buffer: an ingest then reads every tile into a buffer its thread keeps instead of a fresh
    #: array (:mod:`xtstream._runtime.scratch`)
    reads_into: bool = False

    def read_window(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` (inside the raster) as ``(bands, h, w)`` of ``self.dtype``."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """What identifies this raster across processes and instances: a string that changes
        whenever its pixels do; ``None`` when nothing does (then an interrupted ingest from it
        cannot be resumed). Default: a hash of ``paths`` with their sizes and modification times
        (``None`` without paths). Override it for a source without files::

            def fingerprint(self):
                return f"gradient-v1-{self.shape}"
        """
        if not self.paths:
            return None
        stamps = []
        for p in self.paths:
            try:
                st = os.stat(p)
                stamps.append([str(p), st.st_size, st.st_mtime_ns])
            except OSError:
                stamps.append([str(p), None, None])
        return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]

    def to_dataarray(self, chunks: int | tuple[int, int] = DEFAULT_CHUNK) -> xr.DataArray:
        bands, height, width = self.shape
        data = da.from_array(
            _WindowReader(self), chunks=(bands, *chunk_sides(chunks)), lock=False, asarray=True,
            fancy=False, meta=np.empty((0, 0, 0), dtype=self.dtype),
            name=f"read-{dask.base.tokenize(self.name, self.shape, str(self.dtype), chunk_sides(chunks), _identity(self))}",
        )
        return build_dataarray(data, self.band_names, name=self.name, nodata=self.nodata,
                               crs=self.crs, transform=self.transform, paths=self.paths)


def source_fingerprint(source: Any) -> str | None:
    """``source.fingerprint()`` when the source has that method, else ``None``."""
    method = getattr(source, "fingerprint", None)
    return method() if callable(method) else None


def _identity(source: WindowedSource) -> Any:
    """What makes two reads of a source the same, for dask task names: its fingerprint; without
    one, the instance (two sources must never share tasks; such a source is never resumed)."""
    fingerprint = source.fingerprint()
    return fingerprint if fingerprint is not None else ("instance", id(source))


class _WindowReader:
    """Array-like adapter so that ``dask.array.from_array`` calls ``read_window`` per chunk."""

    def __init__(self, source: WindowedSource):
        self.source = source
        self.shape = tuple(source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bsl, ysl, xsl = key
        _, height, width = self.shape
        y0, y1, _ = ysl.indices(height)
        x0, x1, _ = xsl.indices(width)
        return read_checked(self.source, Window(y0, x0, y1, x1))[bsl]


def read_checked(source: WindowedSource, window: Window, out: np.ndarray | None = None) -> np.ndarray:
    """``source.read_window(window)`` (into ``out`` where given: a source with ``reads_into``),
    its failure named by source and window, its shape checked: ``(bands, h, w)``."""
    try:
        block = source.read_window(window) if out is None else source.read_window(window, out=out)
    except (XTStreamError, OSError):  # already named (an OSError: by its file, or the command's output)
        raise
    except Exception as err:  # a plug-in's own failure: name the source and the window
        raise SourceError(f"{source.name}: read_window{tuple(window)} failed: "
                          f"{type(err).__name__}: {err}") from err
    expected = (source.shape[0], window.height, window.width)
    if block.shape != expected:
        raise SourceError(f"{source.name}: read_window returned {block.shape}, expected {expected}")
    return block


def build_dataarray(data: da.Array, band_names: Sequence[str], *, name: str, nodata=None,
                    crs=None, transform=None, paths: Sequence[str] = ()) -> xr.DataArray:
    """Wrap a ``(band, y, x)`` dask array with coordinates, CRS and provenance attributes."""
    bands, height, width = data.shape
    if len(band_names) != bands:
        raise SourceError(f"{name}: {bands} bands but {len(band_names)} band names {list(band_names)}")
    if len(set(band_names)) != len(band_names):
        raise SourceError(f"{name}: duplicate band names {list(band_names)}")
    coords: dict[str, Any] = {"band": list(band_names)}
    if transform is not None and not transform.is_identity and transform.b == 0 and transform.d == 0:
        # pixel-centre coordinates, as rioxarray writes them
        coords["x"] = transform.c + (np.arange(width) + 0.5) * transform.a
        coords["y"] = transform.f + (np.arange(height) + 0.5) * transform.e
    arr = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, name="image")
    arr.attrs["source"] = str(name)
    arr.attrs["source_paths"] = [str(p) for p in paths]
    if nodata is not None:
        arr.attrs["nodata"] = [None if v is None else float(v) for v in nodata]
    if transform is not None:
        arr.attrs["transform"] = list(transform)[:6]
    if crs is not None:
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        arr = arr.rio.write_crs(crs)
        if transform is not None:
            arr = arr.rio.write_transform(transform)
    return arr
