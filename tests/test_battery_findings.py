"""Defects the fault-injection battery (``benchmarks/reliability.py``) found, each held by a test
that failed on the code before the fix: silent losses (a flipped checkpoint byte, a damaged scene
CSV, a missing final model, a renamed scene in a manifest) and runs that could not resume after a
kill at an unlucky moment."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import xtstream
from conftest import tiny_model
from test_clean_errors import REGION, run_cli, work  # noqa: F401  (the fixture)
from xtstream.data.ingest import ingest
from xtstream.data.shards import read_scenes
from xtstream.data.sources import ArraySource
from xtstream.data.store import open_store
from xtstream.errors import ModelConfigError, OutputError, ShardError


def test_a_flipped_byte_in_a_checkpoint_is_refused_not_loaded_as_a_wrong_weight(tmp_path):
    """torch's zip container does not check its records: the flip loaded silently."""
    model = tiny_model()
    path = xtstream.save_checkpoint(model, tmp_path / "m.pt")
    largest = max(model.state_dict().values(), key=lambda t: t.numel()).numpy().tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(largest)
    assert at > 0
    raw[at + len(largest) // 2] ^= 0x10  # one weight changes value; the file stays a valid zip
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelConfigError, match=r"m\.pt fails its crc32c checksum"):
        xtstream.load_model(path)


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    model = tiny_model()
    payload = {"format": "xtstream-model", "version": 1, "config": model.config.to_dict(),
               "state_dict": model.state_dict()}
    torch.save(payload, tmp_path / "old.pt")
    assert xtstream.load_model(tmp_path / "old.pt").config == model.config


