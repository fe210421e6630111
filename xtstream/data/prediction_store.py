"""Prediction stores: a model's dense outputs for one scene, as a georeferenced Zarr v3 group.

Layout (``xarray.open_zarr(PATH, decode_coords="all")`` gives the maps with their CRS)::

    SCENE.zarr/
      zarr.json          group attrs: {"xtstream": {format, complete, scene_id, stride, region, ...}}
      vessel/ centre/ …  (y, x) float32 maps, one cell per ``stride x stride`` scene pixels,
                         chunked one region per chunk, NaN where nothing was written
      y/ x/ spatial_ref/ cell-centre coordinates and the CRS (CF grid mapping), when georeferenced

Outputs are written region by region (:meth:`PredictionStore.write_region`): a region's cells
are exactly one chunk, so every write is a whole chunk — no read-modify-write, nothing
scene-sized in memory. Like scene stores, a prediction store is complete only once
:meth:`PredictionStore.mark_complete` has set ``xtstream.complete``; a store left by an
interrupted run is never taken for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from xtstream._runtime.atomic import replacing
from xtstream.data.georef import Georef
from xtstream.data.grid import RegionGrid, Window, ceil_div
from xtstream.data.tile_writer import tile_writer
from xtstream.data.store import consolidate
from xtstream.errors import StoreError

PREDICTION_FORMAT = "xtstream-prediction/1"


def output_shape(grid: RegionGrid, stride: int) -> tuple[int, int]:
    """Cells ``(H', W')`` of a scene's output maps at ``stride``: every cell that covers a scene pixel."""
    return ceil_div(grid.height, stride), ceil_div(grid.width, stride)


def region_cells(grid: RegionGrid, index: int, stride: int) -> Window:
    """The cells of region ``index`` inside the output maps (edge regions: only those on the scene)."""
    h, w = output_shape(grid, stride)
    cell = grid.region // stride
    r, c = grid.position(index)
    return Window(r * cell, c * cell, min((r + 1) * cell, h), min((c + 1) * cell, w))


def prediction_status(path: str | Path) -> tuple[bool, bool, dict]:
    """``(ours, complete, attrs)`` of what is at ``path`` (``(False, False, {})`` if nothing is)."""
    meta = Path(path) / "zarr.json"
    try:
        info = (json.loads(meta.read_text()).get("attributes") or {}).get("xtstream")
    except (OSError, ValueError):
        return False, False, {}
    if not isinstance(info, dict) or info.get("format") != PREDICTION_FORMAT:
        return False, False, {}
    return True, bool(info.get("complete")), info


