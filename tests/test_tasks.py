"""Tasks: the registry, a plug-in task's own targets through the unchanged shard format, scene
classification from a labels CSV to a training loss, old-format shards still read."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import xtstream
from conftest import TINY_REGION, tiny_model
from xtstream.data.grid import RegionGrid
from xtstream.data.ingest import ingest
from xtstream.data.sample import RegionSample
from xtstream.data.shards import decode_sample, encode_sample, read_scenes, shard_stores
from xtstream.data.sources import ArraySource
from xtstream.data.streams import open_scene
from xtstream.errors import LabelError, ShardError, TaskError
from xtstream.tasks import TASKS, Task, get_task, list_tasks, register_task, task_for_head
from xtstream.tasks.classification import ClassificationTask

CLASSES = ["sea", "ice", "land"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three 2x3-region scenes whose brightness says their class (index k -> mean k)."""
    root = tmp_path_factory.mktemp("task_stores")
    rng = np.random.default_rng(3)
    out = []
    for k, sid in enumerate(["s0", "s1", "s2"]):
        img = (rng.standard_normal((2, 100, 150)) + k).astype(np.float32)
        out.append(ingest(ArraySource(img, scene_id=sid), root / f"{sid}.zarr", tile=64, progress=False))
    return out


class MaskLabels:
    """Toy labels: a scene's mask is ``value`` on the part of each region inside the scene."""

    def __init__(self, value: int):
        self.value = value

    def __len__(self) -> int:
        return 1

    def region_targets(self, grid: RegionGrid, index: int):
        win = grid.valid_window(index)
        mask = np.zeros((grid.region, grid.region), np.uint8)
        mask[:win.height, :win.width] = self.value
        return {"mask": mask}, [{"row": 0.0, "col": 0.0, "value": self.value}]


@pytest.fixture
def toy_task():
    """A task defined outside the package, as a plug-in would; unregistered afterwards."""

    @register_task
    class ToyMask(Task):
        name, head = "toy_mask", "toy_head"

        def read_labels(self, path, *, scene_ids=None, shapes=None, spec=None):
            values = json.loads(Path(path).read_text())
            return {sid: MaskLabels(int(values[sid])) for sid in (scene_ids or values)}

    yield ToyMask
    del TASKS.entries["toy_mask"]


def test_registry_finds_tasks_by_name_and_head():
    assert {"xview3", "classification"} <= set(list_tasks())
    assert get_task("xview3").head == "xview3" and task_for_head("xview3").name == "xview3"
    assert isinstance(task_for_head("classification"), ClassificationTask)
    assert get_task("classification", classes=CLASSES).classes == CLASSES
    with pytest.raises(TaskError, match="no task registered as 'nope'.*classification"):
        get_task("nope")
    with pytest.raises(TaskError, match="no registered task trains head 'toy'"):
        task_for_head("toy")
    with pytest.raises(TaskError, match="already registered"):
        register_task(type("Other", (Task,), {"name": "xview3", "head": "x"}))


def test_a_plugin_task_shards_its_own_targets(toy_task, stores, tmp_path):
    labels = tmp_path / "masks.json"
    labels.write_text(json.dumps({"s0": 3, "s1": 5, "s2": 7}))
    manifest = shard_stores(stores[:2], tmp_path / "sh", region=32, labels=labels, task="toy_mask", progress=False)
    doc = json.loads(manifest.read_text())
    assert doc["config"]["labels"]["task"] == "toy_mask" and doc["scenes"][0]["objects"] == 1
    first = tmp_path / "sh" / doc["shards"][0]["name"]
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert "s0/00000_00000.mask.npy" in names and not any("vessel" in n for n in names)
    for scene, store, value in zip(read_scenes(tmp_path / "sh").scenes(), stores, (3, 5)):
        direct = list(open_scene(store, 32, labels=MaskLabels(value)))
        sharded = list(scene)
        assert len(direct) == len(sharded) == len(scene.grid)
        for a, b in zip(direct, sharded):
            assert sorted(b.targets) == ["mask"] and b.targets["mask"].dtype == np.uint8
            np.testing.assert_array_equal(a.targets["mask"], b.targets["mask"])
            assert b.objects == [{"row": 0.0, "col": 0.0, "value": value}]


