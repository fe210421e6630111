"""Region shards under damage: interrupted runs resume, bad shards and samples are named or skipped."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

import xtstream.data.shards.writer as writer
from xtstream.errors import LabelError, ShardError, StoreError
from xtstream.data.ingest import ingest
from xtstream.data.ledger import DONE_DIR
from xtstream.data.shards import read_scenes, shard_stores
from xtstream.data.shards.reader import _tar_samples
from xtstream.data.sources import ArraySource


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return {"one": rng.standard_normal((2, 100, 150)).astype("f4"),
            "two": rng.standard_normal((2, 70, 90)).astype("f4")}


@pytest.fixture(scope="module")
def stores(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return [ingest(ArraySource(img, scene_id=sid), root / f"{sid}.zarr", tile=64, progress=False)
            for sid, img in images.items()]


@pytest.fixture(scope="module")
def clean(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "shards"
    shard_stores(stores, out, region=16, max_count=9, progress=False)
    return out


def _state(out):
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(out.glob("*.tar"))}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_interrupted_run_resumes_without_rewriting(stores, clean, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = writer.encode_sample

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 40:
            raise RuntimeError("simulated crash")
        return real(*a, **kw)

    monkeypatch.setattr(writer, "encode_sample", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        shard_stores(stores, out, region=16, max_count=9, scheduler="sync", progress=False)
    monkeypatch.setattr(writer, "encode_sample", real)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.partial"))  # the failed write removed its partial file
    before = _state(out)
    assert 1 <= len(before) < len(_state(clean))  # some shards finished before the crash, not all
    with pytest.raises(ShardError):  # no manifest yet: not a finished shard set
        list(read_scenes(out).scenes())

    shard_stores(stores, out, region=16, max_count=9, scheduler="sync", progress=False)
    after = _state(out)
    assert {k: after[k] for k in before} == before  # complete shards untouched (mtime and bytes)
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in _state(clean).items()}  # = a clean run
    assert json.loads((out / "manifest.json").read_text())["shards"] == json.loads((clean / "manifest.json").read_text())["shards"]
    assert not list(out.glob("*.partial")) and not (out / DONE_DIR).exists()
    # a finished run is not redone
    shard_stores(stores, out, region=16, max_count=9, progress=False)
    assert _state(out) == after


def test_killed_process_resumes(stores, clean, tmp_path):
    out = tmp_path / "killed"
    script = f"""
import os, signal
import xtstream.data.shards.writer as w
real, n = w.encode_sample, [0]
def kill_at_30(*a, **k):
    n[0] += 1
    if n[0] == 30:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
w.encode_sample = kill_at_30
w.shard_stores({[str(s) for s in stores]!r}, {str(out)!r}, region=16, max_count=9, scheduler="sync", progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    before = _state(out)
    assert 1 <= len(before) < len(_state(clean))
    assert len(list(out.glob("*.partial"))) == 1  # the killed writer's
    shard_stores(stores, out, region=16, max_count=9, progress=False)
    assert not list(out.glob("*.partial"))  # the rerun removed it
    after = _state(out)
    assert {k: after[k] for k in before} == before
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in _state(clean).items()}


def test_other_run_in_same_directory_refused(stores, clean, tmp_path):
    out = _copy(clean, tmp_path / "c")
    with pytest.raises(ShardError, match="another run.*region"):
        shard_stores(stores, out, region=32, progress=False)
    shard_stores(stores, out, region=32, overwrite=True, progress=False)
    assert next(read_scenes(out).scenes()).grid.region == 32
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not empty"):
        shard_stores(stores, foreign, region=16, progress=False)


def test_incomplete_store_refused(images, tmp_path):
    store = ingest(ArraySource(images["two"], scene_id="x"), tmp_path / "x.zarr", tile=64, progress=False)
    import zarr

    group = zarr.open_group(store, mode="r+")
    group.attrs["xtstream"] = {**group.attrs["xtstream"], "complete": False}
    with pytest.raises(StoreError, match="incomplete"):
        shard_stores([store], tmp_path / "s", region=16, progress=False)


@pytest.mark.parametrize("cut", [0.5, "boundary", "garbled"])
def test_truncated_or_corrupt_tar_named(clean, tmp_path, cut):
    out = _copy(clean, tmp_path / "t")
    shard = out / "one-00001.tar"
    data = bytearray(shard.read_bytes())
    if cut == 0.5:
        data = data[: len(data) // 2]
    elif cut == "boundary":  # cut between two members: Python's tarfile alone would not notice
        sample = (512 + 512) + (512 + 2560)  # .json (< 512 B) + .npy (2 x 16 x 16 float32 + header)
        data = data[: sample + 1024]  # one whole sample and the .json of the next
    else:  # the header of the second sample's first member
        sample = (512 + 512) + (512 + 2560)
        data[sample + 10: sample + 110] = b"\xff" * 100
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="one-00001.tar"):
        for scene in read_scenes(out).scenes():
            list(scene)
    # without the manifest the tar itself gives the damage away
    tars = [str(p) for p in sorted(out.glob("one-*.tar"))]
    with pytest.raises(ShardError, match=r"one-00001\.tar: (truncated|corrupt)"):
        list(next(read_scenes(tars).scenes()))


