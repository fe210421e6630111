"""The ``.xt`` accessor (issue 13): users stay in xarray from a raster to regions, a store and predictions."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

import xtstream
from xtstream.errors import SourceError

from conftest import tiny_model


def _image(h: int = 150, w: int = 200, bands: int = 2, lazy: bool = True) -> xr.DataArray:
    pixels = np.arange(bands * h * w, dtype="f4").reshape(bands, h, w) / (h * w)
    data = da.from_array(pixels, chunks=(bands, 64, 64)) if lazy else pixels
    return xr.DataArray(data, dims=("band", "y", "x"), name="image",
                        coords={"band": [f"b{i}" for i in range(bands)], "y": 6_000_000 - 10.0 * np.arange(h),
                                "x": 500_000 + 10.0 * np.arange(w)}, attrs={"scene_id": "s0"})


def test_regions_are_the_grid_and_lazy_windows_with_coordinates():
    image = _image()
    regions = image.xt.regions(64)
    assert regions.grid.shape == (3, 4) and len(regions) == 12 and regions.scene_id == "s0"
    r = regions[7]  # row 1, col 3: 64 high, 8 wide (200 = 3 x 64 + 8)
    assert isinstance(r.data, da.Array) and r.shape == (2, 64, 8)  # a lazy slice: nothing read
    assert float(r.x[0]) == 500_000 + 10.0 * 192 and float(r.y[0]) == 6_000_000 - 10.0 * 64
    np.testing.assert_array_equal(r.values, image.values[:, 64:128, 192:200])
    padded = regions.pixels(7)
    assert padded.shape == (2, 64, 64) and not padded[:, :, 8:].any()
    np.testing.assert_array_equal(padded[:, :, :8], r.values)
    assert regions.window(-1) == regions.grid.window(11) and len(list(regions)) == 12
    with pytest.raises(IndexError, match="region 12 of 12"):
        regions[12]


def test_regions_stream_in_order_as_the_model_sees_them():
    regions = _image().xt.regions(64)
    chunks = list(regions.stream(chunk=5))
    assert [c.indices for c in chunks] == [list(range(0, 5)), list(range(5, 10)), [10, 11]]
    for c in chunks:
        for k, index in enumerate(c.indices):
            np.testing.assert_array_equal(np.asarray(c.pixels[k]), regions.pixels(index))


def test_a_dataset_reads_its_image_variable_and_bad_dims_are_named():
    ds = xr.Dataset({"image": _image(), "other": ("t", [1, 2])})
    assert ds.xt.regions(64).grid.shape == (3, 4)
    with pytest.raises(SourceError, match=r"no variable 'img'.*variable="):
        ds.xt.regions(64, variable="img")
    with pytest.raises(SourceError, match=r"dims \('band', 'lat', 'lon'\).*rename"):
        _image().rename(y="lat", x="lon").xt.regions(64)


def test_to_store_ingests_the_array_with_its_crs(tmp_path):
    import rioxarray  # noqa: F401

    image = _image(lazy=False).rio.write_crs("EPSG:32631")
    path = image.xt.to_store(tmp_path / "scene.zarr", tile=64, progress=False, scheduler="sync", allow_small=True)
    store = xtstream.open_store(path)
    np.testing.assert_array_equal(store["image"].values, image.values)
    assert store["image"].rio.crs.to_epsg() == 32631
    assert store["image"].attrs["source"] == "s0"  # the array's scene id, not the file name
    # and back: the store is a Dataset with the accessor
    assert store.xt.regions(64).pixels(0).shape == (2, 64, 64)


def test_predictions_come_back_as_a_datatree_of_rows_and_maps(tmp_path):
    torch.manual_seed(0)
    image = _image()
    cls = tiny_model(context="xl", head="classification", num_classes=4).eval()
    tree = image.xt.predictions(cls, tmp_path / "cls", progress=False, top_k=2)
    rows = tree["rows"].to_dataset()
    assert rows.sizes["row"] == 1 and str(rows["scene_id"].values[0]) == "s0"
    assert {"top1", "top2", "prob1", "prob2"} <= set(rows.data_vars) and "maps" not in tree
    assert tree.attrs["scene_id"] == "s0"

    dense = tiny_model(context="xl").eval()
    ds = xr.Dataset({"image": image})
    tree = ds.xt.predictions(dense, tmp_path / "dense", progress=False, scene_id="scene_a")
    maps = tree["maps"].to_dataset()
    assert {"vessel", "centre", "length"} <= set(maps.data_vars)
    assert maps["vessel"].dims == ("y", "x") and maps.sizes["y"] * 2 >= 150  # the output stride's cells
    assert "detect_scene_row" in tree["rows"].to_dataset()