def test_shards_of_an_unregistered_task_name_it(stores, tmp_path, toy_task):
    labels = tmp_path / "masks.json"
    labels.write_text(json.dumps({"s0": 1}))
    shard_stores(stores[:1], tmp_path / "sh", region=32, labels=labels, task="toy_mask", progress=False)
    del TASKS.entries["toy_mask"]
    try:
        with pytest.raises(ShardError, match="written for task 'toy_mask'.*no task registered"):
            list(next(read_scenes(tmp_path / "sh").scenes()))
    finally:
        TASKS.entries["toy_mask"] = toy_task


def _class_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("scene_id,label\n" + "".join(r + "\n" for r in rows))
    return path


def test_classification_labels_by_name_or_index(tmp_path):
    task = ClassificationTask(classes=CLASSES)
    labels = task.read_labels(_class_csv(tmp_path / "a.csv", ["s0,sea", "s1,2", "other,ice"]), scene_ids=["s0", "s1"])
    assert {k: (v.index, v.name) for k, v in labels.items()} == {"s0": (0, "sea"), "s1": (2, "land")}
    with pytest.raises(LabelError, match=r"b\.csv line 2: label 'lake' is not one of"):
        task.read_labels(_class_csv(tmp_path / "b.csv", ["s0,lake"]))
    with pytest.raises(LabelError, match="class index 3 is out of range"):
        task.read_labels(_class_csv(tmp_path / "c.csv", ["s0,3"]))
    with pytest.raises(LabelError, match=r"no label for scene\(s\) \['s9'\]"):
        task.read_labels(_class_csv(tmp_path / "d.csv", ["s0,1"]), scene_ids=["s0", "s9"])
    with pytest.raises(LabelError, match="a second label for scene 's0'"):
        task.read_labels(_class_csv(tmp_path / "e.csv", ["s0,1", "s0,2"]))


def test_classification_trains_from_shards_with_the_default_loss(stores, tmp_path):
    torch.manual_seed(0)
    labels = _class_csv(tmp_path / "classes.csv", ["s0,sea", "s1,ice", "s2,land"])
    shard_stores(stores, tmp_path / "sh", region=TINY_REGION, labels=labels,
                 task=ClassificationTask(classes=CLASSES), progress=False)
    chunks = list(read_scenes(tmp_path / "sh", chunk=2))
    assert [int(c.targets["label"][0]) for c in chunks if c.first] == [0, 1, 2]
    assert all(c.targets["label"].shape == (len(c),) for c in chunks)

    model = tiny_model(head="classification", num_classes=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    epochs = [[r["loss"] for r in xtstream.train_chunks(model, read_scenes(tmp_path / "sh", chunk=2), opt)]
              for _ in range(6)]
    assert all(np.isfinite(loss) for epoch in epochs for loss in epoch)
    assert len(epochs[0]) == len(chunks)
    assert np.mean(epochs[-1]) < np.mean(epochs[0])


def test_classification_label_from_chunk_info():
    from conftest import scene_chunks

    model = tiny_model(head="classification", num_classes=3)
    chunks = scene_chunks("a", 2, 2)
    for c in chunks:
        c.targets.clear()
        c.info["label"] = 2
    records = list(xtstream.train_chunks(model, chunks, torch.optim.SGD(model.parameters(), lr=1e-3)))
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)
    for c in chunks:
        del c.info["label"]
    with pytest.raises(LabelError, match="no 'label' target"):
        list(xtstream.train_chunks(model, chunks, torch.optim.SGD(model.parameters(), lr=1e-3)))


