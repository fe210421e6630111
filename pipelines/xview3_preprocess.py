"""Preprocess an xView3 archive: every scene directory → a Zarr store → labelled region shards.

    python pipelines/xview3_preprocess.py ARCHIVE --out WORK --region 512 \\
        [--labels train.csv] [--scheduler tcp://scheduler:8786] [--bands VV,VH]

``ARCHIVE`` holds one directory per scene (``VV_dB.tif``, ``VH_dB.tif``, optional
``bathymetry.tif``, …). Labels come from ``--labels`` (xView3 ships one CSV per split) or,
failing that, from each scene directory's labels file (the spec's ``labels.file``,
``labels.csv`` for xview3 — what ``xtstream synth`` writes), merged into ``WORK/labels.csv`` and
parsed as the spec's ``labels:`` block says. Stores go to ``WORK/stores/{scene_id}.zarr`` with
chunks of the region size (sharding then decodes each chunk once), shards to ``WORK/shards/``.

Both stages are dask graphs on the same scheduler, and both resume: rerun after an interruption
and only the missing chunks and shards are written. Workers of a remote cluster must see
``ARCHIVE`` and ``WORK`` at the same paths.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xtstream._runtime.cluster import dask_client
from xtstream.errors import XTStreamError
from xtstream.data.ingest import ingest_archive
from xtstream.data.shards import shard_stores
from xtstream.data.specs import load_spec


def merge_scene_labels(stores: list[Path], archive: Path, out: Path, name: str = "labels.csv") -> Path | None:
    """Concatenate the scenes' labels files ``name`` (one header) into ``out``; ``None`` if none has one."""
    found = [archive / s.name.removesuffix(".zarr") / name for s in stores]
    found = [p for p in found if p.is_file()]
    if not found:
        return None
    tmp = out.with_name(out.name + ".partial")
    header = None
    with open(tmp, "w") as dst:
        for path in found:
            with open(path) as src:
                first = src.readline()
                if header is None:
                    header = first
                    dst.write(first)
                elif first != header:
                    raise XTStreamError(f"{path}: label columns {first.strip()!r} differ from {header.strip()!r}")
                for line in src:
                    dst.write(line)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path, help="directory of scene directories")
    p.add_argument("--out", type=Path, required=True, help="work directory (stores/, shards/)")
    p.add_argument("--region", type=int, default=512, help="region size R (default 512, as in xT's xView3 runs)")
    p.add_argument("--labels", type=Path, help="xView3 labels CSV for the scenes (default: merge per-scene labels.csv)")
    p.add_argument("--spec", default="xview3", help="dataset spec (default xview3)")
    p.add_argument("--bands", help="comma-separated bands to keep (default: the spec's)")
    p.add_argument("--scheduler", default="local", help="threads | local[:N] | tcp://host:port (default local)")
    p.add_argument("--scenes-in-flight", type=int, default=2, help="scenes ingested together (bounds memory)")
    args = p.parse_args(argv)
    bands = args.bands.split(",") if args.bands else None
    try:
        with dask_client(args.scheduler) as client:
            stores = ingest_archive(args.archive, args.out / "stores", spec=args.spec, bands=bands,
                                    tile=args.region, scenes_in_flight=args.scenes_in_flight,
                                    scheduler=None if client is None else client.scheduler.address)
            print(f"ingest: {len(stores)} scene store(s) under {args.out / 'stores'}")
            spec = load_spec(args.spec)
            labels = args.labels or merge_scene_labels(stores, args.archive, args.out / "labels.csv",
                                                       spec.labels.file if spec.labels else "labels.csv")
            manifest = shard_stores(stores, args.out / "shards", region=args.region, labels=labels,
                                    task="xview3" if labels else None, spec=spec if labels else None,
                                    client=client)
    except XTStreamError as err:
        print(f"xview3_preprocess: error: {err}", file=sys.stderr)
        return 2
    totals = json.loads(manifest.read_text())["totals"]
    print(f"shards: {totals['regions']} regions of {args.region} px from {totals['scenes']} scene(s) in "
          f"{totals['shards']} shard(s), {totals['bytes'] / 2**30:.2f} GiB, labels {labels or 'none'} -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
