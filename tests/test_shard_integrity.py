"""Region shards under damage, the silent cases: a flipped byte in a sample is refused before the
sample is handed on, a rerun repairs a same-size corrupted shard, every region ``skip_bad`` leaves
out is counted and named and the count reaches the consumer from DataLoader workers,
``--overwrite`` deletes only what the previous run wrote, concurrent duplicate writes of one shard
or marker do not trip over each other's temporary files, and labels matching no store are named."""

import hashlib
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import xtstream.data.ledger as ledger_mod
from xtstream.cli import main
from xtstream.data.ingest import ingest
from xtstream.data.ledger import RunLedger
from xtstream.data.shards import read_scenes, shard_stores
from xtstream.data.shards.format import manifest_text
from xtstream.data.shards.writer import plan_shards, write_shard
from xtstream.data.sources import ArraySource
from xtstream.errors import LabelError, ShardError

REGION, MAX_COUNT = 16, 9
ROWS = {"one": 7 * 10, "two": 5 * 6}  # regions per scene: 100x150 and 70x90 px at 16 px


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("stores")
    return [ingest(ArraySource(rng.standard_normal((2, h, w)).astype("f4"), scene_id=sid),
                   root / f"{sid}.zarr", tile=64, progress=False)
            for sid, (h, w) in {"one": (100, 150), "two": (70, 90)}.items()]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    csv = tmp_path_factory.mktemp("labels") / "labels.csv"
    csv.write_text("scene_id,detect_scene_row,detect_scene_column\none,20,20\none,40,100\ntwo,30,30\n")
    return csv


