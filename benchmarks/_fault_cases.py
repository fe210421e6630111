"""The battery's workspace and its process faults: kills at random moments, a disk that fills up,
dask workers lost mid-graph. Damaged files and bad inputs: :mod:`_fault_damage`; parser fuzzing:
:mod:`_fault_fuzz`.

Every case runs a real ``xtstream`` command (:func:`_fault_runner.run_command`), then judges the
output against a clean run's (:class:`Workspace`, built once per battery by the same commands).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from _fault_runner import Case, Run, classify_error, run_command, summary

REGION = 64
TILE = 64
#: the tiny xT of the battery's runs: ConvNeXt with one block per stage, one XL layer
MODEL = {"region": REGION, "chunk": 2, "context": "xl", "dim": 32, "depth": 1, "heads": 2, "head": "xview3",
         "in_chans": 3, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64],
         "head_kwargs": {"decoder_channels": [16, 8, 8]}}
COMMANDS = ("ingest", "shard", "predict", "train")


@dataclass
class Workspace:
    """A scene and the clean outputs of every command on it (the references faults are judged by)."""

    root: Path
    scene: Path
    labels: Path
    store: Path
    shards: Path
    run: Path
    pred: Path
    pred_shards: Path  # predictions read from the shards (same pixels: the same as ``pred``)
    #: command -> seconds its clean run took, bytes it wrote, files it opened for writing
    wall: dict[str, float] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.run / "model.pt"

    def argv(self, command: str, out: Path, *extra: str) -> list[str]:
        """The command line of ``command`` writing ``out``: the clean run's, into another place."""
        if command == "ingest":
            return ["ingest", self.scene, "--out", out, "--spec", "xview3", "--tile", TILE, "--allow-small",
                    "--quiet", *extra]
        if command == "shard":
            return ["shard", self.store, "--out", out, "--region", REGION, "--labels", self.labels,
                    "--max-count", 3, "--quiet", *extra]
        if command == "predict":
            return ["predict", self.checkpoint, self.store, "--out", out, "--device", "cpu", "--threshold", "0.3",
                    "--quiet", *extra]
        assert command == "train"
        return ["train", "--config", self.config(out), "--quiet", *extra]

    def config(self, out: Path, **changes: Any) -> Path:
        """A training config over the reference shards writing ``out`` (next to it, as YAML)."""
        cfg = {"out": str(out), "task": "xview3", "seed": 0, "epochs": 2,
               "model": {"name": "convnext_atto", "options": MODEL},
               "data": {"shards": str(self.shards), "workers": 0, "shuffle": True},
               "optimiser": {"lr": 1e-3}, "checkpoint": {"every": 2}, "runtime": {"threads": 1, "device": "cpu"}}
        cfg.update(changes)
        path = out.parent / f"{out.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def reference(self, command: str) -> Path:
        return {"ingest": self.store, "shard": self.shards, "predict": self.pred, "train": self.run}[command]


