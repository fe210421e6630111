"""``xtstream shard STORE.zarr… --out SHARD_DIR --region R [--labels labels.csv [--task xview3] [--spec S]]
[--max-shard-size B]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtstream.cli import positive_int
from xtstream.data.shards.writer import DEFAULT_MAX_SHARD_SIZE, SHARD_MAX_READ_BYTES, shard_stores


def _size(text: str) -> int:
    """``1073741824``, ``512M``, ``1G``, ``1.5GiB`` → bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1073741824, 512M, 1G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", type=Path, help="complete Zarr scene stores (from `xtstream ingest`)")
    p.add_argument("--out", required=True, type=Path, help="directory for the shards and manifest.json")
    p.add_argument("--region", required=True, type=positive_int, help="region size R in pixels (regions are R x R)")
    p.add_argument("--labels", type=Path, help="labels file of --task; adds per-region targets and objects")
    p.add_argument("--task", help="the task that reads --labels (xview3 — the default —, classification, "
                                  "or a plug-in's name)")
    p.add_argument("--spec", help="dataset spec (name or YAML) whose labels: block describes --labels")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_SIZE,
                   help="largest shard, bytes (suffixes K/M/G; default 1G)")
    p.add_argument("--max-count", type=positive_int, help="most regions per shard (default: by size only)")
    p.add_argument("--max-read-bytes", type=_size, default=SHARD_MAX_READ_BYTES,
                   help="largest block read from a store at once (default 4M); bounds memory per task. "
                        "Raise it to decode store chunks taller than a region once per chunk row")
    p.add_argument("--scheduler", help="threads (default) | sync | local[:N] | tcp://host:port")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards of a different earlier run in --out (only the files that run wrote)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="on a rerun, trust shards already written if their size is right (by default each "
                        "is re-hashed and written again if its SHA-256 changed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    manifest = shard_stores(args.stores, args.out, region=args.region, labels=args.labels,
                            task=args.task, spec=args.spec,
                            max_shard_size=args.max_shard_size, max_count=args.max_count,
                            max_read_bytes=args.max_read_bytes, scheduler=args.scheduler,
                            progress=not args.quiet, overwrite=args.overwrite, verify=args.verify)
    doc = json.loads(manifest.read_text())
    for scene in doc["scenes"]:
        rows, cols = scene["grid"]
        print(f"{scene['scene_id']}: {rows}x{cols} regions of {scene['region']} px in {len(scene['shards'])} shard(s)")
    t = doc["totals"]
    print(f"{manifest}: {t['scenes']} scene(s), {t['shards']} shard(s), {t['regions']} regions, "
          f"{t['bytes'] / 2**20:.1f} MiB")
    return 0