def _xview3_sample() -> tuple[RegionSample, dict]:
    from xtstream.tasks.xview3.labels import SceneLabels

    grid = RegionGrid(50, 70, 32)
    labels = SceneLabels("s", np.array([10.0, 30.5]), np.array([31.0, 40.0]), np.array([1, np.nan], np.float32),
                         np.array([0, np.nan], np.float32), np.array([42.5, np.nan], np.float32),
                         np.array([1, 2], np.float32), ["HIGH", ""], np.array([2, 3]))
    task = get_task("xview3")
    sample = RegionSample("s", 1, grid, np.zeros((2, 32, 32), np.float32))
    targets, sample.objects = task.region_targets(labels, grid, 1)
    direct = dict(targets)
    sample.targets, extra = task.pack_targets(labels, grid, 1, targets)
    return sample, {"direct": direct, "extra": extra}


def test_xview3_shard_sample_round_trip_and_old_format():
    sample, d = _xview3_sample()
    files = encode_sample(sample, ["VV", "VH"], "xview3", d["extra"])
    assert sorted(files) == ["__key__", "centre.npy", "json", "npy", "vessel.npy"]
    back = decode_sample(files, "t")
    assert sorted(back.targets) == sorted(d["direct"]) and back.objects == sample.objects
    for name, value in d["direct"].items():
        np.testing.assert_allclose(back.targets[name], value, atol=1e-3, err_msg=name)
        assert back.targets[name].dtype == value.dtype, name
    # the earlier format: no task name, xView3 parameters in "labels", "nearby" beside them
    meta = json.loads(files["json"])
    extra = meta.pop("labels")
    meta.pop("task")
    meta.update(format="xtstream-region/1", labels={"radius": extra["radius"], "sigma": extra["sigma"]},
                nearby=extra["nearby"])
    old = decode_sample({**files, "json": json.dumps(meta).encode()}, "t")
    for name in d["direct"]:
        np.testing.assert_array_equal(old.targets[name], back.targets[name], err_msg=name)
    # a member missing: the checksums (format /3) say so first; without them (/2) the task does
    lacking = {k: v for k, v in files.items() if k != "centre.npy"}
    with pytest.raises(ShardError, match=r"members \['npy', 'vessel.npy'\], but its checksums list"):
        decode_sample(lacking, "t")
    v2 = json.loads(files["json"])
    v2.pop("crc32c")
    v2["format"] = "xtstream-region/2"
    with pytest.raises(ShardError, match="task 'xview3' cannot read.*no .centre.npy"):
        decode_sample({**lacking, "json": json.dumps(v2).encode()}, "t")


def test_reading_labelled_shards_does_not_load_torch(stores, tmp_path):
    labels = _class_csv(tmp_path / "classes.csv", ["s0,1"])
    shard_stores(stores[:1], tmp_path / "sh", region=32, labels=labels, task="classification", progress=False)
    code = ("import sys; from xtstream.data.shards.reader import ShardSceneSet, load_manifest;"
            f"s = next(iter(ShardSceneSet(load_manifest({str(tmp_path / 'sh')!r}))));"
            "print(int(next(iter(s)).targets['label']), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"]


def test_cli_shard_takes_a_task(stores, tmp_path, capsys):
    from xtstream.cli import main as cli_main

    labels = _class_csv(tmp_path / "classes.csv", ["s1,2"])
    assert cli_main(["shard", str(stores[1]), "--out", str(tmp_path / "c"), "--region", "32", "--labels",
                     str(labels), "--task", "classification", "--quiet"]) == 0
    doc = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert doc["config"]["labels"]["task"] == "classification"
    assert int(next(iter(next(read_scenes(tmp_path / "c").scenes()))).targets["label"]) == 2
    assert cli_main(["shard", str(stores[1]), "--out", str(tmp_path / "d"), "--region", "32",
                     "--task", "classification", "--quiet"]) == 2
    assert "no labels file" in capsys.readouterr().err
    assert cli_main(["shard", str(stores[1]), "--out", str(tmp_path / "e"), "--region", "32", "--labels",
                     str(labels), "--task", "nope", "--quiet"]) == 2
    assert "no task registered as 'nope'" in capsys.readouterr().err
