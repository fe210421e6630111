"""Dataset specs: the shipped xView3 spec, validation with clear errors."""

import numpy as np
import pytest
import yaml

from xtstream.errors import SpecError
from xtstream.data.specs import load_spec, parse_spec


def test_shipped_xview3_spec():
    spec = load_spec("xview3")
    assert [b.name for b in spec.bands] == ["VV", "VH", "bathymetry"]
    assert spec.band("VV").nodata == -32768 and spec.band("VV").clip == (-50.0, 20.0)
    assert spec.labels.required == ("scene_id", "detect_scene_row", "detect_scene_column")
    assert {"is_vessel", "is_fishing", "vessel_length_m", "distance_from_shore_km", "confidence"} \
        <= set(spec.labels.columns)
    assert [b.name for b in spec.select(["VH", "VV"]).bands] == ["VH", "VV"]


def _spec(**over):
    doc = {"name": "t", "bands": [{"name": "a", "file": "a.tif"}]}
    doc.update(over)
    return doc


@pytest.mark.parametrize("doc, message", [
    (_spec(tle=512), "unknown key 'tle' .*did you mean 'tile'"),
    (_spec(bands=[{"name": "a", "file": "a.tif", "nodta": 0}]), r"bands\[0\]: unknown key 'nodta'.*'nodata'"),
    (_spec(bands=[]), "non-empty list"),
    ({"bands": [{"name": "a", "file": "a.tif"}]}, "missing required key 'name'"),
    (_spec(bands=[{"name": "a", "file": "a.tif", "clip": [5, 1]}]), "low < high"),
    (_spec(bands=[{"name": "a", "file": "a.tif", "std": 0}]), "std: must not be 0"),
    (_spec(bands=[{"name": "a", "file": "a.tif"}, {"name": "a", "file": "b.tif"}]), "duplicate band names"),
    (_spec(dtype="floaty"), "not a numpy dtype"),
    (_spec(bands=[{"name": "a", "file": "a.tif", "resample": "bicubicc"}]), "resample"),
    (_spec(labels={"file": "l.csv", "columns": {"x": "integer"}}), "type 'integer'"),
])
def test_spec_errors_name_the_problem(doc, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(doc, source="my.yaml")


def test_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec(tile=-3)))
    with pytest.raises(SpecError, match="bad.yaml: spec.tile"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such spec file.*xview3"):
        load_spec("xveiw3")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(broken)


RGB_SPEC = """
name: rgb
dtype: float32
region: 32
bands:
  - {name: red, file: RGB.byte.tif, nodata: 0, mean: 100.0, std: 50.0}
  - {name: green, file: RGB.byte.tif, nodata: 0, mean: 100.0, std: 50.0}
  - {name: blue, file: RGB.byte.tif, nodata: 0, mean: 100.0, std: 50.0}
"""


def _rgb_tif(path):
    import rasterio
    from rasterio.transform import from_origin

    data = (np.arange(3 * 40 * 50) % 251).astype("uint8").reshape(3, 40, 50)
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(data)
    return data


@pytest.mark.parametrize("as_directory", [False, True], ids=["file", "scene-directory"])
def test_a_spec_names_the_bands_of_one_multi_band_file(tmp_path, as_directory):
    """Issue 13: a spec could not rename the bands of one multi-band file (``red, green, blue``):
    the file's bands kept their default names and normalisation refused the mismatch."""
    import xarray as xr

    from xtstream.data.ingest import ingest

    (tmp_path / "rgb.yaml").write_text(RGB_SPEC)
    scene = tmp_path / "scene"
    scene.mkdir()
    data = _rgb_tif(scene / "RGB.byte.tif")
    src = scene if as_directory else scene / "RGB.byte.tif"
    store = ingest(src, tmp_path / "rgb.zarr", spec=tmp_path / "rgb.yaml", tile=32, progress=False)
    image = xr.open_zarr(store)["image"]
    assert [str(b) for b in image["band"].values] == ["red", "green", "blue"]
    want = np.where(data == 0, 0.0, (data.astype("f4") - 100) / 50)
    np.testing.assert_allclose(image.values, want, rtol=1e-6)
