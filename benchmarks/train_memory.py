"""Training memory flat in scene size, and DataLoader workers that keep up with training.

    python benchmarks/train_memory.py                            # 2,048², 8,192², 16,384² scenes
    python benchmarks/train_memory.py --sizes 1024 2048 4096     # quicker
    python benchmarks/train_memory.py --device cuda --gpu-throughput   # + swinv2 xT-XL regions/s, bf16

* **Peak RSS per scene size**: one epoch of ``xtstream.train`` (classification, ``per_chunk``,
  DataLoader with 2 workers, straight from a Zarr store) over one scene of each size, each in a
  fresh process; peak RSS sums the process and its DataLoader workers (``_measure.run_measured``).
  The same model for every size: a small ConvNeXt (depths 1-1-1-1, widths 16-32-64-128) on
  256-px regions of 2 bands, chunks of 4, one Transformer-XL layer of width 64, so that an epoch
  over 16,384² (4,096 regions) fits in minutes on 2 CPU cores. ``rss_ratio`` = largest / smallest.
* **Loader vs memory**: training regions/s through ``DataLoader(stream_scenes(…), batch_size=None,
  num_workers=2)`` over 4 scenes of 2,048² (scenes interleave between the workers) against the
  same steps, in the same order, on chunks read into memory beforehand; the same initial weights.
  ``loader_vs_memory`` = the first over the second (medians of ``--repeats`` alternating runs each).
* On CUDA also peak allocated memory per size and, with ``--gpu-throughput``, ``gpu_regions_per_s``
  of ``swinv2_tiny_window16_256`` xT-XL training on 256-px regions in bf16.

Writes ``benchmarks/results/train_memory.json``; stores are generated once under ``benchmarks/work/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, run_measured, table  # noqa: E402

REGION, CHUNK, BANDS = 256, 4, 2
MODEL = {"region": REGION, "chunk": CHUNK, "in_chans": BANDS, "context": "xl", "dim": 64, "depth": 1, "heads": 2,
         "head": "classification", "num_classes": 2, "depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
TARGETS = {"rss_ratio": 1.2, "loader_vs_memory": 0.9}


# -- data --------------------------------------------------------------------------------------
def ensure_store(work: Path, size: int, name: str, seed: int) -> Path:
    """A ``size x size`` two-band store of random pixels, tiles of one region, made once."""
    from xtstream.data.store import read_status

    path = work / f"{name}.zarr"
    if path.exists() and read_status(path).complete:
        return path
    import dask.array as da

    from xtstream.data.ingest import ingest
    from xtstream.data.sources import ArraySource

    print(f"generating {size}x{size} store {path} …", flush=True)
    image = da.random.RandomState(seed).standard_normal((BANDS, size, size), chunks=(BANDS, 2048, 2048)).astype("f4")
    return ingest(ArraySource(image, scene_id=name), path, tile=REGION, overwrite=True, progress=False)


def write_labels(path: Path, scene_ids: list[str]) -> Path:
    path.write_text("scene_id,label\n" + "".join(f"{s},{k % 2}\n" for k, s in enumerate(scene_ids)))
    return path


# -- child side --------------------------------------------------------------------------------
def child_epoch(store: str, labels: str, out: str, device: str) -> dict:
    """One epoch of ``xtstream.train`` over one store."""
    import shutil

    import torch

    import xtstream

    shutil.rmtree(out, ignore_errors=True)
    cfg = {"out": out, "task": "classification", "seed": 0, "epochs": 1,
           "model": {"name": "convnext_atto", "options": MODEL},
           "data": {"stores": [store], "labels": labels, "workers": 2, "shuffle": False},
           "checkpoint": {"every": 10**9}, "runtime": {"device": device}}
    cuda = device.startswith("cuda")
    t = time.perf_counter()
    summary = xtstream.train(cfg)
    seconds = time.perf_counter() - t
    from xtstream.engine.log import RunLog

    regions = sum(r["chunk"][1] - r["chunk"][0] + 1 for r in RunLog(Path(out) / "log.jsonl").records("step"))
    result = {"seconds": seconds, "steps": summary["steps"], "regions": regions, "regions_per_s": regions / seconds}
    if cuda:
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def child_speed(stores: list[str], labels: str, repeats: int) -> dict:
    """Training regions/s through DataLoader workers vs the same steps on chunks in memory."""
    import torch

    import xtstream
    from xtstream.engine.data import make_loader
    from xtstream.tasks import get_task

    task = get_task("classification")
    scene_labels = task.read_labels(labels)
    dataset = xtstream.stream_scenes(stores, REGION, chunk=CHUNK, labels=scene_labels)
    in_memory = list(make_loader(dataset, 2, 0, 0))  # the loader's own order: the same steps
    regions = sum(len(c) for c in in_memory)
    torch.manual_seed(0)
    initial = xtstream.create_model("convnext_atto", **MODEL).state_dict()

    def train(items) -> float:
        model = xtstream.create_model("convnext_atto", **MODEL)
        model.load_state_dict(initial)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        t = time.perf_counter()
        n = sum(1 for _ in xtstream.train_chunks(model, items, opt, clip_grad_norm=1.0))
        assert n == len(in_memory)
        return regions / (time.perf_counter() - t)

    memory, loader = [], []
    for _ in range(repeats):  # interleaved, so a busy spell of the machine hits both
        memory.append(train(in_memory))
        loader.append(train(make_loader(dataset, 2, 0, 0)))
    import statistics

    # medians of alternating runs: single epochs of a few seconds vary by ±15 % on a shared machine
    return {"regions": regions, "chunks": len(in_memory), "memory_regions_per_s": statistics.median(memory),
            "loader_regions_per_s": statistics.median(loader), "memory_runs": memory, "loader_runs": loader}


def child_gpu(seconds: float) -> dict:
    """swinv2_tiny_window16_256 xT-XL training on 256-px regions, bf16 autocast: regions/s."""
    import numpy as np
    import torch

    import xtstream
    from xtstream.data.chunk import RegionChunk
    from xtstream.data.grid import RegionGrid

    model = xtstream.create_model("swinv2_tiny_window16_256", region=256, chunk=16, context="xl", dim=256, depth=4,
                                  heads=8, head="classification", num_classes=10, in_chans=3).cuda()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grid = RegionGrid(256 * 32, 256 * 32, 256)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((16, 3, 256, 256), dtype=np.float32)

    def chunks():
        for start in range(0, len(grid), 16):
            yield RegionChunk("g", grid, list(range(start, start + 16)), pixels, info={"label": 1})

    from xtstream.engine.policy import accumulate

    def run(limit: float) -> tuple[int, float]:
        """What the runner does per step: bf16 forward and loss, float32 backward, clip, AdamW."""
        n, t = 0, time.perf_counter()
        for acc in accumulate(model, chunks(), device="cuda",
                              autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16)):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += acc.chunks * 16
            if time.perf_counter() - t > limit:
                break
        torch.cuda.synchronize()
        return n, time.perf_counter() - t

    run(5.0)  # warm-up
    n, dt = run(seconds)
    return {"gpu_regions_per_s": n / dt, "gpu_model": "swinv2_tiny_window16_256 xT-XL (4 layers, chunk 16), bf16"}


# -- parent ------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--speed-size", type=int, default=2048, help="scene side of the 4 loader-vs-memory scenes")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu-throughput", action="store_true")
    p.add_argument("--speed-only", action="store_true",
                   help="rerun the loader-vs-memory comparison alone, keeping the epoch runs of the last results")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "epoch":
            print(json.dumps(child_epoch(*rest)))
        elif kind == "speed":
            *stores, labels, repeats = rest
            print(json.dumps(child_speed(stores, labels, int(repeats))))
        else:
            print(json.dumps(child_gpu(float(rest[0]))))
        return

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    me = str(Path(__file__).resolve())
    epochs = {}
    if args.speed_only:  # the epoch runs of the last full run, as measured then
        last = json.loads((HERE / "results" / "train_memory.json").read_text())
        args.sizes = last["sizes"]
        epochs = {int(s): e for s, e in last["runs"]["epochs"].items()}
    for size in [] if args.speed_only else args.sizes:
        store = ensure_store(work, size, f"train_{size}", seed=size)
        labels = write_labels(work / f"train_{size}.csv", [f"train_{size}"])
        epochs[size] = run_measured([me, "--child", "epoch", str(store), str(labels), str(work / "train_run"),
                                     args.device])
        print(f"{size}²: {epochs[size]['peak_rss_mib']:.0f} MiB peak RSS, {epochs[size]['regions']} regions in "
              f"{epochs[size]['seconds']:.0f} s", flush=True)
    speed_ids = [f"speed_{args.speed_size}_{k}" for k in range(4)]
    speed_stores = [ensure_store(work, args.speed_size, sid, seed=100 + k) for k, sid in enumerate(speed_ids)]
    speed_labels = write_labels(work / "speed.csv", speed_ids)
    # RSS sampled every 0.5 s, not 20 ms: the sampler walks the process tree (the loader's workers
    # too) on the same 2 cores, and slowed the loader runs more than the in-memory ones
    speed = run_measured([me, "--child", "speed", *map(str, speed_stores), str(speed_labels), str(args.repeats)],
                         interval=0.5)
    gpu = run_measured([me, "--child", "gpu", "60"]) if args.gpu_throughput else None

    small, large = min(args.sizes), max(args.sizes)
    rows = [[f"{s}²", e["regions"], e["steps"], f"{e['seconds']:.0f}", f"{e['regions_per_s']:.1f}",
             f"{e['peak_rss_mib']:.0f}"] for s, e in epochs.items()]
    print(table(rows, ["scene", "regions", "steps", "seconds", "regions/s", "peak RSS MiB"]))
    result = {
        **machine(), "device": args.device,
        "model": f"convnext_atto depths 1-1-1-1 widths 16-32-64-128, xl dim 64 x1, region {REGION}, chunk {CHUNK}, "
                 f"{BANDS} bands, classification",
        "sizes": args.sizes, "workers": 2,
        "peak_rss_mib": {str(s): round(e["peak_rss_mib"], 1) for s, e in epochs.items()},
        "rss_ratio": round(epochs[large]["peak_rss_mib"] / epochs[small]["peak_rss_mib"], 3),
        "epoch_regions_per_s": {str(s): round(e["regions_per_s"], 2) for s, e in epochs.items()},
        "loader_regions_per_s": round(speed["loader_regions_per_s"], 2),
        "memory_regions_per_s": round(speed["memory_regions_per_s"], 2),
        "loader_vs_memory": round(speed["loader_regions_per_s"] / speed["memory_regions_per_s"], 3),
        "speed_scenes": f"4 x {args.speed_size}², {speed['regions']} regions, {speed['chunks']} steps",
        "targets": TARGETS,
        "runs": {"epochs": {str(s): {k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()}
                            for s, e in epochs.items()}, "speed": speed},
    }
    if args.device.startswith("cuda"):
        result["cuda_peak_allocated_mib"] = {str(s): round(e["cuda_peak_allocated_mib"], 1) for s, e in epochs.items()}
    if gpu is not None:
        result.update(gpu_regions_per_s=round(gpu["gpu_regions_per_s"], 1), gpu_model=gpu["gpu_model"])
    result["meets"] = {"rss_ratio": result["rss_ratio"] <= TARGETS["rss_ratio"],
                       "loader_vs_memory": result["loader_vs_memory"] >= TARGETS["loader_vs_memory"]}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