def build_workspace(root: Path, *, height: int = 192, width: int = 256, seed: int = 0) -> Workspace:
    """Synthesise a scene and run every command on it once, cleanly (timed, bytes counted)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    scene = root / "scene"
    ws = Workspace(root, scene, scene / "labels.csv", root / "ref" / "store.zarr", root / "ref" / "shards",
                   root / "ref" / "run", root / "ref" / "pred", root / "ref" / "pred_shards")
    _must(run_command(["synth", scene, "--height", height, "--width", width, "--seed", seed, "--quiet"]))
    for command in ("ingest", "shard", "train", "predict"):  # each reads what one before it wrote
        out = ws.reference(command)
        run = _must(run_command(ws.argv(command, out), budget_root=out.parent))
        ws.written[command] = run.bytes_written
        ws.files[command] = run.files_written
        # timed again: the first run in a fresh process pays for lazy imports, later ones do not
        again = _must(run_command(ws.argv(command, root / "timing" / command)))
        ws.wall[command] = min(run.wall_s, again.wall_s)
    shutil.rmtree(root / "timing", ignore_errors=True)
    argv = ws.argv("predict", ws.pred_shards)
    argv[2] = ws.shards
    _must(run_command(argv))
    return ws


def _must(run: Run) -> Run:
    if run.code != 0:
        raise RuntimeError(f"clean run failed ({run.code}): {run.argv}\n{run.stderr[-3000:]}")
    return run


# -- is an output the clean one? -------------------------------------------------------------------

def same_output(command: str, got: Path, ref: Path) -> tuple[bool, str]:
    """Whether ``got`` holds what the clean run wrote in ``ref`` (``(True, "")``, or why not)."""
    try:
        return {"ingest": _same_store, "shard": _same_shards, "predict": _same_predictions,
                "train": _same_run}[command](got, ref)
    except Exception as err:  # noqa: BLE001 - an unreadable output is not the clean one
        return False, f"cannot read {got}: {type(err).__name__}: {err}"


def _same_store(got: Path, ref: Path) -> tuple[bool, str]:
    from xtstream.data.store import open_store

    a, b = open_store(got)["image"].values, open_store(ref)["image"].values
    if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
        return False, f"{got}: pixels differ from a clean ingest"
    return True, ""


def _same_shards(got: Path, ref: Path) -> tuple[bool, str]:
    import json

    names = sorted(p.name for p in ref.glob("*.tar"))
    if sorted(p.name for p in got.glob("*.tar")) != names:
        return False, f"{got}: shard files differ from a clean run's"
    for name in names:
        if (got / name).read_bytes() != (ref / name).read_bytes():
            return False, f"{got / name}: bytes differ from a clean run's"
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (got, ref))
    keys = ("scene_id", "grid", "bands", "dtype", "scene_shape", "crs", "transform", "regions", "objects")
    if a["shards"] != b["shards"] or [{k: s.get(k) for k in keys} for s in a["scenes"]] != \
            [{k: s.get(k) for k in keys} for s in b["scenes"]]:
        return False, f"{got}/manifest.json differs from a clean run's (scenes or shards)"
    return True, ""


def _same_predictions(got: Path, ref: Path) -> tuple[bool, str]:
    import xarray as xr

    if (got / "detections.csv").read_text() != (ref / "detections.csv").read_text():
        return False, f"{got}/detections.csv differs from a clean run's"
    for store in sorted((ref / "scenes").glob("*.zarr")):
        a = xr.open_zarr(got / "scenes" / store.name, consolidated=False)
        b = xr.open_zarr(store, consolidated=False)
        for name in b.data_vars:
            if not np.array_equal(a[name].values, b[name].values, equal_nan=True):
                return False, f"{got / 'scenes' / store.name}: {name} differs from a clean run's"
    return True, ""


def _same_run(got: Path, ref: Path) -> tuple[bool, str]:
    import torch

    a = torch.load(got / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        return False, f"{got}/model.pt: weights differ from an uninterrupted run's"
    steps = [line for line in (got / "log.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    want = [line for line in (ref / "log.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    if len(steps) != len(want):
        return False, f"{got}/log.jsonl: {len(steps)} steps logged, an uninterrupted run logs {len(want)}"
    return True, ""


def judge_rerun(command: str, run: Run, out: Path, ref: Path) -> tuple[str, str]:
    """Outcome of a command that should leave ``out`` equal to ``ref``."""
    if run.code == 0:
        same, why = same_output(command, out, ref)
        return ("ok", "") if same else ("silent_loss", why)
    return classify_error(run, out)


def leftovers(out: Path) -> list[str]:
    """Temporary files a failed writer left behind (they fill a full disk further)."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and (p.name.endswith((".partial", ".tmp")) or ".partial" in p.name))


# -- kills at random moments -------------------------------------------------------------------------

def kill_case(ws: Workspace, command: str, rng: random.Random, case_dir: Path, kills: int = 1) -> Case:
    """SIGKILL ``command`` (its whole process group) ``kills`` times at random moments of a clean
    run's duration, then run it to the end: the output must be the clean one."""
    out = case_dir / f"{command}_out"
    runs, moments = [], []
    for _ in range(kills):
        moment = rng.uniform(0.02, 0.9) * ws.wall[command]
        moments.append(round(moment, 2))
        runs.append(run_command(ws.argv(command, out), kill_after=moment))
    final = run_command(ws.argv(command, out))
    runs.append(final)
    outcome, note = judge_rerun(command, final, out, ws.reference(command))
    killed = sum(r.killed for r in runs)
    detail = f"{command}: SIGKILL at {moments} s ({killed} landed before the end), then rerun"
    return Case(f"kill -9 during {command}" + (" (several in a row)" if kills > 1 else ""), detail, outcome, note,
                [summary(r) for r in runs])


# -- a disk that fills up ----------------------------------------------------------------------------

#: file name patterns → the writer that hit the full disk
WRITERS = [("/c/", "store tile"), ("_xtstream_done", "done marker"), ("_xtstream_plan", "run plan"),
           ("manifest.json", "shard manifest"), (".tar", "shard tar"), ("zarr.json", "zarr metadata"),
           ("/zarr.", "zarr metadata"),  # zarr writes zarr.json as zarr.UUID.partial, then renames it
           ("/scenes/", "per-scene output"), ("detections.csv", "merged CSV"), ("predict.json", "prediction record"),
           (".pt", "checkpoint"), ("log.jsonl", "training log"), ("loss.png", "loss plot"),
           ("config.yaml", "run config")]


def writer_of(path: str | None) -> str:
    if path is None:
        return "nothing (the budget was not reached)"
    for pattern, name in WRITERS:
        if pattern in path:
            return name
    return Path(path).name


