"""``xtstream predict CHECKPOINT SOURCE… --out PRED_DIR``: whole scenes through a trained model.

Sources: scene stores, scene directories or GeoTIFFs, image files (PNG, JPEG…), image directories
and image-list CSVs (``path[,scene_id][,label]``; one scene per image), shard directories (or
their manifest). Per scene, the task's outputs under ``PRED_DIR/scenes/`` (xView3: a
georeferenced Zarr store of the dense maps, ``--geotiff`` also a GeoTIFF) and one merged CSV
(xView3: ``detections.csv``; classification: ``predictions.csv``). A rerun resumes: finished scenes are skipped. Under
``torchrun`` (``RANK``/``WORLD_SIZE``) each rank predicts its share of the scenes on
``cuda:LOCAL_RANK``; the last rank to finish merges the CSV. See :mod:`xtstream.engine.predict`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from xtstream.cli import non_negative_int, positive_int

#: task option -> flag; only flags given on the command line reach the task
OPTIONS = {
    "threshold": ("--threshold", float, "xview3: centre score a detection needs (default 0.5)"),
    "min_distance": ("--min-distance", non_negative_int, "xview3: peaks closer than this many pixels merge (default 3)"),
    "vessel_threshold": ("--vessel-threshold", float, "xview3: is_vessel probability for True (default 0.5)"),
    "fishing_threshold": ("--fishing-threshold", float, "xview3: is_fishing probability for True (default 0.5)"),
    "top_k": ("--top-k", positive_int, "classification: classes per scene in the CSV (default 5)"),
}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="model checkpoint (xtstream.save_checkpoint / xtstream train)")
    p.add_argument("sources", nargs="+", help="scene stores, scene directories / GeoTIFFs, images, image "
                   "directories or image-list CSVs (path[,scene_id][,label]; a scene per image), shard directories")
    p.add_argument("--out", required=True, type=Path, help="prediction directory (created; reruns resume)")
    p.add_argument("--task", help="task (default: the one that trains the checkpoint's head)")
    for name, (flag, kind, help_) in OPTIONS.items():
        p.add_argument(flag, dest=name, type=kind, default=None, help=help_)
    p.add_argument("--geotiff", action="store_true", help="xview3: also export each scene's maps as a GeoTIFF")
    p.add_argument("--chunk", type=positive_int, help="regions per chunk (default: the model's)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda:LOCAL_RANK when available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, help="regions per backbone batch (default: from a memory budget)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers reading regions (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace predictions of a different earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-scene lines")


def run(args: argparse.Namespace) -> int:
    import torch

    from xtstream.engine.predict import predict

    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    if args.geotiff:
        options["geotiff"] = True
    result = predict(args.checkpoint, args.sources, args.out, task=args.task, chunk=args.chunk,
                     device=device, batch_size=args.batch_size, num_workers=args.workers,
                     overwrite=args.overwrite, progress=not args.quiet, **options)
    if result.csv is not None:
        print(result.csv)
    return 0