def test_a_full_disk_while_saving_a_checkpoint_is_the_oserror_and_leaves_no_tmp(tmp_path, monkeypatch):
    """torch turned the failed write into ``RuntimeError: unexpected pos …`` and the half-written
    ``.tmp`` stayed on the full disk."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(memoryview(data).cast("B"))
            if self.n > 20_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("xtstream.models.checkpoint.open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
    with pytest.raises(OSError) as err:
        xtstream.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    from xtstream._runtime.oserrors import writing

    with pytest.raises(OutputError, match="no space left"), writing(tmp_path):
        xtstream.save_checkpoint(tiny_model(), tmp_path / "m.pt")


def test_a_flipped_byte_in_a_manifest_is_refused(work, tmp_path):
    """A flip in a scene id or a georeference read as another scene or another place."""
    doc = (work["shards"] / "manifest.json").read_text()
    for tar in work["shards"].glob("*.tar"):
        (tmp_path / tar.name).symlink_to(tar)
    (tmp_path / "manifest.json").write_text(doc.replace('"scene_id": "s0"', '"scene_id": "s1"', 1))
    with pytest.raises(ShardError, match=r"manifest\.json: fails its crc32c checksum"):
        read_scenes(tmp_path, chunk=2)


def test_a_damaged_scene_csv_is_predicted_again_not_merged(work, tmp_path, capsys):
    out = tmp_path / "pred"
    argv = ["predict", str(work["checkpoint"]), str(work["store"]), "--out", str(out), "--device", "cpu", "--quiet"]
    assert run_cli(argv, capsys)[0] == 0
    clean = (out / "predictions.csv").read_text()
    part = out / "scenes" / "s0.csv"
    part.write_text(part.read_text()[:-9])  # a cut row
    with pytest.warns(UserWarning, match=r"s0\.csv: differs from the SHA-256 recorded"):
        assert run_cli(argv, capsys)[0] == 0
    assert (out / "predictions.csv").read_text() == clean


def test_an_ingest_killed_while_laying_out_its_store_resumes(tmp_path, monkeypatch):
    """Killed after the group's metadata and before the arrays', the store was "ours, incomplete"
    with no image array: every rerun died in zarr (``ArrayNotFoundError``)."""
    data = np.random.default_rng(0).random((2, 40, 50)).astype("f4")
    real = xr.Dataset.to_zarr

    def killed(self, store, *args, **kw):
        real(xr.Dataset(attrs=self.attrs), store, *args, **kw)  # the group and its attributes only
        raise KeyboardInterrupt
    monkeypatch.setattr(xr.Dataset, "to_zarr", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest(ArraySource(data, scene_id="a"), tmp_path / "a.zarr", tile=16, progress=False)
    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    ingest(ArraySource(data, scene_id="a"), tmp_path / "a.zarr", tile=16, progress=False)
    assert np.array_equal(open_store(tmp_path / "a.zarr")["image"].values, data)


def test_a_predict_killed_while_creating_a_scene_store_resumes(work, tmp_path, capsys, monkeypatch):
    """A half-created prediction store under its real name was "not an xtstream prediction store"
    to the rerun, which refused to go on."""
    real = xr.Dataset.to_zarr

    def killed(self, store, *args, **kw):
        Path(store).mkdir(parents=True)
        (Path(store) / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
        raise KeyboardInterrupt
    out = tmp_path / "pred"
    argv = ["predict", str(work["checkpoint"]), str(work["store"]), "--out", str(out), "--device", "cpu", "--quiet"]
    monkeypatch.setattr(xr.Dataset, "to_zarr", killed)
    model = tiny_model(context="xl", head="xview3", in_chans=2, region=REGION)
    ck = xtstream.save_checkpoint(model, tmp_path / "x.pt")
    argv[1] = str(ck)
    assert run_cli(argv, capsys)[0] == 130  # interrupted
    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "scenes").iterdir() if p.name.startswith(".")) == []


def test_a_run_killed_after_its_last_checkpoint_still_writes_its_model(work, tmp_path, capsys, monkeypatch):
    """The rerun found the run complete and returned, exit 0, with no ``model.pt``."""
    import yaml

    import xtstream.models.checkpoint as ck

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**work["config"], "out": str(tmp_path / "run")}))
    real = ck.save_checkpoint

    def killed_at_the_model(model, path, **extra):
        if Path(path).name == "model.pt":
            raise KeyboardInterrupt
        return real(model, path, **extra)
    monkeypatch.setattr(ck, "save_checkpoint", killed_at_the_model)
    assert run_cli(["train", "--config", str(cfg), "--quiet"], capsys)[0] == 130
    monkeypatch.setattr(ck, "save_checkpoint", real)
    assert not (tmp_path / "run" / "model.pt").exists()
    code, err = run_cli(["train", "--config", str(cfg), "--quiet"], capsys)
    assert code == 0, err
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["kind"] == "end"


def test_a_checkpoint_holding_pickled_code_is_one_line_and_never_runs(work, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('x')",)
    saved = torch.load(work["checkpoint"], weights_only=True)
    saved["extra"] = Payload()
    torch.save(saved, tmp_path / "evil.pt")
    code, err = run_cli(["predict", str(tmp_path / "evil.pt"), str(work["store"]), "--out", str(tmp_path / "p"),
                         "--device", "cpu", "--quiet"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "evil.pt" in err and "GLOBAL" in err, err
    assert not marker.exists()


def test_a_flipped_byte_in_a_stores_attributes_is_refused(tmp_path):
    """A flip in the scene id (or band names, georeference) of a store's zarr.json went on into
    shard names and predictions: the attributes carry a crc32c."""
    data = np.zeros((1, 20, 20), "f4")
    store = ingest(ArraySource(data, scene_id="alpha"), tmp_path / "a.zarr", tile=16, progress=False)
    meta = store / "zarr.json"
    meta.write_text(meta.read_text().replace('"scene_id": "alpha"', '"scene_id": "alphb"'))
    from xtstream.errors import StoreError

    with pytest.raises(StoreError, match=r"a\.zarr: its attributes .* fail their crc32c"):
        open_store(store)