def disk_full_case(ws: Workspace, command: str, rng: random.Random, case_dir: Path, by_file: bool = False
                   ) -> Case:
    """Let ``command`` write a random share of what its clean run writes — of its bytes, or
    (``by_file``) of the files it writes, so that small writers are hit as often as big ones —,
    then fail every write with ENOSPC: one clear line (exit 3), no partial file left, and a rerun
    once there is space again gives the clean output."""
    out = case_dir / f"{command}_out"
    if by_file:
        nth = rng.randrange(1, max(2, ws.files[command] + 1))
        first = run_command(ws.argv(command, out), full_at_file=nth, budget_root=case_dir)
        budget = f"file {nth} of {ws.files[command]}"
    else:
        budget = rng.randrange(0, max(1, ws.written[command]))
        first = run_command(ws.argv(command, out), disk_budget=budget, budget_root=case_dir)
        budget = f"{budget} of {ws.written[command]} B"
    where = writer_of(first.disk_full_at)
    if first.code == 0:
        outcome, note = judge_rerun(command, first, out, ws.reference(command))
        return Case(f"disk full during {command}", f"{command}: budget ({budget}) not reached", outcome, note,
                    [summary(first)])
    outcome, note = classify_error(first, out, first.disk_full_at or out)
    if outcome == "clear_error" and first.code != 3:
        outcome, note = "unclear_error", f"exit {first.code}, not 3 (disk full): {note}"
    left = leftovers(out)
    if left and outcome == "clear_error":
        outcome, note = "unclear_error", f"left {len(left)} temporary file(s) on the full disk: {left[:3]}"
    again = run_command(ws.argv(command, out))
    after, why = judge_rerun(command, again, out, ws.reference(command))
    if after != "ok":
        outcome, note = after, f"rerun after freeing space: {why}"
    return Case(f"disk full during {command}: {where}", f"{command}: ENOSPC from {budget}, at "
                f"{first.disk_full_at}; rerun with space", outcome, note, [summary(first), summary(again)])


# -- dask workers lost mid-graph ---------------------------------------------------------------------

def big_scene(ws: Workspace) -> tuple[Path, Path]:
    """A 1024 x 1024 scene (256 tiles: enough for a worker to die mid-graph) and its clean store,
    made on first use."""
    scene, store = ws.root / "big_scene", ws.root / "ref" / "big.zarr"
    if not store.exists():
        _must(run_command(["synth", scene, "--height", 1024, "--width", 1024, "--seed", 5, "--quiet"]))
        _must(run_command(ws.argv("ingest", store)[:1] + [scene] + ws.argv("ingest", store)[2:]))
    return scene, store


def worker_loss_case(ws: Workspace, rng: random.Random, case_dir: Path, losses: int = 1) -> Case:
    """Ingest on a 2-worker ``LocalCluster`` and SIGKILL ``losses`` worker processes once tiles are
    being written: dask reruns the lost tasks elsewhere; the store must equal a clean ingest."""
    import psutil

    scene, ref = big_scene(ws)
    out = case_dir / "ingest_out"
    killed: list[int] = []

    def watch(pid: int, elapsed: float) -> None:
        if len(killed) >= losses or not (out / "_xtstream_done").is_dir():
            return
        if len(list((out / "_xtstream_done").glob("*.json"))) < 2 + 4 * len(killed):
            return
        try:
            workers = [p for p in psutil.Process(pid).children(recursive=True)
                       if "spawn_main" in " ".join(p.cmdline()) and p.pid not in killed]
        except psutil.Error:
            return
        if workers:
            victim = rng.choice(workers)
            victim.kill()
            killed.append(victim.pid)

    argv = ws.argv("ingest", out, "--scheduler", "local:2")
    argv[1] = scene
    run = run_command(argv, watch=watch, timeout=240)
    outcome, note = judge_rerun("ingest", run, out, ref)
    if outcome == "ok" and len(killed) < losses:
        note = f"only {len(killed)} of {losses} worker kill(s) landed before the end"
    return Case("dask worker lost during ingest (LocalCluster)", f"ingest --scheduler local:2, {len(killed)} "
                f"worker process(es) SIGKILLed mid-graph, no rerun", outcome, note, [summary(run)])


def fresh(case_dir: Path) -> Path:
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    return case_dir


def run_cases(makers: list[Callable[[Path], Case]], root: Path, log: Callable[[Case], None] | None = None
              ) -> list[Case]:
    """Run each case maker in a fresh directory under ``root``; a maker that raises is itself an
    ``unclear_error`` of the battery (never silently dropped)."""
    cases = []
    for i, make in enumerate(makers):
        case_dir = fresh(root / f"case{i:03d}")
        try:
            case = make(case_dir)
        except Exception as err:  # noqa: BLE001
            case = Case(getattr(make, "fault", "battery error"), repr(make), "unclear_error",
                        f"the case itself failed: {type(err).__name__}: {err}")
        cases.append(case)
        if log is not None:
            log(case)
        shutil.rmtree(case_dir, ignore_errors=True)
    return cases
