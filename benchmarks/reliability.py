"""The fault-injection battery: does xtstream lose nothing and say clearly what went wrong?

    python benchmarks/reliability.py                      # the whole battery, seed 0 (~5 min, 2 cores)
    python benchmarks/reliability.py --seed 3 --quick     # a few of each kind

Seeded faults, each a real ``xtstream`` command in its own process (:mod:`_fault_runner`):

* kills — SIGKILL of ingest, shard, predict and train (whole process groups) at random moments,
  once or several times in a row, then a rerun whose output must equal a clean run's;
* dask workers SIGKILLed mid-graph on a ``LocalCluster`` (dask must retry: the store is the clean one);
* a full disk — every write past a random byte budget fails with ENOSPC, wherever it lands (tiles,
  markers, tars, manifests, CSVs, checkpoints, logs): one clear line, exit 3, no partial file left,
  and a rerun with space gives the clean output;
* damage — bit flips, truncations and deletions in store tiles and metadata, shards, manifests,
  model and training checkpoints, finished predictions: read by the next command (the right result
  or an error naming the file), repaired by rerunning the one that wrote it;
* bad inputs — GeoTIFFs truncated, bit-flipped, of the wrong band count, NaN/inf/all-nodata, 1 x 1,
  empty, declaring a huge size; real rasters from ../shared/data when present; impossible labels;
  shard tars with path-traversal names or a pickled payload; checkpoints holding pickled code;
* fuzzing — mutated labels CSVs, specs, training configs, manifests and prediction CSVs (hypothesis).

Outcomes: ``ok`` (right result, or repaired), ``clear_error`` (one line naming the path, a documented
exit code), ``silent_loss`` (success exit, wrong or missing data), ``unclear_error`` (traceback,
crash, hang). Writes ``benchmarks/results/reliability.json`` and ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _fault_runner import OUTCOMES, Case, preload  # noqa: E402

REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
#: how many of each kind the full battery tries (``--quick``: the second number)
SIZES = {"kill": (16, 4), "kill_repeated": (8, 0), "worker_loss": (2, 0), "disk_full": (32, 8),
         "damage_rounds": (2, 1), "bad_geotiff_rounds": (2, 1), "bad_labels": (3, 1), "fuzz": (100, 15)}


def plan(ws: Any, rng: random.Random, sizes: dict[str, int]) -> list[Callable[[Path], list[Case]]]:
    """The battery's cases, in a seeded order of kinds; each a callable of a fresh directory."""
    import _fault_cases as fc
    import _fault_damage as fd

    def one(fn: Callable[..., Case]) -> Callable[..., list[Case]]:
        return lambda *a, **k: [fn(*a, **k)]

    makers: list[Callable[[Path], list[Case]]] = []
    commands = list(fc.COMMANDS)
    for i in range(sizes["kill"]):
        makers.append(partial(one(fc.kill_case), ws, commands[i % 4], rng))
    for i in range(sizes["kill_repeated"]):
        makers.append(partial(one(fc.kill_case), ws, commands[i % 4], rng, kills=2 + i % 2))
    for i in range(sizes["worker_loss"]):
        makers.append(partial(one(fc.worker_loss_case), ws, rng, losses=1 + i % 2))
    for i in range(sizes["disk_full"]):
        makers.append(partial(one(fc.disk_full_case), ws, commands[i % 4], rng, by_file=bool(i // 4 % 2)))
    for r in range(sizes["damage_rounds"]):
        for kind in ("flip", "truncate", "delete"):
            makers.append(partial(fd.store_damage, ws, rng, kind=kind, target="tile"))
            makers.append(partial(fd.shard_damage, ws, rng, kind=kind, target="tar"))
            makers.append(partial(fd.prediction_damage, ws, rng, kind=kind))
        for kind in ("flip", "truncate"):
            makers.append(partial(fd.shard_damage, ws, rng, kind=kind, target="manifest"))
            makers.append(partial(fd.checkpoint_damage, ws, rng, kind=kind))
            makers.append(partial(fd.resume_damage, ws, rng, kind=kind))
        makers.append(partial(fd.store_damage, ws, rng, kind="flip", target=("group metadata", "array metadata")[r % 2]))
        makers.append(partial(fd.shard_damage, ws, rng, kind="flip", target="tar", reader="train"))
    for _ in range(sizes["bad_geotiff_rounds"]):
        for kind in ("truncated", "bit-flipped", "NaN and inf", "all nodata", "1x1", "huge declared size"):
            makers.append(partial(fd.bad_geotiff, ws, rng, kind=kind))
    if sizes["bad_geotiff_rounds"]:
        makers += [partial(fd.wrong_band_count, ws, rng), partial(fd.empty_scene, ws, rng),
                   partial(fd.hostile_shard, ws, rng, kind="path traversal"),
                   partial(fd.hostile_shard, ws, rng, kind="pickled payload"), partial(fd.pickled_checkpoint, ws, rng)]
        makers += [partial(real_raster, name=n) for n in REAL_RASTERS if (SHARED / "rasterio" / n).is_file()]
    for _ in range(sizes["bad_labels"]):
        makers.append(partial(fd.bad_labels, ws, rng))
    return makers


#: real rasters of ../shared/data/rasterio (README there) and what ingesting each must give
REAL_RASTERS = {"corrupt.tif": "clear_error", "all-nodata.tif": "ok", "float_nan.tif": "ok", "rotated.tif": "ok",
                "RGB.byte.tif": "ok"}


def real_raster(case_dir: Path, name: str) -> list[Case]:
    """Ingest a real raster someone else made (never copied into the repository)."""
    from _fault_damage import _ingest_file, _store_matches_file
    from _fault_runner import classify_error, summary

    tif = SHARED / "rasterio" / name
    run, out = _ingest_file(tif, case_dir)
    if run.code == 0:
        same, why = _store_matches_file(out, tif)
        outcome = ("ok", "") if same else ("silent_loss", why)
    else:
        outcome = classify_error(run, tif)
    if REAL_RASTERS[name] == "clear_error" and outcome[0] == "ok":
        outcome = ("silent_loss", f"{name} cannot be read, yet the ingest succeeded")
    return [Case(f"bad input: real raster {name}", str(tif), *outcome, [summary(run)])]


def run_battery(root: Path, *, seed: int = 0, quick: bool = False, sizes: dict[str, int] | None = None,
                log: Callable[[Case], None] | None = None) -> tuple[list[Case], dict[str, Any]]:
    """Build the workspace under ``root`` and run every case; ``(cases, meta)``."""
    import _fault_cases as fc
    import _fault_fuzz as ff

    preload()
    sizes = sizes or {k: v[1 if quick else 0] for k, v in SIZES.items()}
    start = time.monotonic()
    rng = random.Random(seed)
    ws = fc.build_workspace(root / "workspace", seed=seed)
    built = time.monotonic() - start
    cases: list[Case] = []
    for make in plan(ws, rng, sizes):
        case_dir = fc.fresh(root / "case")
        try:
            got = make(case_dir)
        except Exception as err:  # noqa: BLE001 - a case that breaks is counted, never dropped
            got = [Case("battery error", repr(make)[:200], "unclear_error", f"{type(err).__name__}: {err}"[:400])]
        for case in got:
            cases.append(case)
            if log is not None:
                log(case)
    if sizes["fuzz"]:
        for i, (name, (valid, parse, filename, structured)) in enumerate(ff.parsers(ws).items()):
            got = ff.fuzz(name, valid, parse, filename=filename, structured=structured, examples=sizes["fuzz"],
                          seed=seed + i, workdir=root)
            cases.extend(got)
            if log is not None:
                for case in got:
                    log(case)
    meta = {"seed": seed, "quick": quick, "sizes": sizes, "workspace_s": round(built, 1),
            "wall_s": round(time.monotonic() - start, 1), "clean_run_s": {k: round(v, 2) for k, v in ws.wall.items()}}
    return cases, meta


def tally(cases: list[Case]) -> dict[str, Any]:
    """The figures: totals and, per fault, how many times tried and each outcome's count."""
    counts = collections.Counter(c.outcome for c in cases)
    by_fault: dict[str, dict[str, int]] = {}
    for c in cases:
        row = by_fault.setdefault(c.fault, {"tried": 0, **{o: 0 for o in OUTCOMES}})
        row["tried"] += 1
        row[c.outcome] += 1
    return {"cases": len(cases), "passed": counts["ok"] + counts["clear_error"],
            **{o: counts[o] for o in OUTCOMES}, "by_fault": by_fault}


def write_results(cases: list[Case], meta: dict[str, Any], json_path: Path, md_path: Path | None,
                  command: str) -> dict[str, Any]:
    """Write the JSON (figures, failures in full, every case in brief) and the Markdown table."""
    figures = tally(cases)
    kills = [r for c in cases if c.fault.startswith("kill -9") for r in c.runs[:-1]]  # the last run: the rerun
    figures["kills"] = {"sent": len(kills), "landed_before_the_end": sum(bool(r.get("killed")) for r in kills)}
    failures = [c.as_dict() for c in cases if c.outcome in ("silent_loss", "unclear_error")]
    doc = {"benchmark": "reliability", "command": command,
           "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **meta, **figures,
           "failures": failures,
           "case_list": [{"fault": c.fault, "detail": c.detail, "outcome": c.outcome, "note": c.note[:300]}
                         for c in cases]}
    try:
        from _measure import machine

        doc["machine"] = machine()
    except Exception:  # noqa: BLE001 - the figures matter more than the machine's description
        pass
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(markdown(doc))
    return doc


def markdown(doc: dict[str, Any]) -> str:
    rows = sorted(doc["by_fault"].items(), key=lambda kv: (_group(kv[0]), kv[0]))
    lines = [
        "# Reliability: the fault-injection battery",
        "",
        f"Generated by `{doc['command']}` on {doc['generated']} (seed {doc['seed']}, "
        f"{doc['wall_s'] / 60:.1f} min{', quick' if doc['quick'] else ''}); "
        "figures in `benchmarks/results/reliability.json`.",
        "",
        f"**{doc['cases']} cases: {doc['passed']} passed ({doc['ok']} ok, {doc['clear_error']} clear errors), "
        f"{doc['silent_loss']} silent losses, {doc['unclear_error']} unclear errors.**",
        "",
        f"Kills: {doc['kills']['sent']} SIGKILLs sent at random moments of a clean run's duration, "
        f"{doc['kills']['landed_before_the_end']} of them before the command had finished (the others "
        "found it done; its rerun must still equal a clean run). Disk full: half the cases fail every "
        "write past a random byte of what the clean run writes, half from a random file it writes on, "
        "so that small writers (markers, manifests, logs) are hit too.",
        "",
        "Each case runs real `xtstream` commands, each in its own process (forked from one that has "
        "imported everything, so that hundreds of runs fit in minutes), and judges the outcome:",
        "",
        "* **ok** — the right result: after a kill or a full disk, the rerun's output equals a clean "
        "run's (stores pixel for pixel, shards byte for byte, predictions, trained weights bitwise); a "
        "damaged output repaired by rerunning the command that wrote it; a valid input ingested exactly;",
        "* **clear error** — exit code 2, 3 or 4 (`xtstream --help`) and a last line "
        "`xtstream CMD: error: …` naming the damaged or offending file, no traceback;",
        "* **silent loss** — success exit with wrong or missing data (or a payload that ran);",
        "* **unclear error** — a traceback, a crash, a hang, or an error that names no file.",
        "",
        "| fault | tried | ok | clear error | silent loss | unclear error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fault, row in rows:
        lines.append(f"| {fault} | {row['tried']} | {row['ok']} | {row['clear_error']} | "
                     f"{row['silent_loss']} | {row['unclear_error']} |")
    if doc["failures"]:
        lines += ["", "## Failures", ""]
        for f in doc["failures"]:
            lines.append(f"* **{f['outcome']}** — {f['fault']}: {f['detail']} — {f['note']}")
    lines += ["", "How: `benchmarks/reliability.py` (the battery), `benchmarks/_fault_runner.py` (running and "
              "killing commands, the full disk, the outcome rules), `_fault_cases.py` (workspace, kills, disk, "
              "dask workers), `_fault_damage.py` (damage, bad inputs, hostile files), `_fault_fuzz.py` "
              "(parsers). `tests/test_reliability.py` runs a seeded sample of each kind.", ""]
    return "\n".join(lines)


def _group(fault: str) -> int:
    for i, prefix in enumerate(("kill", "dask", "disk", "bit flip", "truncated", "deleted", "bad input",
                                "hostile", "checkpoint", "fuzzed")):
        if fault.startswith(prefix):
            return i
    return 99


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few cases of each kind")
    p.add_argument("--out", type=Path, default=HERE / "results" / "reliability.json")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "reliability.md")
    p.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory)")
    args = p.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="xtstream-reliability-"))
    command = "python benchmarks/reliability.py" + (f" --seed {args.seed}" if args.seed else "") + \
        (" --quick" if args.quick else "")

    def log(case: Case) -> None:
        if not case.fault.startswith("fuzzed") or case.outcome not in ("ok", "clear_error"):
            print(f"{case.outcome:>13}  {case.fault}: {case.detail[:90]}  {case.note[:120]}", flush=True)

    try:
        cases, meta = run_battery(root, seed=args.seed, quick=args.quick, log=log)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    doc = write_results(cases, meta, args.out, args.doc, command)
    print(f"{doc['cases']} cases: {doc['passed']} passed, {doc['silent_loss']} silent loss, "
          f"{doc['unclear_error']} unclear error in {meta['wall_s']:.0f} s -> {args.out}, {args.doc}")
    return 0 if not doc["silent_loss"] and not doc["unclear_error"] else 1


if __name__ == "__main__":
    sys.exit(main())
