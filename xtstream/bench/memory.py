"""Peak memory of training on one image as it grows: the bare backbone vs the xT stream (the paper's Fig. 6).

For each (model, image side) a fresh process runs one forward + backward:

* ``backbone``: the timm backbone on the whole image (one region of the image's size) with a
  classification head — what one does without xT;
* ``xt``: the xT model (region encoder, context encoder, classification head) streamed over the
  image's regions chunk by chunk, a backward per chunk, the state detached between chunks; the
  regions are generated one at a time, so the full image never exists.

CPU: peak RSS of the child (sampled every 20 ms), also counted above the RSS right after building
the model. CUDA: ``torch.cuda.max_memory_allocated``. A child that passes ``cap_gib`` (or leaves
less than ``reserve_gib`` of the machine's memory free) is killed and recorded as OOM, as is a
CUDA OOM; once the backbone runs out at one side it is not tried at larger ones.

``xtstream bench memory`` and ``benchmarks/model_memory.py`` run :func:`measure`; the child side
is ``python -m xtstream.bench.memory '<json>'``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from xtstream.bench import text_table

MIB = 2**20
KINDS = ("backbone", "xt")


@dataclass
class MemorySetup:
    """What is measured: ``backbone`` (a timm name, built with random weights), the xT model's
    ``context`` / ``region`` / ``chunk`` / ``depth`` / ``dim`` / ``heads``, input ``bands``, the
    ``device``."""

    backbone: str = "convnext_atto"
    context: str = "xl"
    region: int = 256
    chunk: int = 8
    depth: int = 2
    dim: int = 256
    heads: int = 8
    bands: int = 2
    device: str = "cpu"


# -- child side -------------------------------------------------------------------------------
def _regions(size: int, region: int, bands: int, seed: int = 0) -> Iterator[Any]:
    """A ``size``² random scene's regions, made one at a time."""
    import numpy as np

    from xtstream.data.grid import RegionGrid
    from xtstream.data.sample import RegionSample

    grid = RegionGrid(size, size, region)
    rng = np.random.default_rng(seed)
    for i in range(len(grid)):
        yield RegionSample("bench", i, grid, rng.standard_normal((bands, region, region), dtype=np.float32))


def child(kind: str, size: int, setup: MemorySetup) -> dict[str, Any]:
    """One forward + backward of ``kind`` over a ``size``² image, in this process."""
    import psutil
    import torch
    import torch.nn.functional as F

    import xtstream

    torch.set_num_threads(max(1, psutil.cpu_count() or 1))
    device = torch.device(setup.device)
    cuda = device.type == "cuda"
    label = torch.tensor([1], device=device)
    common = dict(head="classification", num_classes=10, in_chans=setup.bands)
    if kind == "backbone":
        model = xtstream.create_model(setup.backbone, context="none", region=size, chunk=1, **common)
    else:
        model = xtstream.create_model(setup.backbone, context=setup.context, region=setup.region,
                                      chunk=setup.chunk, depth=setup.depth, dim=setup.dim, heads=setup.heads,
                                      **common)
    model.to(device).train()
    model_rss = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        if kind == "backbone":
            x = torch.randn(1, 1, setup.bands, size, size, device=device)
            logits, _ = model(x, torch.zeros(1, 2, dtype=torch.long))
            F.cross_entropy(logits, label).backward()
            chunks = 1
        else:
            chunks = 0
            for chunk in model.stream(_regions(size, setup.region, setup.bands), device=device):
                F.cross_entropy(chunk.outputs, label).backward()  # frees the chunk's graph
                chunks += 1
        if cuda:
            torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        return {"status": "oom", "reason": "CUDA out of memory"}
    result = {"status": "ok", "seconds": time.perf_counter() - start, "chunks": chunks,
              "model_rss_mib": model_rss / MIB}
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return result


