"""Raster sources: real GeoTIFFs, aligned multi-file scenes, Zarr, in-memory, custom plug-ins, bad input."""

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import Affine

from xtstream.errors import SourceError
from xtstream.data.grid import Window
from xtstream.data.sources import ArraySource, GeoTIFFSource, WindowedSource, ZarrSource, open_source


def _write_tif(path, data, transform=Affine(10, 0, 1000, 0, -10, 5000), crs="EPSG:32631", nodata=None, tiled=True):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                   dtype=data.dtype, crs=crs, transform=transform, nodata=nodata)
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def test_real_multiband_geotiff_reads_exactly_with_crs(shared_data):
    path = shared_data / "rasterio" / "RGB.byte.tif"
    arr = open_source(path).to_dataarray(chunks=200)
    with rasterio.open(path) as ds:
        expected, crs, transform = ds.read(), ds.crs, ds.transform
    assert arr.dims == ("band", "y", "x") and arr.shape == expected.shape
    assert arr.data.chunksize == (3, 200, 200)  # lazy, chunked
    assert np.array_equal(arr.values, expected)
    assert arr.rio.crs == crs
    assert arr.rio.transform().almost_equals(transform)
    assert arr.attrs["nodata"] == [0.0, 0.0, 0.0]
    assert float(arr.x[0]) == pytest.approx(transform.c + transform.a / 2)


def test_tiled_compressed_landsat_windows(shared_data):
    path = shared_data / "landsat" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    src = open_source(path)
    window = Window(1000, 1500, 1300, 1860)  # crosses tile edges and the right border
    with rasterio.open(path) as ds:
        expected = ds.read(window=rasterio.windows.Window(1500, 1000, 360, 300))
    assert np.array_equal(src.read_window(window), expected)
    assert np.array_equal(src.to_dataarray(chunks=256)[:, 1000:1300, 1500:1860].values, expected)


def test_georeferencing_is_optional(shared_data):
    arr = open_source(shared_data / "rasterio" / "rotated.tif").to_dataarray()
    assert arr.shape[1:] == (10, 15) or arr.shape[1:] == (15, 10)
    assert "spatial_ref" not in arr.coords or arr.rio.crs is None


def test_corrupt_file_is_named(shared_data):
    path = shared_data / "rasterio" / "corrupt.tif"
    with pytest.raises(SourceError, match="corrupt.tif"):
        open_source(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SourceError, match="nope.tif: no such"):
        open_source(tmp_path / "nope.tif")
    with pytest.raises(SourceError, match="nope.tif: no such file"):
        GeoTIFFSource([tmp_path / "nope.tif"])


def test_one_path_alone_is_that_file(tmp_path):
    """``GeoTIFFSource("scene.tif")`` read the string's characters as files and failed on ``/``:
    ``/: not a readable raster``, naming no file of the user's."""
    pixels = np.arange(2 * 64 * 96, dtype="float32").reshape(2, 64, 96)
    path = _write_tif(tmp_path / "scene.tif", pixels)
    for given in (str(path), path):
        src = GeoTIFFSource(given)
        assert src.shape == (2, 64, 96) and src.band_names == ["scene_1", "scene_2"]
        assert np.array_equal(src.read_window(Window(0, 0, 64, 96)), pixels)
    with pytest.raises(SourceError, match="nope.tif: no such file"):
        GeoTIFFSource(str(tmp_path / "nope.tif"))


def test_not_a_raster_is_named(tmp_path):
    bad = tmp_path / "text.tif"
    bad.write_text("hello")
    with pytest.raises(SourceError, match="text.tif: not a readable raster"):
        open_source(bad)


def test_scene_directory_aligns_band_files(tmp_path):
    rng = np.random.default_rng(0)
    vv, vh = rng.standard_normal((2, 130, 170)).astype(np.float32)
    _write_tif(tmp_path / "VV_dB.tif", vv)
    _write_tif(tmp_path / "VH_dB.tif", vh)
    src = open_source(tmp_path, spec="xview3")  # bathymetry is optional and absent
    arr = src.to_dataarray(chunks=64)
    assert list(arr.band.values) == ["VV", "VH"]
    assert np.array_equal(arr.values, np.stack([vv, vh]))


def test_bands_of_different_shape_or_crs_are_refused(tmp_path):
    a = _write_tif(tmp_path / "a.tif", np.zeros((50, 60), np.float32))
    b = _write_tif(tmp_path / "b.tif", np.zeros((50, 61), np.float32))
    c = _write_tif(tmp_path / "c.tif", np.zeros((50, 60), np.float32), crs="EPSG:4326")
    d = _write_tif(tmp_path / "d.tif", np.zeros((50, 60), np.float32), transform=Affine(10, 0, 0, 0, -10, 0))
    with pytest.raises(SourceError, match="b.tif: shape 50x61 and bounds"):
        GeoTIFFSource([a, b])
    with pytest.raises(SourceError, match="c.tif: CRS"):
        GeoTIFFSource([a, c])
    with pytest.raises(SourceError, match="d.tif: georeferencing"):
        GeoTIFFSource([a, d])


