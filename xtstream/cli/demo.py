"""``xtstream demo``: the whole job on an embedded default — generated scenes, a local dask cluster.

1. generate a few small xView3-like training scenes and one held-out scene (GeoTIFFs + labels);
2. ingest them into Zarr v3 stores on a ``LocalCluster`` (``--scheduler``);
3. cut the training stores into labelled region shards;
4. train xT (ConvNeXt-atto regions, Transformer-XL context, the xView3 head) and, the same way, the
   region-only baseline (no context) with ``xtstream.train`` — streaming, one step per chunk;
5. predict the held-out scene with both (``xtstream.predict``: georeferenced maps + detections);
6. score both with the xView3 metric and print them side by side; write ``demo.png``: the
   held-out scene, down-sampled, with true and predicted vessels marked.

``--quick`` does it all on tiny scenes in seconds (what the tests run).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import time
from pathlib import Path
from typing import Any

from xtstream.cli import positive_int

STEPS = 6
BANDS = ["VV", "VH"]
OBJECTS_PER_MP = 40.0
#: centre score for a detection: below the library's 0.5, since minutes of training leave the
#: centre heat-map under-confident (a long run uses the default)
THRESHOLD = 0.3
MODELS = {"xT (XL context)": "xt_convnext_atto_xl", "region-only": "xt_convnext_atto"}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("xtstream-demo"), help="where to write (default ./xtstream-demo)")
    p.add_argument("--size", type=positive_int, default=1024, help="scene height and width in pixels (default 1024)")
    p.add_argument("--scenes", type=positive_int, default=4, help="training scenes (default 4; one more is held out)")
    p.add_argument("--steps", type=positive_int, default=300, help="optimiser steps per model (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="local:2", help="dask scheduler (default: a 2-worker LocalCluster)")
    p.add_argument("--region", type=positive_int, default=256, help="region size R in pixels (default 256)")
    p.add_argument("--quick", action="store_true", help="tiny scenes and a few steps: every stage in seconds")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.size, args.scenes, args.steps, args.region = min(args.size, 384), min(args.scenes, 2), min(args.steps, 6), 128
    work: Path = args.workdir
    t0 = time.perf_counter()
    scenes = _synth(work / "scenes", args)
    held_out = scenes[-1]
    t1 = time.perf_counter()
    print(f"[1/{STEPS}] synth: {len(scenes) - 1} training scene(s) + 1 held-out ({held_out.scene_id}) of "
          f"{args.size}x{args.size}, {sum(len(s.objects) for s in scenes)} objects -> {work / 'scenes'} ({t1 - t0:.1f} s)")

    from xtstream._runtime.cluster import dask_client
    from xtstream.data.ingest import ingest_archive
    from xtstream.data.shards import shard_stores

    with dask_client(args.scheduler) as client:
        address = None if client is None else client.scheduler.address
        # store tiles of the region size: sharding then decodes every tile exactly once. The scenes
        # were generated anew, so a store of an earlier demo is of other files: replace it
        stores = ingest_archive(work / "scenes", work / "stores", spec="xview3", bands=BANDS, tile=args.region,
                                scheduler=address, progress=False, allow_small=True, overwrite=True)
        t2 = time.perf_counter()
        print(f"[2/{STEPS}] ingest on {args.scheduler}: {len(stores)} Zarr v3 store(s) -> {work / 'stores'} "
              f"({t2 - t1:.1f} s)")
        by_id = {s.name.removesuffix(".zarr"): s for s in stores}
        train_stores = [by_id[s.scene_id] for s in scenes[:-1]]
        labels = _merge_labels([s.labels for s in scenes[:-1]], work / "train_labels.csv")
        manifest = shard_stores(train_stores, work / "shards", region=args.region, labels=labels,
                                client=client, progress=False, overwrite=True)
    totals = json.loads(manifest.read_text())["totals"]
    t3 = time.perf_counter()
    print(f"[3/{STEPS}] shard: {totals['regions']} labelled regions of {args.region}x{args.region} in "
          f"{totals['shards']} shard(s) -> {manifest.parent} ({t3 - t2:.1f} s)")

    import xtstream

    runs: dict[str, dict[str, Any]] = {}
    chunks_per_epoch = totals["regions"] // 4 + len(train_stores)  # an upper bound: chunks of 4
    for label, preset in MODELS.items():
        t = time.perf_counter()
        out = work / "runs" / preset
        result = xtstream.train(_config(args, preset, manifest.parent, out, chunks_per_epoch), overwrite=True)
        runs[label] = {"out": out, "result": result, "seconds": time.perf_counter() - t}
    t4 = time.perf_counter()
    print(f"[4/{STEPS}] train on {_device()}: " + "; ".join(
        f"{k} {r['result']['steps']} steps, loss -> {r['result']['loss']:.3f} ({r['seconds']:.0f} s)"
        for k, r in runs.items()))

    gt = held_out.labels
    for label, r in runs.items():
        pred = xtstream.predict(r["out"] / "model.pt", [by_id[held_out.scene_id]], work / "predictions" / label.split()[0],
                                overwrite=True, progress=False, threshold=THRESHOLD)
        r["csv"] = pred.csv
        r["scores"] = xtstream.get_task("xview3").score(pred.csv, gt, shoreline_dir=held_out.directory)
    t5 = time.perf_counter()
    print(f"[5/{STEPS}] predict the held-out scene: " + "; ".join(
        f"{k} {_count(r['csv'])} detections -> {r['csv']}" for k, r in runs.items()) + f" ({t5 - t4:.1f} s)")

    keys = ["aggregate", "F1_loc", "F1_shore", "F1_vessel", "F1_fishing", "length_score"]
    print(f"[6/{STEPS}] xView3 metric on the held-out scene ({_count(gt)} true objects):")
    print("    " + f"{'':<18}" + "".join(f"{k:>14}" for k in keys))
    for label, r in runs.items():
        print("    " + f"{label:<18}" + "".join(f"{r['scores'][k]:>14.3f}" for k in keys))
    png = _plot(by_id[held_out.scene_id], gt, {k: r["csv"] for k, r in runs.items()}, work / "demo.png")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"    picture: {png}  (total {time.perf_counter() - t0:.0f} s, peak RSS of this process {rss:.0f} MiB)")
    (work / "scores.json").write_text(json.dumps({k: r["scores"] for k, r in runs.items()}, indent=1, default=str))
    return 0


def _synth(root: Path, args: argparse.Namespace) -> list[Any]:
    from xtstream.tasks.xview3.synth import synth_scene

    # 40x xView3's density: a few minutes of training must see enough vessels to learn them
    return [synth_scene(root / f"demo_{k}", args.size, args.size, seed=args.seed * 100 + k,
                        objects_per_mp=OBJECTS_PER_MP, progress=False) for k in range(args.scenes + 1)]


def _merge_labels(paths: list[Path], out: Path) -> Path:
    """One labels CSV (one header) from the scenes' own."""
    rows, header = [], None
    for p in paths:
        with open(p, newline="") as f:
            reader = csv.reader(f)
            head = next(reader)
            header = header or head
            rows.extend(reader)
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return out