@pytest.fixture(scope="module")
def clean(stores, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "shards"
    shard_stores(stores, out, region=REGION, max_count=MAX_COUNT, labels=labels, progress=False)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _member(shard: Path, suffix: str, nth: int = 0) -> tarfile.TarInfo:
    with tarfile.open(shard) as tar:
        return [m for m in tar.getmembers() if m.name.endswith(suffix)][nth]


def _flip(shard: Path, offset: int) -> None:
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x04
    shard.write_bytes(bytes(data))


def _read_until_error(src, **kw):
    """Region indices of scene 'one' delivered before the read fails (and the error)."""
    got = []
    with pytest.raises(ShardError) as err:
        for scene in read_scenes(src, **kw).scenes():
            for r in scene:
                got.append((scene.scene_id, r.index))
    return got, str(err.value)


# -- 3. a flipped byte in a sample -------------------------------------------------------------

@pytest.mark.parametrize("member", [".npy", ".vessel.npy", ".json"])
def test_flipped_byte_in_a_sample_is_refused_before_the_sample_is_yielded(clean, tmp_path, member):
    out = _copy(clean, tmp_path / "c")
    shard = out / "one-00002.tar"  # regions 18..26: region 20 holds the object at (40, 100) -> (2, 6)
    if member == ".json":  # a digit of the object's position: still valid JSON, silently wrong
        info = _member(shard, "00002_00006.json")
        text = shard.read_bytes()[info.offset_data: info.offset_data + info.size]
        pos = text.index(b'"row":', text.index(b'"objects":[{')) + len(b'"row":')
        assert text[pos:pos + 1].isdigit()
        data = bytearray(shard.read_bytes())
        data[info.offset_data + pos] = ord("9") if text[pos:pos + 1] != b"9" else ord("1")
        shard.write_bytes(bytes(data))
        key = "one/00002_00006"
    else:
        info = _member(shard, "00002_00004" + member)
        _flip(shard, info.offset_data + info.size - 7)  # inside the array data, past the .npy header
        key = "one/00002_00004"
    row, col = (int(v) for v in key.split("/")[1].split("_"))
    index = row * 10 + col
    for src in (out, sorted(str(p) for p in out.glob("*.tar"))):  # manifest, and plain tar list
        got, msg = _read_until_error(src)
        assert "one-00002.tar" in msg and key in msg and "checksum" in msg
        assert ("one", index) not in got and ("one", index - 1) in got
    # skip_bad leaves that one region out and counts it
    scenes = read_scenes(out, skip_bad=True)
    indices = {s.scene_id: [r.index for r in s] for s in scenes.scenes()}
    assert indices["one"] == [i for i in range(ROWS["one"]) if i != index]
    assert scenes.lost_regions == 1 and key in scenes.report()


def test_rerun_repairs_a_same_size_corrupted_shard(stores, labels, clean, tmp_path):
    out = _copy(clean, tmp_path / "r")
    shard = out / "two-00001.tar"
    info = _member(shard, ".npy")
    _flip(shard, info.offset_data + info.size // 2)
    assert shard.stat().st_size == (clean / "two-00001.tar").stat().st_size
    shard_stores(stores, out, region=REGION, max_count=MAX_COUNT, labels=labels, progress=False)
    assert shard.read_bytes() == (clean / "two-00001.tar").read_bytes()
    assert (out / "manifest.json").read_text() == (clean / "manifest.json").read_text()


# -- 4. every region skip_bad leaves out is counted and named, up to the training loop ----------

def _cut_between_samples(shard: Path) -> None:
    """Keep the shard's first 4 samples and end the tar properly: a whole tar, just shorter."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    keys = sorted({m.name.split(".")[0] for m in members})
    keep = [m for m in members if m.name.split(".")[0] in keys[:4]]
    end = keep[-1].offset_data + -(-keep[-1].size // 512) * 512
    shard.write_bytes(shard.read_bytes()[:end] + b"\0" * 1024)


def _regions_of(out: Path, name: str) -> int:
    return next(s["regions"] for s in json.loads((out / "manifest.json").read_text())["shards"] if s["name"] == name)


def _damage(out: Path, how: str) -> tuple[int, str]:
    """Damage ``out`` one way; return how many regions are lost and a word the report must hold."""
    if how == "deleted shard":
        (out / "one-00003.tar").unlink()
        return _regions_of(out, "one-00003.tar"), "one-00003.tar"
    if how == "shard cut between samples":
        _cut_between_samples(out / "one-00003.tar")
        # with the manifest the whole shard is refused (its size)
        return _regions_of(out, "one-00003.tar"), "one-00003.tar"
    if how == "shard removed from the manifest":
        lost = _regions_of(out, "one-00007.tar")  # the scene's last shard: its tail
        doc = json.loads((out / "manifest.json").read_text())
        for sc in doc["scenes"]:
            sc["shards"] = [n for n in sc["shards"] if n != "one-00007.tar"]
        doc.pop("crc32c", None)  # a manifest that lists fewer shards, not a damaged one: sealed again
        (out / "manifest.json").write_text(manifest_text(doc))
        return lost, "no shard holds them"
    if how == "whole scene's shards deleted":
        for p in out.glob("two-*.tar"):
            p.unlink()
        return ROWS["two"], "two-00000.tar"
    raise ValueError(how)


HOWS = ["deleted shard", "shard cut between samples", "shard removed from the manifest",
        "whole scene's shards deleted"]


@pytest.mark.parametrize("how", HOWS)
def test_skip_bad_counts_and_names_every_region_left_out(clean, tmp_path, how):
    out = _copy(clean, tmp_path / "d")
    lost, word = _damage(out, how)
    scenes = read_scenes(out, skip_bad=True)
    delivered = sum(len(list(s)) for s in scenes.scenes())
    assert delivered == ROWS["one"] + ROWS["two"] - lost
    assert scenes.lost_regions == lost
    assert word in scenes.report() and "not delivered" in scenes.report()


def test_tar_list_cut_cleanly_between_samples_is_counted(clean, tmp_path):
    out = _copy(clean, tmp_path / "t")
    _cut_between_samples(out / "one-00003.tar")  # a valid tar: only the grid tells regions are gone
    scenes = read_scenes(sorted(str(p) for p in out.glob("*.tar")), skip_bad=True)
    assert sum(len(list(s)) for s in scenes.scenes()) == ROWS["one"] + ROWS["two"] - (MAX_COUNT - 4)
    assert scenes.lost_regions == MAX_COUNT - 4 and "regions 31..35" in scenes.report()


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("how", HOWS)
def test_the_lost_count_reaches_the_loop_from_dataloader_workers(clean, tmp_path, how, workers):
    out = _copy(clean, tmp_path / "w")
    lost, _ = _damage(out, how)
    loader = torch.utils.data.DataLoader(read_scenes(out, chunk=4, skip_bad=True), batch_size=None,
                                         num_workers=workers)
    delivered = reported = 0
    records = []
    for chunk in loader:
        delivered += len(chunk)
        reported += chunk.info.get("lost_regions", 0)
        records += chunk.info.get("lost", [])
    assert delivered == ROWS["one"] + ROWS["two"] - lost
    assert reported == lost == sum(r["stop"] - r["start"] for r in records)
    assert all(r["scene_id"] in ROWS and r["cause"] for r in records)


def test_train_chunks_records_carry_the_lost_count(stores, labels, tmp_path):
    from conftest import tiny_model
    from xtstream.engine.train import train_chunks

    out = tmp_path / "m"
    shard_stores(stores, out, region=32, max_count=2, labels=labels, progress=False)
    (out / "one-00001.tar").unlink()  # regions 2..3 of 20: a gap inside the scene
    torch.manual_seed(0)
    model = tiny_model(region=32, chunk=2, context="xl", depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    records = list(train_chunks(model, read_scenes(out, chunk=2, skip_bad=True), opt))
    assert sum(r["lost_regions"] for r in records) == 2


# -- 5. --overwrite deletes only what the previous run wrote ------------------------------------

def test_overwrite_keeps_files_the_project_did_not_write(stores, clean, tmp_path):
    out = _copy(clean, tmp_path / "o")
    mine = {"mine.tar": b"user data", "two-00099.tar": b"named like a shard", "notes.txt": b"keep"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    shard_stores(stores, out, region=32, overwrite=True, progress=False)
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    listed = {s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert {p.name for p in out.glob("*.tar")} == listed | {"mine.tar", "two-00099.tar"}


def test_overwrite_refuses_to_replace_a_file_it_did_not_write(stores, tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    (out / "one-00000.tar").write_bytes(b"somebody else's")
    with pytest.raises(ShardError, match=r"one-00000\.tar.*not written by"):
        shard_stores(stores, out, region=REGION, overwrite=True, progress=False)
    assert (out / "one-00000.tar").read_bytes() == b"somebody else's"


# -- the .tmp marker and .partial files of duplicate concurrent writes --------------------------

def test_concurrent_duplicate_marks_do_not_collide(tmp_path, monkeypatch):
    """Two writers of one unit (a task dask ran twice) must not share a temporary file."""
    real = ledger_mod.os.replace
    barrier = threading.Barrier(2, timeout=10)

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            barrier.wait()  # both temporary files are written before either is renamed
        return real(src, dst)

    ledger = RunLedger(tmp_path / "out", what="test")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(ledger_mod.os, "replace", replace)
    errors = []

    def mark():
        try:
            ledger.mark("a-00000.tar", {"bytes": 1})
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=mark) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and ledger.done() == {"a-00000.tar": {"bytes": 1}}
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_concurrent_duplicate_shard_writes_leave_one_whole_shard(stores, clean, tmp_path, monkeypatch):
    import xtstream.data.shards.writer as writer

    out = tmp_path / "dup"
    plan = plan_shards(stores, out, region=REGION, max_count=MAX_COUNT)
    task = plan.tasks[0]
    real = writer.os.replace
    barrier = threading.Barrier(2, timeout=10)

    def replace(src, dst):
        if str(src).endswith(".partial"):
            barrier.wait()
        return real(src, dst)

    monkeypatch.setattr(writer.os, "replace", replace)
    errors = []

    def run():
        try:
            write_shard(task, str(out))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert errors == []
    data = (out / task.name).read_bytes()
    unlabelled = tmp_path / "unlabelled"
    shard_stores(stores, unlabelled, region=REGION, max_count=MAX_COUNT, progress=False)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256((unlabelled / task.name).read_bytes()).hexdigest()
    assert not list(out.glob("*.partial")) and not list(out.rglob("*.tmp"))


# -- 6. labels whose scene ids match no store ---------------------------------------------------

def test_labels_matching_no_store_are_named_with_near_matches(stores, tmp_path):
    csv = tmp_path / "upper.csv"
    csv.write_text("scene_id,detect_scene_row,detect_scene_column\nONE,20,20\nTwo,30,30\n")
    with pytest.raises(LabelError, match=r"upper\.csv.*'ONE'.*'one'"):
        shard_stores(stores, tmp_path / "a", region=REGION, labels=csv, progress=False)
    assert not (tmp_path / "a" / "manifest.json").exists()
    code = main(["shard", *map(str, stores), "--out", str(tmp_path / "b"), "--region", str(REGION),
                 "--labels", str(csv), "--quiet"])
    assert code == 2
    # one store matched exactly, the other only by case: still refused, naming the near match
    csv.write_text("scene_id,detect_scene_row,detect_scene_column\none,20,20\nTWO,30,30\n")
    with pytest.raises(LabelError, match=r"'TWO'.*'two'"):
        shard_stores(stores, tmp_path / "c", region=REGION, labels=csv, progress=False)
    # ids of scenes not being sharded (no near match) are fine: a labels file covers many scenes
    csv.write_text("scene_id,detect_scene_row,detect_scene_column\none,20,20\nother_scene,30,30\n")
    shard_stores(stores, tmp_path / "d", region=REGION, labels=csv, progress=False)


@pytest.mark.parametrize("context", ["xl", "full"])
def test_model_streams_past_lost_regions_and_closes_the_scene(stores, labels, tmp_path, context):
    """Gaps that do not fall on chunk boundaries, and a lost tail, must not stop the model: the chunk
    before a gap is short, the scene closes at its last delivered chunk."""
    from conftest import tiny_model
    from xtstream.engine import SceneStates

    out = tmp_path / "g"
    shard_stores(stores, out, region=32, max_count=2, labels=labels, progress=False)
    (out / "one-00001.tar").unlink()  # regions 2..3 of 20: chunks of 3 are cut at region 1
    (out / "one-00009.tar").unlink()  # regions 18..19: the tail
    torch.manual_seed(0)
    model = tiny_model(region=32, chunk=3, context=context, depth=1).eval()
    states = SceneStates()
    with torch.no_grad():
        done = list(model.stream(read_scenes(out, chunk=3, skip_bad=True), states=states))
    assert sum(len(c) for c in done) == 20 + 9 - 4
    assert sum(c.info.get("lost_regions", 0) for c in done) == 4
    assert len(states) == 0  # no scene left open
