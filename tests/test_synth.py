"""Synthetic scenes: deterministic, xView3 layout and label schema, objects visible where labelled."""

import csv
import hashlib

import numpy as np
import pytest
import rasterio

from xtstream.tasks.xview3.synth import LABEL_COLUMNS, NODATA, synth_scene


def _digest(path):
    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read().tobytes()).hexdigest()


def test_same_seed_same_scene_other_seed_other_scene(tmp_path):
    a = synth_scene(tmp_path / "a", 400, 300, seed=4, progress=False)
    b = synth_scene(tmp_path / "b", 400, 300, seed=4, scene_id="a", progress=False)
    c = synth_scene(tmp_path / "c", 400, 300, seed=5, scene_id="a", progress=False)
    for band in ("VV_dB", "VH_dB", "bathymetry"):
        assert _digest(a.bands[band]) == _digest(b.bands[band])
        assert _digest(a.bands[band]) != _digest(c.bands[band])
    assert a.labels.read_text() == b.labels.read_text()
    assert np.array_equal(np.load(a.shoreline), np.load(b.shoreline))


def test_layout_tiling_and_georeferencing(small_scene):
    assert sorted(p.name for p in small_scene.directory.iterdir()) == [
        "VH_dB.tif", "VV_dB.tif", "bathymetry.tif", "labels.csv", "scene_a_shoreline.npy"]
    with rasterio.open(small_scene.bands["VV_dB"]) as ds:
        assert (ds.height, ds.width) == (700, 900)
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.compression is not None and ds.nodata == NODATA
        assert ds.crs is not None and ds.transform.a == 10.0
        vv = ds.read(1)
    assert (vv == NODATA).any()  # the swath-edge wedge
    assert vv[vv != NODATA].std() > 1.0  # speckle, not a flat field


def test_labels_follow_the_xview3_schema_and_mark_bright_objects(small_scene):
    with open(small_scene.labels, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == LABEL_COLUMNS
    assert len(rows) == len(small_scene.objects) >= 4
    with rasterio.open(small_scene.bands["VV_dB"]) as ds:
        vv = ds.read(1)
    sea = np.median(vv[vv != NODATA])
    for r in rows:
        y, x = int(r["detect_scene_row"]), int(r["detect_scene_column"])
        assert 0 <= y < 700 and 0 <= x < 900
        assert vv[y, x] > sea + 8  # a bright blob where the label says
        assert r["is_vessel"] in ("True", "False") and r["is_fishing"] in ("True", "False", "")
        assert r["confidence"] in ("HIGH", "MEDIUM", "LOW")
        assert float(r["distance_from_shore_km"]) >= 0
        if r["vessel_length_m"]:
            assert 0 < float(r["vessel_length_m"]) <= 500


def test_shoreline_is_a_plain_float_array_on_land_edges(small_scene):
    pts = np.load(small_scene.shoreline, allow_pickle=False)
    assert pts.ndim == 2 and pts.shape[1] == 2 and pts.dtype.kind == "f" and len(pts) > 10
    assert (pts[:, 0] >= 0).all() and (pts[:, 0] < 700).all() and (pts[:, 1] < 900).all()


def test_too_small_scene_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16x16"):
        synth_scene(tmp_path / "x", 8, 100)
