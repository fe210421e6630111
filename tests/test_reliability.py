"""A seeded sample of the fault-injection battery (``benchmarks/reliability.py`` runs all of it):
kills, a full disk, damaged outputs, bad and hostile inputs, fuzzed parsers. Every case must end
``ok`` (the right result, or repaired) or as a ``clear_error`` (one line naming the file, a
documented exit code) — never a silent loss, never a traceback."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _fault_cases as fc  # noqa: E402
import _fault_damage as fd  # noqa: E402
import _fault_fuzz as ff  # noqa: E402
from _fault_runner import preload, run_command  # noqa: E402

PASS = ("ok", "clear_error")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A 128 x 128 scene and the clean output of every command on it."""
    threads = torch.get_num_threads()
    preload()  # one torch thread: forking the test process stays safe
    yield fc.build_workspace(tmp_path_factory.mktemp("battery"), height=128, width=128, seed=1)
    torch.set_num_threads(threads)


def check(cases):
    for case in cases:
        assert case.outcome in PASS, (case.fault, case.detail, case.note, case.runs)


@pytest.mark.parametrize("command", fc.COMMANDS)
def test_a_killed_command_reruns_to_the_clean_output(ws, tmp_path, command):
    check([fc.kill_case(ws, command, random.Random(7), tmp_path)])


@pytest.mark.parametrize("command", fc.COMMANDS)
def test_a_full_disk_is_one_clear_line_and_a_rerun_finishes(ws, tmp_path, command):
    """ENOSPC wherever the byte budget runs out: exit 3, no partial file, then the clean output."""
    case = fc.disk_full_case(ws, command, random.Random(3), tmp_path)
    check([case])
    assert case.runs[0]["code"] == 3 and case.runs[1]["code"] == 0


def test_a_full_disk_in_small_writers_too(ws, tmp_path):
    """The injected full disk is not a single-writer fake: full from the first, or the last, file
    a command writes, it lands in the store's metadata, the shard run's plan, the shard manifest."""
    hits = {}
    for command, nth in (("ingest", 1), ("shard", 1), ("shard", ws.files["shard"])):
        out = tmp_path / f"{command}{nth}"
        run = run_command(ws.argv(command, out), budget_root=tmp_path, full_at_file=nth)
        assert run.code == 3 and str(out) in run.last_line, run.stderr[-2000:]
        assert not fc.leftovers(out)
        hits[fc.writer_of(run.disk_full_at)] = run.disk_full_at
    assert len(hits) == 3, hits


@pytest.mark.parametrize("damage", [
    ("store", "flip"), ("store", "truncate"), ("shard", "flip"), ("manifest", "flip"),
    ("checkpoint", "flip"), ("resume", "flip"), ("predictions", "truncate")])
def test_damaged_outputs_are_named_on_read_and_repaired_on_rerun(ws, tmp_path, damage):
    """Before issue 11 part B a flipped checkpoint byte loaded as a wrong weight and a cut scene
    CSV was merged as it was (silent losses); a manifest flip could rename a scene."""
    what, kind = damage
    rng = random.Random(5)
    cases = {"store": lambda: fd.store_damage(ws, rng, tmp_path, kind, "tile"),
             "shard": lambda: fd.shard_damage(ws, rng, tmp_path, kind, "tar"),
             "manifest": lambda: fd.shard_damage(ws, rng, tmp_path, kind, "manifest"),
             "checkpoint": lambda: fd.checkpoint_damage(ws, rng, tmp_path, kind),
             "resume": lambda: fd.resume_damage(ws, rng, tmp_path, kind),
             "predictions": lambda: fd.prediction_damage(ws, rng, tmp_path, kind)}[what]()
    check(cases)


@pytest.mark.parametrize("kind", ["truncated", "bit-flipped", "NaN and inf", "1x1", "huge declared size"])
def test_bad_geotiffs_are_ingested_exactly_or_named(ws, tmp_path, kind):
    check(fd.bad_geotiff(ws, random.Random(2), tmp_path, kind))


def test_wrong_band_counts_empty_scenes_and_impossible_labels_are_named(ws, tmp_path):
    rng = random.Random(4)
    for name, case in (("a", fd.wrong_band_count), ("b", fd.empty_scene), ("c", fd.bad_labels)):
        (tmp_path / name).mkdir()
        check(case(ws, rng, tmp_path / name))


@pytest.mark.parametrize("kind", ["path traversal", "pickled payload", "checkpoint"])
def test_hostile_files_never_run_code_or_escape(ws, tmp_path, kind):
    rng = random.Random(6)
    cases = (fd.pickled_checkpoint(ws, rng, tmp_path) if kind == "checkpoint"
             else fd.hostile_shard(ws, rng, tmp_path, kind))
    check(cases)
    assert all(c.outcome == "clear_error" for c in cases)


@pytest.mark.parametrize("parser", ["labels CSV (xView3)", "labels CSV (classification)", "dataset spec",
                                    "training config", "shard manifest", "predictions CSV (xView3)"])
def test_fuzzed_inputs_parse_or_raise_a_clear_error(ws, tmp_path, parser):
    valid, parse, filename, structured = ff.parsers(ws)[parser]
    check(ff.fuzz(parser, valid, parse, filename=filename, structured=structured, examples=25, seed=0,
                  workdir=tmp_path))


@pytest.mark.slow
def test_a_dask_worker_killed_mid_graph_is_retried(ws, tmp_path):
    case = fc.worker_loss_case(ws, random.Random(0), tmp_path)
    check([case])
    assert case.outcome == "ok"


def test_the_battery_writes_its_figures_and_table(tmp_path):
    import reliability
    from _fault_runner import Case

    cases = [Case("kill -9 during shard", "a", "ok"), Case("kill -9 during shard", "b", "clear_error", "x"),
             Case("fuzzed dataset spec", "c", "unclear_error", "KeyError")]
    doc = reliability.write_results(cases, {"seed": 0, "quick": True, "wall_s": 1.0}, tmp_path / "r.json",
                                    tmp_path / "r.md", "python benchmarks/reliability.py --quick")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {k: saved[k] for k in ("cases", "passed", "silent_loss", "unclear_error")} == \
        {"cases": 3, "passed": 2, "silent_loss": 0, "unclear_error": 1} == {k: doc[k] for k in saved if k in
                                                                            ("cases", "passed", "silent_loss", "unclear_error")}
    assert saved["by_fault"]["kill -9 during shard"] == {"tried": 2, "ok": 1, "clear_error": 1, "silent_loss": 0,
                                                         "unclear_error": 0}
    table = (tmp_path / "r.md").read_text()
    assert "| kill -9 during shard | 2 | 1 | 1 | 0 | 0 |" in table and "## Failures" in table
