"""xView3 labels → per-region targets: parsing, refusals, and crops equal to a whole-scene drawing."""

import math

import numpy as np
import pytest

from xtstream.errors import LabelError
from xtstream.tasks.xview3.head import gaussian_heatmap
from xtstream.tasks.xview3.labels import SceneLabels, rasterise, read_labels
from xtstream.data.grid import RegionGrid, assemble_regions

HEADER = "scene_id,detect_scene_row,detect_scene_column,is_vessel,is_fishing,vessel_length_m,distance_from_shore_km,confidence\n"


def _csv(tmp_path, rows, header=HEADER, name="labels.csv"):
    path = tmp_path / name
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def test_reads_xview3_schema_with_unknowns(tmp_path):
    path = _csv(tmp_path, ["s1,10,20,True,False,55.5,1.2,HIGH",
                           "s1,5,7,,,,0.3,",
                           "s2,1,1,False,,,,LOW",
                           "other,3,3,True,True,10,1,HIGH"])
    labels = read_labels(path, scene_ids=["s1", "s2", "empty"])
    assert sorted(labels) == ["empty", "s1", "s2"]  # other scenes dropped, asked-for empty kept
    s1 = labels["s1"]
    assert list(s1.rows) == [5, 10] and list(s1.cols) == [7, 20]  # sorted by row
    assert math.isnan(s1.is_vessel[0]) and s1.is_vessel[1] == 1 and s1.is_fishing[1] == 0
    assert math.isnan(s1.length_m[0]) and s1.length_m[1] == pytest.approx(55.5)
    assert list(s1.lines) == [3, 2]  # CSV line numbers travel with the objects
    assert len(labels["empty"]) == 0


def test_missing_columns_named(tmp_path):
    path = _csv(tmp_path, ["s1,10,True"], header="scene_id,detect_scene_row,is_vessel\n")
    with pytest.raises(LabelError, match=r"labels\.csv.*detect_scene_column"):
        read_labels(path)


def test_bad_value_names_line(tmp_path):
    path = _csv(tmp_path, ["s1,10,20,True,False,55,1,HIGH", "s1,ten,20,True,False,55,1,HIGH"])
    with pytest.raises(LabelError, match=r"line 3: detect_scene_row 'ten'"):
        read_labels(path)
    path = _csv(tmp_path, ["s1,10,20,maybe,False,55,1,HIGH"], name="b.csv")
    with pytest.raises(LabelError, match=r"b\.csv line 2: is_vessel"):
        read_labels(path)


def test_object_outside_scene_names_line(tmp_path):
    path = _csv(tmp_path, ["s1,10,20,True,False,55,1,HIGH", "s1,99,300,True,False,55,1,HIGH"])
    with pytest.raises(LabelError, match=r"line 3: .*row 99, column 300 is outside the scene \(100 x 200"):
        read_labels(path, shapes={"s1": (100, 200)})


def _random_labels(rng, h, w, n):
    rows = rng.uniform(0, h - 1, n)
    cols = rng.uniform(0, w - 1, n)
    return SceneLabels("s", np.sort(rows), cols[np.argsort(rows)],
                       rng.choice([0.0, 1.0, np.nan], n).astype("f4"), rng.choice([0.0, 1.0, np.nan], n).astype("f4"),
                       np.where(rng.random(n) < 0.3, np.nan, rng.uniform(10, 300, n)).astype("f4"),
                       rng.uniform(0, 5, n).astype("f4"), ["HIGH"] * n, np.arange(2, n + 2))


@pytest.mark.parametrize("region", [16, 23, 64])
def test_region_crops_equal_whole_scene_drawing(region):
    """Per-region targets, reassembled, equal the same objects drawn once over the whole scene —
    objects near region edges included (their footprints and Gaussians cross into neighbours)."""
    rng = np.random.default_rng(region)
    h, w = 100, 130
    labels = _random_labels(rng, h, w, 25)
    grid = RegionGrid(h, w, region)
    per_region = [labels.region_targets(grid, i)[0] for i in range(len(grid))]
    whole = rasterise([labels._record(i, grid.window(0)) for i in range(len(labels))], max(h, w) + 1, (h, w))
    centre = assemble_regions([t["centre"] for t in per_region], grid)
    oracle = gaussian_heatmap(list(zip(labels.rows, labels.cols)), (h, w), sigma=2.0)
    np.testing.assert_allclose(centre, oracle, atol=5e-4)  # Gaussians cut at 4 sigma
    vessel = assemble_regions([t["vessel"] for t in per_region], grid)
    yy, xx = np.mgrid[:h, :w]
    disk = np.zeros((h, w), bool)
    for r, c in zip(labels.rows, labels.cols):
        disk |= (yy - r) ** 2 + (xx - c) ** 2 <= 16
    assert np.array_equal(vessel.astype(bool), disk)
    # attribute maps: where a pixel has a single object, its value is that object's
    single = np.zeros((h, w), int)
    for r, c in zip(labels.rows, labels.cols):
        single += (yy - r) ** 2 + (xx - c) ** 2 <= 16
    for name in ("length", "is_vessel", "is_fishing"):
        got = assemble_regions([t[name] for t in per_region], grid)
        np.testing.assert_array_equal(got[single == 1], whole[name][:h, :w][single == 1])
        assert (got[~disk] == 0).all()