# -- parent side ------------------------------------------------------------------------------
def run_child(kind: str, size: int, setup: MemorySetup, cap: int, reserve: int, interval: float = 0.02
              ) -> dict[str, Any]:
    """:func:`child` in a fresh process; its peak RSS sampled; killed (→ OOM) past ``cap`` bytes
    or when the machine has less than ``reserve`` bytes available."""
    import psutil

    spec = json.dumps({"kind": kind, "size": size, "setup": asdict(setup)})
    proc = subprocess.Popen([sys.executable, "-m", "xtstream.bench.memory", spec], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, killed = 0, ""
    done = threading.Event()

    def watch() -> None:
        nonlocal peak, killed
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                return
            peak = max(peak, rss)
            if rss > cap or psutil.virtual_memory().available < reserve:
                killed = (f"RSS {rss / 2**30:.1f} GiB over the {cap / 2**30:.0f} GiB cap" if rss > cap
                          else f"machine below {reserve / 2**30:.0f} GiB available")
                proc.kill()
                return
            time.sleep(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    watcher.start()
    out, err = proc.communicate()
    done.set()
    watcher.join()
    wall = time.perf_counter() - start
    if killed:
        return {"status": "oom", "reason": killed, "peak_rss_mib": peak / MIB, "wall_s": wall}
    if proc.returncode != 0:
        text = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        oom = proc.returncode in (-9, 137) or "memory" in text.lower()
        return {"status": "oom" if oom else "error", "reason": text[-300:], "peak_rss_mib": peak / MIB,
                "wall_s": wall}
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_rss_mib=peak / MIB, wall_s=wall)
    return result


def peak_of(run: dict[str, Any], cuda: bool) -> float | None:
    """The run's peak (MiB): CUDA allocated on CUDA, else RSS; ``None`` when it did not finish."""
    if run["status"] != "ok":
        return None
    return run["peak_cuda_mib"] if cuda else run["peak_rss_mib"]


def ratio(runs: dict[int, dict], cuda: bool, key: Callable[[dict], float] | None = None,
          base: int = 1024) -> tuple[float | None, int | None]:
    """Peak at the largest side that ran / peak at ``base`` (and that side); ``(None, None)``
    when ``base`` did not run."""
    key = key or (lambda r: peak_of(r, cuda))
    ok = [s for s, r in runs.items() if r["status"] == "ok"]
    if base not in ok:
        return None, None
    top = max(ok)
    return round(key(runs[top]) / key(runs[base]), 3), top


def _row(name: str, size: int, run: dict[str, Any], cuda: bool) -> list[Any]:
    mem = peak_of(run, cuda)
    return [name, size, "OOM" if run["status"] == "oom" else run["status"], f"{mem:.0f}" if mem is not None else "-",
            f"{run['peak_rss_mib'] - run['model_rss_mib']:.0f}" if run["status"] == "ok" else "-",
            f"{run.get('seconds', 0):.1f}", run.get("reason", "")[:60]]


HEADER = ["model", "size", "status", "peak MiB", "above model MiB", "s", "note"]


def table(rows: list[list[Any]]) -> str:
    """The runs' rows under :data:`HEADER`."""
    return text_table(rows, HEADER)


def measure(sizes: list[int], setup: MemorySetup, *, cap_gib: float = 16.0, reserve_gib: float = 2.0,
            progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every side of ``sizes`` for both kinds, each in a fresh process. Returns the results
    document: ``xt_mem_ratio`` / ``backbone_mem_ratio`` (peak at the largest side that ran over
    the peak at 1,024²; on CPU also ``*_above_model``: RSS above the built model's), ``peak_mib``
    ``{kind: {side: MiB | None}}``, the setup, and every child's record under ``runs``."""
    cuda = setup.device.startswith("cuda")
    cap, reserve = int(cap_gib * 2**30), int(reserve_gib * 2**30)
    results: dict[str, dict[int, dict]] = {k: {} for k in KINDS}
    rows = []
    for size in sizes:
        for name in KINDS:
            if name == "backbone" and any(r["status"] == "oom" for s, r in results[name].items() if s < size):
                results[name][size] = {"status": "oom", "reason": "a smaller size already ran out"}
            else:
                results[name][size] = run_child(name, size, setup, cap, reserve)
            rows.append(_row(name, size, results[name][size], cuda))
            if progress:
                progress(table(rows[-1:]))
    if progress:
        progress("\n" + table(rows))

    def above(r: dict) -> float:
        return r["peak_rss_mib"] - r["model_rss_mib"]

    xt_ratio, xt_top = ratio(results["xt"], cuda)
    bb_ratio, bb_top = ratio(results["backbone"], cuda)
    out: dict[str, Any] = {
        "device": setup.device if not cuda else __import__("torch").cuda.get_device_name(),
        "measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of a fresh process",
        "backbone": setup.backbone, "context": setup.context, "region": setup.region, "chunk": setup.chunk,
        "context_depth": setup.depth, "context_dim": setup.dim, "bands": setup.bands, "cap_gib": cap_gib,
        "xt_mem_ratio": xt_ratio, "xt_ratio_top_size": xt_top,
        "backbone_mem_ratio": bb_ratio, "backbone_ratio_top_size": bb_top,
        "labels": {"backbone": f"{setup.backbone} (whole image)",
                   "xt": f"{setup.backbone} xT {setup.context} {setup.region}px x{setup.chunk}"},
        "peak_mib": {name: {str(s): peak_of(r, cuda) for s, r in results[name].items()} for name in KINDS},
        "runs": {name: {str(s): r for s, r in results[name].items()} for name in KINDS},
    }
    if not cuda:
        out["xt_mem_ratio_above_model"] = ratio(results["xt"], cuda, key=above)[0]
        out["backbone_mem_ratio_above_model"] = ratio(results["backbone"], cuda, key=above)[0]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Peak memory against image side, both kinds, log-log; OOMs marked at the cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuda = results["measure"].startswith("torch.cuda")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("backbone", "o-"), ("xt", "s-")):
        runs = {int(s): r for s, r in results["runs"][name].items()}
        ok = [(s, peak_of(r, cuda)) for s, r in sorted(runs.items()) if r["status"] == "ok"]
        line, = ax.plot([s for s, _ in ok], [m for _, m in ok], style, label=results["labels"][name])
        oom = [s for s, r in runs.items() if r["status"] != "ok"]
        if oom:
            ax.plot(oom, [results["cap_gib"] * 1024] * len(oom), "x", color=line.get_color(), markersize=10,
                    label=f"{results['labels'][name]}: OOM")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input size (px per side)")
    ax.set_ylabel("peak GPU memory (MiB)" if cuda else "peak RSS (MiB)")
    ax.set_title("Training memory vs input size (forward + backward)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out/model_memory.json`` and ``out/model_memory.png``."""
    out.mkdir(parents=True, exist_ok=True)
    doc, png = out / "model_memory.json", out / "model_memory.png"
    doc.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, png)
    return doc, png


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(child(spec["kind"], int(spec["size"]), MemorySetup(**spec["setup"]))))