def _config(args: argparse.Namespace, preset: str, shards: Path, out: Path, chunks_per_epoch: int) -> dict:
    epochs = max(1, -(-args.steps // max(1, chunks_per_epoch)))
    return {"out": str(out), "task": "xview3", "seed": args.seed, "epochs": epochs,
            "model": {"name": preset, "options": {"region": args.region, "in_chans": len(BANDS)}},
            "data": {"shards": str(shards), "workers": 0, "shuffle": True},
            "optimiser": {"lr": 1e-3, "clip_grad_norm": 1.0},
            "schedule": {"warmup_steps": min(50, args.steps // 10), "min_lr": 1e-5},
            "step": {"policy": "per_chunk"}, "checkpoint": {"every": 10_000}}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _count(path: Path) -> int:
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in f) - 1)


def _plot(store: Path, gt: Path, preds: dict[str, Path], out: Path, size: int = 1024) -> Path:
    """The scene's VV band block-averaged to at most ``size`` px (dask: never the whole scene in
    memory at once), true objects as circles, each model's detections as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xtstream.data.store import open_store

    image = open_store(store)["image"].isel(band=0)
    k = max(1, -(-max(image.shape) // size))
    small = image.coarsen(y=k, x=k, boundary="pad").mean().values

    def points(path: Path) -> tuple[list[float], list[float]]:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [float(r["detect_scene_column"]) / k for r in rows], [float(r["detect_scene_row"]) / k for r in rows]

    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    ax.imshow(small, cmap="gray")
    x, y = points(gt)
    ax.scatter(x, y, s=90, facecolors="none", edgecolors="lime", linewidths=1.2, label=f"true ({len(x)})")
    for (label, path), colour in zip(preds.items(), ["red", "orange", "cyan"]):
        x, y = points(path)
        ax.scatter(x, y, s=30, marker="x", c=colour, linewidths=1.0, label=f"{label} ({len(x)})")
    ax.set_title(f"held-out scene {store.name.removesuffix('.zarr')} (1/{k} scale)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