def test_lower_resolution_band_is_resampled_onto_the_grid(tmp_path):
    fine = _write_tif(tmp_path / "fine.tif", np.zeros((80, 120), np.float32))
    coarse_data = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    coarse = _write_tif(tmp_path / "coarse.tif", coarse_data, transform=Affine(40, 0, 1000, 0, -40, 5000))
    with pytest.raises(SourceError, match="resample"):
        GeoTIFFSource([fine, coarse])
    src = GeoTIFFSource([fine, coarse], resample=[None, "nearest"])
    arr = src.to_dataarray(chunks=32).values
    assert arr.shape == (2, 80, 120)
    assert np.array_equal(arr[1], np.repeat(np.repeat(coarse_data, 4, 0), 4, 1))


def test_nan_and_tiny_rasters_pass_through(shared_data):
    arr = open_source(shared_data / "rasterio" / "float_nan.tif").to_dataarray().values
    assert arr.shape[1:] == (2, 3) and np.isnan(arr).any()


def test_array_and_xarray_sources():
    data = np.arange(2 * 50 * 40, dtype=np.int16).reshape(2, 50, 40)
    arr = ArraySource(data, band_names=["a", "b"]).to_dataarray(chunks=16)
    assert np.array_equal(arr.values, data) and list(arr.band.values) == ["a", "b"]
    xda = xr.DataArray(data[0], dims=("y", "x"), coords={"y": np.arange(50), "x": np.arange(40)})
    arr2 = open_source(xda).to_dataarray(chunks=16)
    assert arr2.dims == ("band", "y", "x") and np.array_equal(arr2.values[0], data[0])
    with pytest.raises(SourceError, match="dims"):
        ArraySource(xr.DataArray(data, dims=("c", "lat", "lon")))


def test_zarr_array_source(tmp_path):
    import zarr

    data = np.random.default_rng(1).random((3, 70, 90)).astype(np.float32)
    z = zarr.create_array(tmp_path / "plain.zarr", shape=data.shape, chunks=(3, 32, 32), dtype="f4")
    z[:] = data
    arr = ZarrSource(tmp_path / "plain.zarr").to_dataarray(chunks=40)
    assert np.array_equal(arr.values, data) and arr.data.chunksize == (3, 40, 40)
    with pytest.raises(SourceError, match="not a Zarr store"):
        ZarrSource(tmp_path)


class Gradient(WindowedSource):
    """A user's own source: computed on the fly, never materialised."""

    name, shape, dtype, band_names = "gradient", (1, 100_000, 100_000), np.dtype("f4"), ["g"]

    def __init__(self):
        self.calls = []

    def read_window(self, window):
        self.calls.append(window)
        y = np.arange(window.y0, window.y1, dtype="f4")[:, None] + np.zeros(window.width, "f4")
        return y[None]


def test_custom_windowed_source_is_lazy_and_windowed():
    src = Gradient()
    arr = src.to_dataarray(chunks=1024)  # 10^10 pixels: must not be read
    assert arr.shape == (1, 100_000, 100_000) and src.calls == []
    patch = arr[:, 50_000:50_010, 70_000:70_020].values
    assert np.array_equal(patch[0, :, 0], np.arange(50_000, 50_010, dtype="f4"))
    assert all(w.height <= 1024 and w.width <= 1024 for w in src.calls) and len(src.calls) == 1


def test_files_on_other_grids_or_crs_are_warped_onto_the_first_only_when_asked(tmp_path):
    """Issue 13: bands on different grids or CRSs were refused outright; they are warped onto the
    first file's grid on read when a resampling is given (opt-in), and refused without one."""
    ref = _write_tif(tmp_path / "ref.tif", np.zeros((80, 120), np.float32))
    part = np.arange(40 * 60, dtype=np.float32).reshape(40, 60) + 1
    # the same CRS and pixel size, another footprint: 20 px right of and 20 px below the reference's origin
    shifted = _write_tif(tmp_path / "shifted.tif", part, transform=Affine(10, 0, 1200, 0, -10, 4800), nodata=-1)
    with pytest.raises(SourceError, match=r"shifted.tif: shape 40x60 and bounds .* warp it onto ref.tif's grid"):
        GeoTIFFSource([ref, shifted])
    arr = GeoTIFFSource([ref, shifted], resample=[None, "nearest"]).to_dataarray(chunks=32).values
    want = np.full((80, 120), -1, np.float32)
    want[20:60, 20:80] = part
    np.testing.assert_array_equal(arr[1], want)

    # another CRS (geographic) covering the reference: reprojected, a constant stays that constant inside
    from rasterio.warp import calculate_default_transform

    with rasterio.open(ref) as ds:
        t, w, h = calculate_default_transform(ds.crs, "EPSG:4326", ds.width, ds.height, *ds.bounds)
    lonlat = _write_tif(tmp_path / "lonlat.tif", np.full((h + 4, w + 4), 7, np.float32), crs="EPSG:4326",
                        transform=t * Affine.translation(-2, -2), nodata=0)
    with pytest.raises(SourceError, match="lonlat.tif: CRS"):
        GeoTIFFSource([ref, lonlat])
    arr = GeoTIFFSource([ref, lonlat], resample=[None, "bilinear"]).to_dataarray(chunks=32).values
    assert arr.shape == (2, 80, 120) and np.all(arr[1, 2:-2, 2:-2] == 7)
