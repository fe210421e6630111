"""``xtstream demo``: the main job on an embedded default — a generated scene, a local dask cluster.

Generates an xView3-like scene, ingests it into Zarr v3 on a ``LocalCluster``, and prints where
the store is and what it holds. Later stages join as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..ingest import ingest
from ..store import describe_store
from ..synth import synth_scene


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("xtstream-demo"), help="where to write (default ./xtstream-demo)")
    p.add_argument("--size", type=int, default=4096, help="scene height and width in pixels (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="local:2", help="dask scheduler (default: a 2-worker LocalCluster)")


def run(args: argparse.Namespace) -> int:
    work = args.workdir
    t0 = time.perf_counter()
    scene = synth_scene(work / "scenes" / f"demo_{args.seed}", args.size, args.size, seed=args.seed)
    t1 = time.perf_counter()
    print(f"[1/2] synth: scene {scene.scene_id} {scene.height}x{scene.width}, {len(scene.objects)} objects "
          f"-> {scene.directory} ({t1 - t0:.1f} s)")
    store = ingest(scene.directory, work / "stores" / f"{scene.scene_id}.zarr", spec="xview3",
                   scheduler=args.scheduler, overwrite=True)
    t2 = time.perf_counter()
    print(f"[2/2] ingest on {args.scheduler}: ({t2 - t1:.1f} s)")
    print(describe_store(store))
    print(f"open it with: xarray.open_zarr('{store}')['image']  or  xtstream.open_store('{store}')")
    return 0
