"""Peak-RSS measurement of a command's whole process tree (the process and its dask workers)."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psutil


def run_measured(args: list[str], interval: float = 0.02) -> dict:
    """Run ``python args…`` in a fresh process; return its JSON stdout plus ``peak_rss_mib``, ``wall_s``.

    Peak RSS is the largest sum, over one sample, of the RSS of the process and all its
    descendants, sampled every ``interval`` seconds.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        procs, listed = [root], 0.0
        while not stop.is_set():
            try:
                # the process tree is listed every 0.25 s, not every sample: listing scans all of
                # /proc (~1 ms here) and, every 20 ms, took CPU from the multi-process runs measured
                if time.perf_counter() - listed > 0.25:
                    procs, listed = [root, *root.children(recursive=True)], time.perf_counter()
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mib=peak / 2**20, wall_s=time.perf_counter() - start)
    return result


def machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}",
        "python": platform.python_version(),
    }


def table(rows: list[list], header: list[str]) -> str:
    from xtstream.bench import text_table

    return text_table(rows, header)


def scale_args(doc: str, work: Path, extra: Any = None) -> argparse.Namespace:
    """The two-scale benchmarks' arguments: ``--small``/``--large`` (``HxW``), ``--work``, and the
    hidden ``--child KIND ARGS…`` a measured subprocess is started with; ``extra(parser)`` adds a
    benchmark's own. Adds ``args.sizes``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if extra is not None:
        extra(p)
    p.add_argument("--small", default="4096x4096")
    p.add_argument("--large", default="29400x24400")
    p.add_argument("--work", type=Path, default=work)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.sizes = {name: tuple(map(int, s.split("x"))) for name, s in (("small", args.small), ("large", args.large))}
    return args


def ensure_scene(work: Path, h: int, w: int) -> Path:
    """The synthetic xView3-like scene of ``h x w`` under ``work`` (shared by the benchmarks), made once."""
    scene = work / f"scene_{h}x{w}"
    if not (scene / "labels.csv").exists():  # labels are written last: the scene is whole
        from xtstream.tasks.xview3.synth import synth_scene

        print(f"generating {h}x{w} scene in {scene} …", flush=True)
        synth_scene(scene, h, w, seed=1)
    return scene


def ensure_store(work: Path, h: int, w: int, *, prefix: str, tile: int, bands: list[str]) -> Path:
    """The synthetic scene of ``h x w`` ingested (spec xview3, ``bands``, ``tile``-px tiles) into
    ``work/{prefix}_{h}x{w}_c{tile}.zarr``, made once and reused."""
    scene = ensure_scene(work, h, w)
    store = work / f"{prefix}_{h}x{w}_c{tile}.zarr"
    from xtstream.data.store import read_status

    if not read_status(store).complete:
        from xtstream.data.ingest import ingest

        print(f"ingesting {scene} → {store} …", flush=True)
        ingest(scene, store, spec="xview3", bands=bands, tile=tile, progress=False)
    return store


def merge_runs(path: Path, results: dict, summarise: Callable[[dict], dict], summary: tuple[str, ...]) -> dict:
    """``results`` with the runs of the results file at ``path`` it does not hold, re-summarised.

    The file is read now, just before the caller writes: another ``--merge`` process (one per
    core) may have landed its runs meanwhile. Keys starting with ``summary`` are recomputed by
    ``summarise``; the file's other keys (e.g. a note on its runs) are kept."""
    old = json.loads(path.read_text())
    kept = {k: v for k, v in old.items() if not k.startswith(summary)}
    return summarise({**kept, **results, "runs": {**old["runs"], **results["runs"]}})
