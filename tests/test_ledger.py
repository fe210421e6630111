"""The run ledger: claim, refuse, resume, mark atomically, clear."""

import json
import pickle

import numpy as np
import pytest

from xtstream.data.ledger import DONE_DIR, PLAN_FILE, RunLedger, plan_diff, write_json_atomic
from xtstream.errors import ShardError


def ledger(out, **kw):
    return RunLedger(out, error=ShardError, what="shards", **kw)


def test_fresh_claim_records_the_plan(tmp_path):
    out = tmp_path / "new" / "out"
    assert ledger(out).claim("f1", {"region": 16}) is False
    assert json.loads((out / PLAN_FILE).read_text()) == {"fingerprint": "f1", "config": {"region": 16}}
    assert ledger(out).recorded()["fingerprint"] == "f1"
    assert ledger(tmp_path / "empty").claim("f1", {}) is False  # an empty directory is free to take


def test_same_plan_resumes_with_its_marks(tmp_path):
    first = ledger(tmp_path)
    first.claim("f1", {"region": 16})
    first.mark("a.tar", {"bytes": 3})
    first.mark("b.tar")
    again = ledger(tmp_path)
    assert again.claim("f1", {"region": 16}, overwrite=True) is True  # overwrite never redoes the same run
    assert again.done() == {"a.tar": {"bytes": 3}, "b.tar": None}


def test_other_plan_refused_naming_what_differs(tmp_path):
    ledger(tmp_path).claim("f1", {"region": 16, "labels": None})
    ledger(tmp_path).mark("a.tar")
    with pytest.raises(ShardError, match="holds shards of another run .differs in region.; pass overwrite"):
        ledger(tmp_path).claim("f2", {"region": 32, "labels": None})
    assert ledger(tmp_path).done() == {"a.tar": None}  # a refused claim touches nothing


def test_overwrite_replaces_another_plan(tmp_path):
    cleared = []
    ledger(tmp_path).claim("f1", {"region": 16})
    ledger(tmp_path).mark("a.tar")
    assert ledger(tmp_path).claim("f2", {"region": 32}, overwrite=True, clear=lambda: cleared.append(1)) is False
    assert cleared == [1]
    assert ledger(tmp_path).done() == {} and ledger(tmp_path).recorded()["fingerprint"] == "f2"


def test_foreign_directory_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="exists, is not empty and holds no xtstream plan"):
        ledger(tmp_path).claim("f1", {})
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_plan_recorded_by_the_output_itself(tmp_path):
    store = RunLedger(tmp_path / "s.zarr", error=ShardError, what="an ingest", plan_file=None)
    recorded = {"fingerprint": "f1", "config": {"chunk": 256, "created": "yesterday"}}
    assert store.claim("f1", {"chunk": 256}, recorded=recorded) is True
    with pytest.raises(ShardError, match="holds an ingest of another run .differs in chunk."):
        store.claim("f2", {"chunk": 128}, recorded=recorded)
    assert not (tmp_path / "s.zarr").exists()  # no plan file of its own


def test_leftover_temp_marker_is_not_done(tmp_path):
    run = ledger(tmp_path)
    run.claim("f1", {})
    run.mark("a.tar", {"bytes": 1})
    # a process killed between writing a marker's temp file and renaming it
    (tmp_path / DONE_DIR / "b.tar.json.tmp").write_text('{"bytes": 2}')
    (tmp_path / DONE_DIR / "c.tar.json").write_text("")  # emptied by a power loss
    assert run.done() == {"a.tar": {"bytes": 1}}


def test_clear_drops_marks_but_keeps_the_plan(tmp_path):
    run = ledger(tmp_path)
    run.claim("f1", {})
    run.mark("a.tar")
    run.clear()
    assert not (tmp_path / DONE_DIR).exists() and run.done() == {}
    assert ledger(tmp_path).claim("f1", {}) is True  # a rerun of the finished run is recognised


def test_ledger_pickles_to_workers(tmp_path):
    run = pickle.loads(pickle.dumps(ledger(tmp_path)))
    run.mark("a.tar")
    assert ledger(tmp_path).done() == {"a.tar": None}


def test_write_json_atomic_replaces_and_converts_numpy(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"n": 1})
    write_json_atomic(path, {"n": np.int64(2), "x": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"n": 2, "x": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json_atomic(path, {"o": object()})
    assert json.loads(path.read_text())["n"] == 2  # a failed write leaves the old file


def test_plan_diff_names_changed_keys_only():
    assert plan_diff({"a": 1, "b": 2, "extra": 0}, {"a": 1, "b": 3}) == ["b"]
    assert plan_diff({}, {"a": 1}) == ["a"]
