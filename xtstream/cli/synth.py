"""``xtstream synth OUT_DIR --height H --width W [--seed S] [--scenes N]``."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from xtstream.cli import positive_int
from xtstream.tasks.xview3.synth import LABEL_COLUMNS, synth_scene


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, help="scene directory to write (an archive root with --scenes > 1)")
    p.add_argument("--height", type=positive_int, default=4096, help="pixels (default 4096)")
    p.add_argument("--width", type=positive_int, default=4096, help="pixels (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same scene (default 0)")
    p.add_argument("--scenes", type=positive_int, default=1,
                   help="write N scenes OUT_DIR/synth_{seed+k} and a combined OUT_DIR/labels.csv")
    p.add_argument("--scene-id", help="scene id (default: the directory name)")
    p.add_argument("--bathymetry-factor", type=positive_int, default=1,
                   help="write bathymetry this many times coarser, as real xView3 ancillary bands")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    kw = dict(bathymetry_factor=args.bathymetry_factor, progress=not args.quiet)
    if args.scenes <= 1:
        scene = synth_scene(args.out_dir, args.height, args.width, args.seed, args.scene_id, **kw)
        print(f"wrote scene {scene.scene_id} ({scene.height}x{scene.width}, {len(scene.objects)} objects) "
              f"to {scene.directory}")
        return 0
    rows = []
    for k in range(args.scenes):
        scene = synth_scene(args.out_dir / f"synth_{args.seed + k}", args.height, args.width, args.seed + k, **kw)
        with open(scene.labels, newline="") as f:
            rows.extend(csv.DictReader(f))
    with open(args.out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.scenes} scenes and {len(rows)} labels to {args.out_dir}")
    return 0
