"""Zarr sources: an xtstream scene store, or any Zarr array / xarray-written Zarr variable."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
import zarr

from xtstream.errors import SourceError, StoreError
from xtstream.data.store import IMAGE_VAR, open_store, read_status
from xtstream.data.sources.base import DEFAULT_CHUNK, chunk_sides


class ZarrSource:
    """A Zarr store as a source: ``variable`` of an xarray-style group, or a bare Zarr array.

    An xtstream scene store is opened through :func:`xtstream.data.store.open_store`, so an incomplete
    one is refused.
    """

    def __init__(self, path: str | Path, variable: str = IMAGE_VAR):
        self.path = Path(path)
        self.name = str(self.path)
        self.variable = variable
        if not (self.path / "zarr.json").is_file() and not (self.path / ".zarray").is_file() \
                and not (self.path / ".zgroup").is_file():
            raise SourceError(f"{self.path}: not a Zarr store (no zarr.json)")

    def to_dataarray(self, chunks: int | tuple[int, int] = DEFAULT_CHUNK) -> xr.DataArray:
        if read_status(self.path).ours:
            try:
                arr = open_store(self.path)[IMAGE_VAR]
            except StoreError as err:
                raise SourceError(str(err)) from err
        else:
            node = zarr.open(self.path, mode="r")
            if isinstance(node, zarr.Array):
                arr = xr.DataArray(_as_dask(node), dims=_dims(node.ndim, self.path))
            else:
                try:
                    ds = xr.open_zarr(self.path, consolidated=False, decode_coords="all")
                except Exception as err:  # noqa: BLE001 - re-raised naming the store
                    raise SourceError(f"{self.path}: cannot open as an xarray dataset: {err}") from err
                if self.variable not in ds:
                    raise SourceError(f"{self.path}: no variable '{self.variable}' (has {list(ds.data_vars)})")
                arr = ds[self.variable]
            if arr.ndim == 2:
                arr = arr.expand_dims(band=["band_1"])
            if len(arr.dims) != 3:
                raise SourceError(f"{self.path}: variable has dims {arr.dims}, expected (band, y, x)")
            arr = arr.rename(dict(zip(arr.dims, ("band", "y", "x"))))
            if "band" not in arr.coords:
                arr = arr.assign_coords(band=[f"band_{i + 1}" for i in range(arr.sizes["band"])])
        ys, xs = chunk_sides(chunks)
        arr = arr.chunk({"band": -1, "y": ys, "x": xs}).rename("image")
        arr.attrs["source"] = self.name
        arr.attrs["source_paths"] = [self.name]
        return arr


def _as_dask(node: "zarr.Array"):
    import dask.array as da

    return da.from_zarr(node)


def _dims(ndim: int, path: Path) -> tuple[str, ...]:
    if ndim == 2:
        return ("y", "x")
    if ndim == 3:
        return ("band", "y", "x")
    raise SourceError(f"{path}: a {ndim}-D Zarr array; expected (band, y, x) or (y, x)")