def test_objects_inside_region_relative_coordinates():
    labels = SceneLabels("s", np.array([70.0, 130.0]), np.array([200.0, 10.0]),
                         np.array([1.0, 0.0], "f4"), np.array([1.0, np.nan], "f4"),
                         np.array([120.0, np.nan], "f4"), np.array([2.5, 0.1], "f4"), ["HIGH", "LOW"],
                         np.array([2, 3]))
    grid = RegionGrid(300, 300, 64)
    targets, objects = labels.region_targets(grid, grid.index(1, 3))  # window y 64..128, x 192..256
    assert len(objects) == 1
    o = objects[0]
    assert (o["row"], o["col"], o["scene_row"], o["scene_col"]) == (6.0, 8.0, 70.0, 200.0)
    assert o["class"] == "fishing" and o["length_m"] == 120.0 and o["distance_from_shore_km"] == 2.5
    assert targets["centre"][6, 8] == 1.0 and targets["vessel"][6, 8] == 1
    assert targets["length"][6, 8] == 120.0 and targets["is_fishing"][6, 8] == 1.0
    _, objects = labels.region_targets(grid, grid.index(2, 0))
    assert objects[0]["class"] == "non_vessel" and objects[0]["is_fishing"] is None
    assert labels.region_targets(grid, grid.index(4, 4))[1] == []


def test_giant_scene_regions_never_allocate_the_scene():
    """A 200,000² scene: a full mask would need 40 GB; per-region targets touch only R² pixels."""
    n = 2000
    rng = np.random.default_rng(0)
    labels = _random_labels(rng, 200_000, 200_000, n)
    grid = RegionGrid(200_000, 200_000, 512)
    i = grid.region_of_pixel(int(labels.rows[0]), int(labels.cols[0]))
    targets, objects = labels.region_targets(grid, i)
    assert all(t.shape == (512, 512) for t in targets.values())
    assert any(o["scene_row"] == labels.rows[0] for o in objects) and targets["vessel"].sum() > 0
    assert len(labels.near(grid.window(i))) < 10  # a binary search, not a scan of the scene


def test_padding_stays_zero():
    labels = SceneLabels("s", np.array([98.0]), np.array([98.0]), np.array([1.0], "f4"), np.array([0.0], "f4"),
                         np.array([50.0], "f4"), np.array([1.0], "f4"), ["HIGH"], np.array([2]))
    grid = RegionGrid(100, 100, 64)
    targets, _ = labels.region_targets(grid, 3)  # valid 36 x 36 of a 64 x 64 region
    for t in targets.values():
        assert not np.any(t[36:, :]) and not np.any(t[:, 36:])
    assert targets["vessel"][34, 34] == 1


def test_the_spec_labels_block_drives_parsing(tmp_path):
    from xtstream.data.specs import parse_spec

    spec = parse_spec({"name": "t", "bands": [{"name": "a", "file": "a.tif"}],
                       "labels": {"file": "dets.csv", "row_column": "y", "col_column": "x", "scene_column": "scene",
                                  "columns": {"scene": "str", "y": "int", "x": "int", "is_vessel": "bool",
                                              "confidence": "str"},
                                  "required": ["scene", "y", "x", "confidence"]}})
    path = _csv(tmp_path, ["s1,4,7,true,HIGH,99", "s1,2,3,,LOW,"], header="scene,y,x,is_vessel,confidence,vessel_length_m\n")
    s1 = read_labels(path, spec=spec)["s1"]
    assert list(s1.rows) == [2, 4] and list(s1.cols) == [3, 7] and s1.confidence == ["LOW", "HIGH"]
    assert math.isnan(s1.is_vessel[0]) and s1.is_vessel[1] == 1
    assert np.isnan(s1.length_m).all()  # a column the spec does not list is not read
    with pytest.raises(LabelError, match=r"line 2: y '4\.5' is not an integer"):
        read_labels(_csv(tmp_path, ["s1,4.5,7,true,HIGH,"], header="scene,y,x,is_vessel,confidence,l\n", name="b.csv"),
                    spec=spec)
    with pytest.raises(LabelError, match=r"line 2: empty confidence"):
        read_labels(_csv(tmp_path, ["s1,4,7,true,,"], header="scene,y,x,is_vessel,confidence,l\n", name="c.csv"),
                    spec=spec)
    with pytest.raises(LabelError, match=r"lacks required column\(s\) \['confidence'\]"):
        read_labels(_csv(tmp_path, ["s1,4,7"], header="scene,y,x\n", name="d.csv"), spec=spec)
    bad = parse_spec({"name": "t", "bands": [{"name": "a", "file": "a.tif"}],
                      "labels": {"file": "l.csv", "columns": {"is_vessel": "str"}}})
    with pytest.raises(LabelError, match=r"types columns \{'is_vessel': 'str'\}"):
        read_labels(path, spec=bad)
