"""``xtstream demo``: the main job on an embedded default — a generated scene, a local dask cluster.

Generates an xView3-like scene, ingests it into Zarr v3 on a ``LocalCluster``, cuts it into
labelled region shards, and streams the shards through an xT model (ConvNeXt-atto regions,
Transformer-XL context, xView3 head; random initial weights, CPU or GPU), one optimizer step per
chunk of regions — the whole scene seen end to end, never held whole. Prints what each stage made.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from xtstream.data.ingest import ingest
from xtstream.data.store import describe_store
from xtstream.tasks.xview3.synth import synth_scene

STEPS = 4


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("xtstream-demo"), help="where to write (default ./xtstream-demo)")
    p.add_argument("--size", type=int, default=4096, help="scene height and width in pixels (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="local:2", help="dask scheduler (default: a 2-worker LocalCluster)")
    p.add_argument("--model", default="xt_convnext_atto_xl", help="xT preset (see xtstream.list_models())")
    p.add_argument("--region", type=int, default=256, help="region size R in pixels (default 256)")


def run(args: argparse.Namespace) -> int:
    work = args.workdir
    t0 = time.perf_counter()
    scene = synth_scene(work / "scenes" / f"demo_{args.seed}", args.size, args.size, seed=args.seed)
    t1 = time.perf_counter()
    print(f"[1/{STEPS}] synth: scene {scene.scene_id} {scene.height}x{scene.width}, {len(scene.objects)} objects "
          f"-> {scene.directory} ({t1 - t0:.1f} s)")
    # store chunks of the region size: sharding then decodes every chunk exactly once
    store = ingest(scene.directory, work / "stores" / f"{scene.scene_id}.zarr", spec="xview3",
                   tile=args.region, scheduler=args.scheduler, overwrite=True, allow_small=True)
    t2 = time.perf_counter()
    print(f"[2/{STEPS}] ingest on {args.scheduler}: ({t2 - t1:.1f} s)")
    print(describe_store(store))
    print(f"open it with: xarray.open_zarr('{store}')['image']  or  xtstream.open_store('{store}')")

    from xtstream.data.shards import shard_stores

    manifest = shard_stores([store], work / "shards", region=args.region, labels=scene.labels,
                            scheduler=args.scheduler, overwrite=True)
    totals = json.loads(manifest.read_text())["totals"]
    t3 = time.perf_counter()
    print(f"[3/{STEPS}] shard: {totals['regions']} regions of {args.region}x{args.region} with label crops, "
          f"{totals['shards']} shard(s), {totals['bytes'] / 2**20:.0f} MiB -> {manifest.parent} ({t3 - t2:.1f} s)")
    _train_pass(args, manifest, t3)
    return 0


def _train_pass(args: argparse.Namespace, manifest: Path, t_start: float) -> None:
    """One streaming pass of training over the shards: a step per chunk, memory bounded by a chunk."""
    import torch

    from xtstream.data.shards import read_scenes
    from xtstream.engine import train_chunks
    from xtstream.models import create_model

    torch.manual_seed(args.seed)
    bands = json.loads(manifest.read_text())["scenes"][0]["bands"]
    model = create_model(args.model, region=args.region, in_chans=len(bands))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    from tqdm import tqdm

    scenes = json.loads(manifest.read_text())["scenes"]
    steps = sum(-(-sc["regions"] // model.config.chunk) for sc in scenes)
    chunks = read_scenes(manifest.parent, chunk=model.config.chunk)
    losses = []
    records = train_chunks(model, chunks, optimizer, device=device, clip_grad_norm=1.0)
    for record in tqdm(records, total=steps, desc="train", unit="chunk"):
        losses.append(record["loss"])
    seconds = time.perf_counter() - t_start
    n = model.num_parameters()
    k = max(1, len(losses) // 4)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[4/{STEPS}] train one pass on {device}: {args.model} ({n['total'] / 1e6:.1f} M parameters, "
          f"chunks of {model.config.chunk} regions): {len(losses)} steps, "
          f"mean loss first quarter {sum(losses[:k]) / k:.3f} -> last quarter {sum(losses[-k:]) / k:.3f} "
          f"({seconds:.1f} s, peak RSS of this process {rss:.0f} MiB)")
