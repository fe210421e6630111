"""``.xt`` on xarray objects: from a raster to regions, a store and predictions without leaving xarray.

    import xtstream                                   # registers the accessor
    image = rioxarray.open_rasterio("scene.tif", chunks=2048)     # (band, y, x), lazy
    regions = image.xt.regions(256)                   # the grid and lazy (band, <=256, <=256) windows
    regions[5]                                        # a DataArray slice, coordinates kept, nothing read
    image.xt.to_store("scene.zarr", scene_id="scene") # xtstream.ingest
    scene = xtstream.open_store("scene.zarr")
    out = scene.xt.predictions("model.pt", "predictions/")   # xtstream.predict; an xarray.DataTree

A :class:`~xarray.DataArray` must have dims ``(band, y, x)`` or ``(y, x)``; a
:class:`~xarray.Dataset` is read through its ``image`` variable (``variable=`` for another).
Scene ids: ``scene_id=``, else the array's ``scene_id`` or ``source`` attribute, else ``"scene"``
(for :meth:`~DataArrayAccessor.to_store`, the store's name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr

from xtstream.data.grid import RegionGrid, Window, pad_region
from xtstream.errors import SourceError


def _scene_id(arr: xr.DataArray, scene_id: str | None, default: str = "scene") -> str:
    if scene_id is not None:
        return str(scene_id)
    for key in ("scene_id", "source"):
        value = arr.attrs.get(key)
        if isinstance(value, str) and value:
            return Path(value).name.split(".")[0] if key == "source" else value
    return default


def _image(obj: xr.DataArray | xr.Dataset, variable: str) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if variable not in obj:
            raise SourceError(f"dataset has no variable {variable!r} (has {list(obj.data_vars)}); "
                              "pass variable=")
        obj = obj[variable]
    if obj.dims not in (("band", "y", "x"), ("y", "x")):
        raise SourceError(f"DataArray dims {obj.dims}, expected (band, y, x) or (y, x) "
                          "(rename first, e.g. arr.rename(lat='y', lon='x'))")
    return obj


class RegionWindows:
    """The non-overlapping ``region x region`` windows of a lazy ``(band, y, x)`` DataArray, row-major.

    ``grid`` is the :class:`~xtstream.data.grid.RegionGrid`; ``windows[i]`` is region ``i`` as a
    lazy slice of the array (its valid part: edge regions are smaller; nothing is read);
    :meth:`pixels` reads one zero-padded to ``(bands, region, region)``, as the model sees it;
    :meth:`stream` streams them in chunks (:func:`xtstream.stream_scenes`).
    """

    def __init__(self, image: xr.DataArray, region: int, scene_id: str):
        self.image = image
        self.scene_id = scene_id
        self.grid = RegionGrid(int(image.sizes["y"]), int(image.sizes["x"]), int(region))

    def __len__(self) -> int:
        return len(self.grid)

    def __repr__(self) -> str:
        rows, cols = self.grid.shape
        return (f"<RegionWindows {self.scene_id!r}: {rows} x {cols} regions of {self.grid.region} px over "
                f"{self.grid.height} x {self.grid.width}>")

    def window(self, index: int) -> Window:
        """Region ``index``'s window in pixels (may reach past the edges; zero-padded there)."""
        return self.grid.window(self._index(index))

    def __getitem__(self, index: int) -> xr.DataArray:
        win = self.grid.valid_window(self._index(index))
        return self.image.isel(y=slice(win.y0, win.y1), x=slice(win.x0, win.x1))

    def __iter__(self) -> Iterator[xr.DataArray]:
        return (self[i] for i in range(len(self)))

    def pixels(self, index: int) -> np.ndarray:
        """Region ``index`` read and zero-padded at the bottom/right: ``(bands, region, region)``."""
        values = np.asarray(self[index].values)
        return pad_region(values if values.ndim == 3 else values[None], self.grid.region)

    def stream(self, *, chunk: int | None = None, labels: Any = None) -> Any:
        """Chunks of ``chunk`` consecutive regions, in order (an ``IterableDataset`` of
        :class:`~xtstream.data.chunk.RegionChunk`; see :func:`xtstream.stream_scenes`)."""
        from xtstream.data.sources import ArraySource
        from xtstream.data.streams import DEFAULT_CHUNK, stream_scenes

        return stream_scenes([ArraySource(self.image, scene_id=self.scene_id)], self.grid.region,
                             chunk=chunk or DEFAULT_CHUNK, labels=labels)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"region {index} of {n}")
        return index % n