class PredictionStore:
    """One scene's output maps ``{name: (H', W')}`` at an output stride (see the module docstring)."""

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        ours, _, info = prediction_status(self.path)
        if not ours:
            raise StoreError(f"{self.path}: not an xtstream prediction store")
        self.info = info
        self.grid = RegionGrid(*info["scene_shape"], info["region"])
        self.stride = int(info["stride"])
        self.names = list(info["variables"])
        group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self._arrays = {name: group[name] for name in self.names}
        # whole chunks written straight to their files (same bytes, a tenth of zarr's CPU per
        # chunk; see tile_writer); None: zarr writes them
        self._tiles = {name: tile_writer(self.path / name) for name in self.names}

    @classmethod
    def create(cls, path: str | Path, scene_id: str, grid: RegionGrid, stride: int,
               variables: Mapping[str, Mapping[str, Any]], *, georef: Georef | None = None,
               attrs: Mapping[str, Any] | None = None, level: int = 5) -> "PredictionStore":
        """Create an empty store (replacing an unfinished prediction store at ``path``; anything
        else there is refused). ``variables``: ``{name: attrs}`` (e.g. ``long_name``, ``units``)."""
        import dask.array as da
        import rioxarray  # noqa: F401 - registers the .rio accessor used below
        import xarray as xr
        import zarr

        path = Path(path)
        if path.exists():
            ours, complete, _ = prediction_status(path)
            if not ours:
                raise StoreError(f"{path}: exists and is not an xtstream prediction store; "
                                 "move it away or choose another output directory")
            shutil.rmtree(path)
        if grid.region % stride:
            raise StoreError(f"output stride {stride} does not divide the region size {grid.region}")
        shape, cell = output_shape(grid, stride), grid.region // stride
        georef = (georef or Georef()).scaled(stride)
        coords: dict[str, Any] = {}
        t = georef.transform
        if t is not None and t[1] == 0 and t[3] == 0:  # axis-aligned: 1-D cell-centre coordinates
            coords["y"] = ("y", t[5] + (np.arange(shape[0]) + 0.5) * t[4])
            coords["x"] = ("x", t[2] + (np.arange(shape[1]) + 0.5) * t[0])
        # one dask chunk: nothing is computed (compute=False), and a task per zarr chunk made a
        # graph of 55,000 tasks for a 30,000² scene (+200 MiB, 9 s) just to write the metadata
        lazy = da.full(shape, np.nan, dtype=np.float32, chunks=shape)
        ds = xr.Dataset({name: (("y", "x"), lazy, dict(a)) for name, a in variables.items()}, coords=coords)
        if georef.crs is not None:
            ds = ds.rio.write_crs(georef.crs)
            if t is not None:
                from affine import Affine

                ds = ds.rio.write_transform(Affine(*t))
        for name in variables:
            # blosc-lz4 with byte shuffle: on these float maps half the CPU of zstd-3 at a better
            # ratio (1.36 vs 1.20), and a write runs beside the model on the same cores; crc32c
            # after the compressor, as scene stores: plain zarr readers detect a damaged tile
            blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=level, shuffle="shuffle", typesize=4)
            ds[name].encoding.update(chunks=(cell, cell), fill_value=np.float32("nan"),
                                     compressors=[blosc, zarr.codecs.Crc32cCodec()])
        ds.attrs = {"xtstream": {"format": PREDICTION_FORMAT, "complete": False, "scene_id": scene_id,
                                 "scene_shape": [grid.height, grid.width], "region": grid.region,
                                 "stride": stride, "variables": list(variables),
                                 "crs": georef.crs, "transform": list(t) if t is not None else None,
                                 **dict(attrs or {})}}
        # laid out beside and renamed into place whole: a kill mid-way leaves no half store under
        # the real name (which a rerun would have to refuse as not ours)
        for old in path.parent.glob(f".{path.name}.*.tmp"):  # of killed runs
            shutil.rmtree(old, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        ds.to_zarr(tmp, mode="w-", compute=False, zarr_format=3, consolidated=False)
        os.replace(tmp, path)
        return cls(path)

    @property
    def shape(self) -> tuple[int, int]:
        return output_shape(self.grid, self.stride)

    def write_region(self, index: int, maps: Mapping[str, np.ndarray]) -> None:
        """Write region ``index``'s maps ``{name: (R / s, R / s)}`` (its padding is cut off)."""
        win = region_cells(self.grid, index, self.stride)
        cell = self.grid.region // self.stride  # one region per chunk
        for name in self.names:
            block = np.asarray(maps[name], dtype=np.float32)[:win.height, :win.width]
            tiles = self._tiles[name]
            if tiles is not None:
                tiles.write((win.y0 // cell, win.x0 // cell), block)
            else:
                self._arrays[name][win.y0:win.y1, win.x0:win.x1] = block

    def read(self, name: str, window: Window) -> np.ndarray:
        """``(h, w)`` cells of map ``name`` in ``window`` (cell coordinates, inside the maps)."""
        return np.asarray(self._arrays[name][window.y0:window.y1, window.x0:window.x1])

    def windows(self, cells: int | None = None) -> Iterator[Window]:
        """Row-major tiles of ``cells`` x ``cells`` (default: one chunk) covering the maps."""
        cells = cells or self.grid.region // self.stride
        h, w = self.shape
        for y in range(0, h, cells):
            for x in range(0, w, cells):
                yield Window(y, x, min(y + cells, h), min(x + cells, w))

    def mark_complete(self, **extra: Any) -> None:
        """Flag the store finished (what :func:`prediction_status` and resumed runs trust)."""
        import zarr

        group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        info = {**dict(group.attrs["xtstream"]), **extra, "complete": True}
        group.attrs["xtstream"] = info
        consolidate(self.path)
        self.info = info

    def to_geotiff(self, path: str | Path, names: Sequence[str] | None = None, *, block: int = 256) -> Path:
        """Export maps as one tiled, DEFLATE-compressed multi-band GeoTIFF, written window by window
        (``NAME.tif.partial`` renamed when finished); band descriptions are the map names."""
        import rasterio
        from affine import Affine

        names = list(names or self.names)
        path = Path(path)
        h, w = self.shape
        profile = {"driver": "GTiff", "height": h, "width": w, "count": len(names), "dtype": "float32",
                   "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
                   "predictor": 3, "nodata": float("nan"), "BIGTIFF": "IF_SAFER"}
        if self.info.get("crs"):
            profile["crs"] = rasterio.crs.CRS.from_wkt(self.info["crs"])
        if self.info.get("transform"):
            profile["transform"] = Affine(*self.info["transform"])
        with replacing(path, ".partial") as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                for k, name in enumerate(names, start=1):
                    dst.set_band_description(k, name)
                for win in self.windows(block):
                    data = np.stack([self.read(n, win) for n in names])
                    dst.write(data, window=rasterio.windows.Window(win.x0, win.y0, win.width, win.height))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        return path
