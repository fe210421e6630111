"""In-memory and xarray sources: numpy, dask or xarray arrays already in the process."""

from __future__ import annotations

from typing import Any, Sequence

import dask.array as da
import xarray as xr

from xtstream.errors import SourceError
from xtstream.data.sources.base import DEFAULT_CHUNK, build_dataarray, chunk_sides


class ArraySource:
    """A ``(band, y, x)`` or ``(y, x)`` numpy/dask array, or an :class:`xarray.DataArray`.

    A DataArray keeps its coordinates, attributes and CRS; its dims must be ``(band, y, x)`` or
    ``(y, x)`` (other names: rename first, e.g. ``arr.rename(lat="y", lon="x")``).
    """

    def __init__(self, array: Any, *, scene_id: str = "array", band_names: Sequence[str] | None = None,
                 nodata: Sequence[float | None] | None = None):
        self.name = scene_id
        self.scene_id = scene_id
        self._array = array
        self._band_names = band_names
        self._nodata = nodata
        if isinstance(array, xr.DataArray):
            dims = array.dims
            if dims not in (("band", "y", "x"), ("y", "x")):
                raise SourceError(f"{scene_id}: DataArray dims {dims}, expected (band, y, x) or (y, x)")
        elif getattr(array, "ndim", None) not in (2, 3):
            raise SourceError(f"{scene_id}: expected a 2-D or 3-D array, got {type(array).__name__} "
                              f"of shape {getattr(array, 'shape', '?')}")

    def to_dataarray(self, chunks: int | tuple[int, int] = DEFAULT_CHUNK) -> xr.DataArray:
        ys, xs = chunk_sides(chunks)
        array = self._array
        if isinstance(array, xr.DataArray):
            if array.dims == ("y", "x"):
                array = array.expand_dims(band=[self._band_names[0] if self._band_names else "band_1"])
            if self._band_names is not None:
                array = array.assign_coords(band=list(self._band_names))
            elif "band" not in array.coords:
                array = array.assign_coords(band=[f"band_{i + 1}" for i in range(array.sizes["band"])])
            array = array.chunk({"band": -1, "y": ys, "x": xs}).rename("image")
            array.attrs.setdefault("source", self.name)
            return array
        data = da.asarray(array)
        if data.ndim == 2:
            data = data[None]
        data = data.rechunk((data.shape[0], ys, xs))
        names = self._band_names or [f"band_{i + 1}" for i in range(data.shape[0])]
        return build_dataarray(data, names, name=self.name, nodata=self._nodata)

