"""Peak memory of training on one image, 512² to 8,192²: the bare backbone vs the xT stream.

    python benchmarks/model_memory.py                         # CPU, convnext_atto, region 256
    python benchmarks/model_memory.py --device cuda --backbone swinv2_tiny_window8_256
    python benchmarks/model_memory.py --sizes 512 1024 2048   # quicker

For each (model, size), a fresh process runs one forward + backward:

* ``backbone``: the timm backbone on the whole image (one region of the image's size) with a
  classification head — what one does without xT;
* ``xt``: the xT model (region encoder, context encoder, classification head) streamed over the
  image's regions chunk by chunk, a backward per chunk, memory detached between chunks; the
  regions are generated one at a time, so the full image never exists.

CPU: peak RSS of the child (sampled), also counted above the RSS right after building the model.
CUDA: ``torch.cuda.max_memory_allocated``. A run that passes ``--cap-gib`` (or leaves less than
``--reserve-gib`` of the machine's memory free) is killed and recorded as OOM, as is a CUDA OOM.
Writes ``benchmarks/results/model_memory.json`` and the figure ``model_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, table  # noqa: E402

MIB = 2**20


# -- child side -------------------------------------------------------------------------------
def _regions(size: int, region: int, bands: int, seed: int = 0):
    import numpy as np

    from xtstream.data.grid import RegionGrid
    from xtstream.data.sample import RegionSample

    grid = RegionGrid(size, size, region)
    rng = np.random.default_rng(seed)
    for i in range(len(grid)):
        yield RegionSample("bench", i, grid, rng.standard_normal((bands, region, region), dtype=np.float32))


def child(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    import xtstream

    torch.set_num_threads(max(1, psutil.cpu_count() or 1))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    label = torch.tensor([1], device=device)
    common = dict(head="classification", num_classes=10, in_chans=args.bands)
    if args.child == "backbone":
        model = xtstream.create_model(args.backbone, context="none", region=args.size, chunk=1, **common)
    else:
        model = xtstream.create_model(args.backbone, context=args.context, region=args.region,
                                      chunk=args.chunk, depth=args.depth, dim=args.dim, heads=args.heads,
                                      **common)
    model.to(device).train()
    model_rss = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        if args.child == "backbone":
            x = torch.randn(1, 1, args.bands, args.size, args.size, device=device)
            logits, _ = model(x, torch.zeros(1, 2, dtype=torch.long))
            F.cross_entropy(logits, label).backward()
            chunks = 1
        else:
            chunks = 0
            for chunk in model.stream(_regions(args.size, args.region, args.bands), device=device):
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
def run_child(argv: list[str], cap: int, reserve: int, interval: float = 0.02) -> dict:
    """Run ``argv`` in a fresh process; peak RSS sampled; killed (→ OOM) past ``cap`` bytes or when
    the machine has less than ``reserve`` bytes available."""
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
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


def peak_of(run: dict, cuda: bool) -> float | None:
    if run["status"] != "ok":
        return None
    return run["peak_cuda_mib"] if cuda else run["peak_rss_mib"]


def ratio(runs: dict[int, dict], cuda: bool, key=None) -> tuple[float | None, int | None]:
    """peak at the largest size that ran / peak at 1,024 (and that size)."""
    key = key or (lambda r: peak_of(r, cuda))
    ok = [s for s, r in runs.items() if r["status"] == "ok"]
    if 1024 not in ok:
        return None, None
    top = max(ok)
    return round(key(runs[top]) / key(runs[1024]), 3), top


def plot(results: dict, path: Path, cuda: bool, cap_mib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("backbone", "o-"), ("xt", "s-")):
        runs = results[name]
        ok = [(s, peak_of(r, cuda)) for s, r in sorted(runs.items()) if r["status"] == "ok"]
        line, = ax.plot([s for s, _ in ok], [m for _, m in ok], style, label=results["labels"][name])
        oom = [s for s, r in runs.items() if r["status"] != "ok"]
        if oom:
            ax.plot(oom, [cap_mib] * len(oom), "x", color=line.get_color(), markersize=10,
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--context", default="xl")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--cap-gib", type=float, default=16.0)
    p.add_argument("--reserve-gib", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--child", choices=["backbone", "xt"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    cuda = args.device.startswith("cuda")
    shared = ["--device", args.device, "--backbone", args.backbone, "--region", str(args.region),
              "--chunk", str(args.chunk), "--context", args.context, "--depth", str(args.depth),
              "--dim", str(args.dim), "--heads", str(args.heads), "--bands", str(args.bands)]
    cap, reserve = int(args.cap_gib * 2**30), int(args.reserve_gib * 2**30)
    results: dict = {"backbone": {}, "xt": {}}
    rows = []
    for size in args.sizes:
        for name in ("backbone", "xt"):
            if name == "backbone" and any(r["status"] == "oom" for s, r in results[name].items() if s < size):
                results[name][size] = {"status": "oom", "reason": "a smaller size already ran out"}
            else:
                results[name][size] = run_child([__file__, "--child", name, "--size", str(size), *shared],
                                                cap, reserve)
            r = results[name][size]
            mem = peak_of(r, cuda)
            rows.append([name, size, "OOM" if r["status"] == "oom" else r["status"],
                         f"{mem:.0f}" if mem is not None else "-",
                         f"{r['peak_rss_mib'] - r['model_rss_mib']:.0f}" if r["status"] == "ok" else "-",
                         f"{r.get('seconds', 0):.1f}", r.get("reason", "")[:60]])
            print(table(rows[-1:], ["model", "size", "status", "peak MiB", "above model MiB", "s", "note"]),
                  flush=True)
    print()
    print(table(rows, ["model", "size", "status", "peak MiB", "above model MiB", "s", "note"]))

    def above(r: dict) -> float:
        return r["peak_rss_mib"] - r["model_rss_mib"]

    xt_ratio, xt_top = ratio(results["xt"], cuda)
    bb_ratio, bb_top = ratio(results["backbone"], cuda)
    labels = {"backbone": f"{args.backbone} (whole image)",
              "xt": f"{args.backbone} xT {args.context} {args.region}px x{args.chunk}"}
    out = {
        **machine(),
        "device": args.device if not cuda else __import__("torch").cuda.get_device_name(),
        "measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of a fresh process",
        "backbone": args.backbone, "context": args.context, "region": args.region, "chunk": args.chunk,
        "context_depth": args.depth, "context_dim": args.dim, "bands": args.bands, "cap_gib": args.cap_gib,
        "xt_mem_ratio": xt_ratio, "xt_ratio_top_size": xt_top,
        "backbone_mem_ratio": bb_ratio, "backbone_ratio_top_size": bb_top,
        "labels": labels,
        "peak_mib": {name: {str(s): peak_of(r, cuda) for s, r in results[name].items()}
                     for name in ("backbone", "xt")},
        "runs": {name: {str(s): r for s, r in results[name].items()} for name in ("backbone", "xt")},
    }
    if not cuda:
        out["xt_mem_ratio_above_model"] = ratio(results["xt"], cuda, key=above)[0]
        out["backbone_mem_ratio_above_model"] = ratio(results["backbone"], cuda, key=above)[0]
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs", "labels")}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_memory.json").write_text(json.dumps(out, indent=1) + "\n")
    plot({**results, "labels": labels}, args.out / "model_memory.png", cuda, args.cap_gib * 1024)


if __name__ == "__main__":
    main()
