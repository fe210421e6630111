"""Band normalisation: the same bits on every path (stores must stay bit-identical across versions)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from xtstream.data.normalize import STRIP_ROWS, normalize_block, valid_block

F32 = st.floats(-1e4, 1e4, width=32, allow_nan=False)
#: parameters as specs write them (a float32 number each) and as they may come (any float64)
ANY = st.floats(-1e4, 1e4, allow_nan=False)


def reference(block: np.ndarray, nodata, lo, hi, mean, std, fill) -> np.ndarray:
    """Each step in float64 rounded to float32 once, written out plainly."""
    f64 = block.astype(np.float64)
    out = np.clip(f64, lo[:, None, None], hi[:, None, None]).astype(np.float32)
    out = (out.astype(np.float64) - mean[:, None, None]).astype(np.float32)
    out = (out.astype(np.float64) / std[:, None, None]).astype(np.float32)
    bad = np.isnan(f64) | (f64 == nodata[:, None, None])
    return np.where(bad, np.float32(fill)[:, None, None], out).astype(np.float32)


def _block(seed: int, nodata: np.ndarray, bands: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # values near the clip bounds and mean, so clip and rounding both matter, plus nodata and NaN
    x = (rng.normal(0, 60, (bands, h, w)) * rng.choice([1e-3, 1.0, 30.0], (bands, h, w))).astype(np.float32)
    for k in range(bands):
        if not np.isnan(nodata[k]):
            x[k][rng.random((h, w)) < 0.1] = nodata[k]
    x[rng.random(x.shape) < 0.02] = np.nan
    return x


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), params=st.lists(st.tuples(F32, F32, F32, F32.filter(lambda s: abs(s) > 1e-3), F32),
                                                    min_size=1, max_size=3),
       exact=st.booleans(), h=st.integers(1, 2 * STRIP_ROWS + 3), w=st.integers(1, 9), nodata_none=st.booleans())
def test_float32_blocks_normalise_to_the_float64_steps_bits(seed, params, exact, h, w, nodata_none):
    """The float32 path (float32 block, float32-number parameters) and the float64 path give the
    bits of the step-by-step float64 arithmetic, and the mask taken on the way is valid_block's."""
    a, b, mean, std, fill = (np.array(v, np.float64) for v in zip(*params))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if not exact:  # a mean that is no float32 number: the float64 path
        mean = mean + 0.1
    nodata = np.full(len(params), np.nan) if nodata_none else np.round(lo) - 7.0
    block = _block(seed, nodata, len(params), h, w)
    valid = np.full(block.shape, 7, np.uint8)
    got = normalize_block(block, nodata, lo, hi, mean, std, fill, np.dtype(np.float32), valid=valid)
    want = reference(block, nodata, lo, hi, mean, std, fill)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(valid, valid_block(block, nodata))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float64])
def test_other_source_types_take_the_float64_steps(dtype):
    rng = np.random.default_rng(0)
    block = rng.integers(-300, 300, (2, 70, 5)).astype(dtype) if dtype != np.uint16 else \
        rng.integers(0, 600, (2, 70, 5)).astype(dtype)
    nodata, lo, hi = np.array([0.0, np.nan]), np.array([-100.0, 1.0]), np.array([250.0, 400.0])
    mean, std, fill = np.array([3.3, -40.0]), np.array([15.0, 0.7]), np.array([-1.0, 0.0])
    got = normalize_block(block, nodata, lo, hi, mean, std, fill, np.dtype(np.float32))
    np.testing.assert_array_equal(got.view(np.uint32),
                                  reference(block, nodata, lo, hi, mean, std, fill).view(np.uint32))


def test_in_place_writes_over_the_block_with_the_same_bits():
    block = _block(5, np.array([-32768.0]), 1, 70, 9)
    args = (np.array([-32768.0]), np.array([-50.0]), np.array([20.0]), np.array([-40.0]), np.array([15.0]),
            np.array([-1.0]), np.dtype(np.float32))
    want = normalize_block(block.copy(), *args)
    got = normalize_block(block, *args, in_place=True)
    assert got is block
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_ingest_normalises_geotiffs_in_place_and_never_a_callers_array(small_scene, tmp_path):
    """GeoTIFF windows are fresh arrays (normalised in place, the store bit-exact to the
    step-by-step arithmetic); a source handing out views of its own memory must find it as it was."""
    import xarray as xr

    from xtstream.data.ingest import ingest
    from xtstream.data.sources import WindowedSource, open_source
    from xtstream.data.specs import load_spec

    spec = load_spec("xview3").select(["VV", "VH"])
    store = ingest(small_scene.directory, tmp_path / "g.zarr", spec="xview3", bands=["VV", "VH"], tile=256,
                   progress=False)
    src = open_source(small_scene.directory, spec, ["VV", "VH"])
    assert src.fresh_windows
    raw = src.to_dataarray(chunks=256).values
    params = [np.array(v, np.float64) for v in zip(*[(b.nodata, b.clip[0], b.clip[1], b.mean, b.std, b.fill)
                                                      for b in spec.bands])]
    want = reference(raw, *params)
    got = xr.open_zarr(store)["image"].values
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))

    class Views(WindowedSource):  # a plug-in handing out (writeable) views of its own memory
        name, band_names, dtype = "views", ["VV", "VH"], np.dtype("float32")

        def __init__(self, image):
            self.image, self.shape = image, image.shape

        def read_window(self, w):
            return self.image[:, w.y0:w.y1, w.x0:w.x1]

    image = raw.copy()
    ingest(Views(image), tmp_path / "a.zarr", spec="xview3", tile=256, progress=False)
    np.testing.assert_array_equal(image, raw)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "a.zarr")["image"].values.view(np.uint32),
                                  want.view(np.uint32))