def to_store(image: xr.DataArray, path: str | Path, *, scene_id: str | None = None, **kwargs: Any) -> Path:
    """:func:`xtstream.ingest` of ``image`` into the scene store ``path`` (CRS and transform kept)."""
    from xtstream.data.ingest import ingest
    from xtstream.data.sources import ArraySource

    sid = _scene_id(image, scene_id, default=Path(path).name.split(".")[0])
    return ingest(ArraySource(image, scene_id=sid), path, scene_id=sid, **kwargs)


def predictions(image: xr.DataArray, model: Any, out: str | Path, *, scene_id: str | None = None,
                **kwargs: Any) -> xr.DataTree:
    """:func:`xtstream.predict` of ``image`` into ``out``, its outputs opened lazily.

    Returns a :class:`xarray.DataTree`: ``"rows"``, the scene's rows of the task's CSV (xView3:
    one per detection; classification: the top-k classes) along dim ``row``; and for tasks with
    dense outputs ``"maps"``, the scene's georeferenced prediction maps ``(y, x)`` at the output
    stride. ``kwargs`` go to :func:`xtstream.predict` (``task``, ``device``, ``overwrite``, the
    task's options, …).
    """
    from xtstream.data.sources import ArraySource
    from xtstream.engine.predict import predict

    sid = _scene_id(image, scene_id)
    predict(model, ArraySource(image, scene_id=sid), out, **kwargs)
    return open_predictions(out, sid)


def open_predictions(out: str | Path, scene_id: str) -> xr.DataTree:
    """One scene's outputs of a finished ``xtstream predict`` run in ``out`` (see :func:`predictions`)."""
    import pandas as pd

    from xtstream.data.shards.format import scene_key
    from xtstream.engine.predict import SCENES_DIR
    from xtstream.errors import StoreError

    scenes = Path(out) / SCENES_DIR
    rows_csv = scenes / f"{scene_key(scene_id)}.csv"
    if not rows_csv.is_file():
        raise StoreError(f"{out}: no finished predictions of scene {scene_id!r} (no {rows_csv})")
    table = pd.read_csv(rows_csv)
    rows = xr.Dataset.from_dataframe(table.rename_axis("row"))
    tree = {"/rows": rows}
    maps = scenes / f"{scene_key(scene_id)}.zarr"
    if maps.is_dir():
        tree["/maps"] = xr.open_zarr(maps, decode_coords="all")
    result = xr.DataTree.from_dict(tree)
    result.attrs.update(scene_id=scene_id, predictions=str(out))
    return result


@xr.register_dataarray_accessor("xt")
class DataArrayAccessor:
    """``image.xt``: :meth:`regions`, :meth:`to_store`, :meth:`predictions` of a ``(band, y, x)`` raster."""

    def __init__(self, obj: xr.DataArray):
        self._obj = obj

    def regions(self, region: int, *, scene_id: str | None = None) -> RegionWindows:
        """The region grid and lazy region windows (:class:`RegionWindows`)."""
        return RegionWindows(_image(self._obj, "image"), region, _scene_id(self._obj, scene_id))

    def to_store(self, path: str | Path, **kwargs: Any) -> Path:
        """Ingest into a scene store (:func:`to_store`; ``kwargs`` as :func:`xtstream.ingest`)."""
        return to_store(_image(self._obj, "image"), path, **kwargs)

    def predictions(self, model: Any, out: str | Path, **kwargs: Any) -> xr.DataTree:
        """Predict with ``model`` (an XTModel or a checkpoint path) into ``out`` (:func:`predictions`)."""
        return predictions(_image(self._obj, "image"), model, out, **kwargs)


@xr.register_dataset_accessor("xt")
class DatasetAccessor:
    """``scene.xt``: the same as ``scene[variable].xt`` (``variable="image"``: a scene store's)."""

    def __init__(self, obj: xr.Dataset):
        self._obj = obj

    def _array(self, variable: str) -> xr.DataArray:
        arr = _image(self._obj, variable)
        if "scene_id" not in arr.attrs and isinstance(self._obj.attrs.get("scene_id"), str):
            arr = arr.assign_attrs(scene_id=self._obj.attrs["scene_id"])
        return arr

    def regions(self, region: int, *, variable: str = "image", scene_id: str | None = None) -> RegionWindows:
        return self._array(variable).xt.regions(region, scene_id=scene_id)

    def to_store(self, path: str | Path, *, variable: str = "image", **kwargs: Any) -> Path:
        return self._array(variable).xt.to_store(path, **kwargs)

    def predictions(self, model: Any, out: str | Path, *, variable: str = "image", **kwargs: Any) -> xr.DataTree:
        return self._array(variable).xt.predictions(model, out, **kwargs)
