"""Runnable pipelines under pipelines/: they run end to end on small generated archives."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from xtstream.tasks.xview3.labels import read_labels
from xtstream.data.grid import RegionGrid, assemble_regions
from xtstream.data.shards import read_scenes
from xtstream.data.store import open_store
from xtstream.tasks.xview3.synth import synth_scene

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xview3_preprocess_archive_to_labelled_shards(tmp_path, capsys):
    archive = tmp_path / "archive"
    scenes = [synth_scene(archive / sid, h, w, seed=s, progress=False)
              for sid, h, w, s in (("s1", 560, 600, 1), ("s2", 530, 520, 2))]
    work = tmp_path / "work"
    argv = [str(archive), "--out", str(work), "--region", "128", "--scheduler", "threads", "--bands", "VV,VH"]
    assert _load("xview3_preprocess").main(argv) == 0
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    grids = {s.scene_id: RegionGrid(s.height, s.width, 128) for s in scenes}
    assert manifest["totals"]["regions"] == sum(len(g) for g in grids.values())
    merged = read_labels(work / "labels.csv")
    assert sorted(merged) == ["s1", "s2"]
    assert sum(len(merged[s.scene_id]) for s in scenes) == sum(len(s.objects) for s in scenes)
    for scene in read_scenes(work / "shards").scenes():  # the shards hold exactly the ingested scenes
        image = open_store(work / "stores" / f"{scene.scene_id}.zarr")["image"].values
        regions = [sample.pixels for sample in scene]
        assert np.array_equal(assemble_regions(regions, grids[scene.scene_id]), image)
    assert "shards: " in capsys.readouterr().out