def test_skip_bad_counts_and_reports(clean, tmp_path, images):
    out = _copy(clean, tmp_path / "s")
    shard = out / "one-00001.tar"
    shard.write_bytes(shard.read_bytes()[:-3000])
    scenes = read_scenes(out, skip_bad=True)
    regions = {s.scene_id: [r.index for r in s] for s in scenes.scenes()}
    assert regions["one"] == list(range(9)) + list(range(18, 70))  # the damaged shard's 9 regions are gone
    assert len(regions["two"]) == 30
    assert len(scenes.bad) == 1 and "one-00001.tar" in scenes.report()


def _rewrite(shard, edit):
    """Rewrite a shard sample by sample, ``edit(key, files) -> files or None``, with checksums
    that match the edited members (as a crafted shard would have them): what is tested is the
    check after the checksums."""
    from xtstream.data.shards.format import _SUMS_MARK, _json_with_sums

    samples = list(_tar_samples(str(shard)))
    with wds.TarWriter(str(shard), encoder=False) as tar:
        for key, files in samples:
            files = edit(key, dict(files))
            if files is not None:
                if "json" in files:
                    raw = files["json"]
                    files["json"] = _json_with_sums(raw[:raw.rfind(_SUMS_MARK)] + b"}", files)
                tar.write({"__key__": key, **files})


def test_sample_without_json_named_and_skippable(clean, tmp_path):
    out = _copy(clean, tmp_path / "j")
    tars = [str(p) for p in sorted(out.glob("one-*.tar"))]
    _rewrite(tars[1], lambda key, f: {"npy": f["npy"]} if key.endswith("00001_00002") else f)
    with pytest.raises(ShardError, match=r"one-00001\.tar: sample one/00001_00002: sample has no \.json"):
        list(next(read_scenes(tars).scenes()))
    scenes = read_scenes(tars, skip_bad=True)
    got = [r.index for r in next(scenes.scenes())]
    assert got == [i for i in range(70) if i != 12] and len(scenes.bad) == 1


def test_pickled_npy_is_refused_never_loaded(clean, tmp_path):
    out = _copy(clean, tmp_path / "p")
    tars = [str(p) for p in sorted(out.glob("one-*.tar"))]
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    _rewrite(tars[0], lambda key, f: {**f, "npy": buf.getvalue()} if key.endswith("00000_00003") else f)
    with pytest.raises(ShardError, match=r"00000_00003\.npy: not a valid \.npy.*allow_pickle"):
        list(next(read_scenes(tars).scenes()))


def test_shard_from_another_grid_named(stores, clean, tmp_path):
    other = tmp_path / "other"
    shard_stores(stores[:1], other, region=8, max_count=40, progress=False)
    out = _copy(clean, tmp_path / "g")
    shutil.copy(other / "one-00001.tar", out / "one-00001.tar")
    tars = [str(p) for p in sorted(out.glob("one-*.tar"))]
    with pytest.raises(ShardError, match=r"one-00001\.tar: sample one/\d+_\d+: region size 8, expected 16"):
        list(next(read_scenes(tars).scenes()))
    with pytest.raises(ShardError, match="region 16, expected 8"):
        next(read_scenes(tars, region=8).scenes())
    with pytest.raises(ShardError, match="manifest lists"):  # with the manifest: size differs
        list(next(read_scenes(out).scenes()))


def test_out_of_order_shards_detected(clean, tmp_path):
    out = _copy(clean, tmp_path / "o")
    a, b = out / "one-00001.tar", out / "one-00002.tar"
    os.rename(a, out / "tmp.tar")
    os.rename(b, a)
    os.rename(out / "tmp.tar", b)
    tars = [str(p) for p in sorted(out.glob("one-*.tar"))]
    with pytest.raises(ShardError, match=r"region 18 follows region 8"):
        list(next(read_scenes(tars).scenes()))


def test_bad_labels_named(stores, tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("scene_id,detect_scene_row\none,3\n")
    with pytest.raises(LabelError, match=r"l\.csv: .*detect_scene_column"):
        shard_stores(stores, tmp_path / "a", region=16, labels=csv, progress=False)
    csv.write_text("scene_id,detect_scene_row,detect_scene_column\none,3,4\nelsewhere,5000,5000\ntwo,69,95\n")
    with pytest.raises(LabelError, match=r"line 4: object of scene 'two' at row 69, column 95 is outside"):
        shard_stores(stores, tmp_path / "b", region=16, labels=csv, progress=False)


def test_verify_checks_checksums(clean, tmp_path):
    import tarfile

    out = _copy(clean, tmp_path / "v")
    shard = out / "two-00000.tar"
    with tarfile.open(shard) as tar:
        npy = next(m for m in tar.getmembers() if m.name.endswith("00000_00000.npy"))
    data = bytearray(shard.read_bytes())
    data[npy.offset_data + npy.size // 2] ^= 0xFF  # inside the first sample's pixels
    shard.write_bytes(bytes(data))
    # the sample's own crc32c refuses it by default, before it is handed on
    with pytest.raises(ShardError, match=r"two/00000_00000\.npy: fails its crc32c checksum"):
        for s in read_scenes(out).scenes():
            list(s)
    # a byte outside every sample (a member's tar padding) only the shard's SHA-256 sees
    data[npy.offset_data + npy.size // 2] ^= 0xFF
    data[npy.offset_data + npy.size + 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert sum(1 for s in read_scenes(out).scenes() for _ in s) == 100
    with pytest.raises(ShardError, match="SHA-256 differs"):
        for s in read_scenes(out, verify=True).scenes():
            list(s)
