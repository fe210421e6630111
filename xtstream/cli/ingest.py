"""``xtstream ingest SRC --out STORE.zarr [--spec …] [--tile N] [--scheduler ADDR]``.

``SRC`` one scene (a GeoTIFF, a scene directory, an image file) → one store at ``--out``; an archive
root of scene directories, an image directory or an image-list CSV (``path[,scene_id][,label]``)
→ one store per scene under the directory ``--out``."""

from __future__ import annotations

import argparse
from pathlib import Path

from xtstream.cli import positive_int
from xtstream.data.ingest import CODECS, ingest, ingest_archive, is_archive
from xtstream.data.store import describe_store


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="GeoTIFF, scene directory, image file, Zarr store; or, a store per scene: an "
                   "archive root of scene directories, a directory of images or an image-list CSV")
    p.add_argument("--out", required=True, type=Path,
                   help="the Zarr store to write (for an archive or images: the directory of per-scene stores)")
    p.add_argument("--spec", help="dataset spec: a YAML path or a shipped name (e.g. xview3)")
    p.add_argument("--bands", help="comma-separated spec bands to keep (default: all)")
    p.add_argument("--tile", type=positive_int, help="side of the store's tiles (its Zarr chunks) in pixels "
                   "(default: the spec's, else 2048); for sharding, the region size")
    p.add_argument("--chunk", type=positive_int, dest="tile", help=argparse.SUPPRESS)  # its old name
    p.add_argument("--scheduler", help="threads (default) | sync | local[:N] | tcp://host:port")
    p.add_argument("--scene-id", help="scene id (default: the source's name)")
    p.add_argument("--codec", choices=CODECS,
                   help="tile compressor (default: a resumed store's own, else blosc-lz4)")
    p.add_argument("--level", type=int, help="compression level (default: the codec's, blosc-lz4 5, zstd 1)")
    p.add_argument("--direct-io", action=argparse.BooleanOptionalAction, default=True,
                   help="write tiles past the page cache (O_DIRECT) where the file system takes it "
                        "(default; --no-direct-io: buffered writes, e.g. to read the store back at once)")
    p.add_argument("--scenes-in-flight", type=positive_int, default=2, help="archives: scenes per graph (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a store from another ingest")
    p.add_argument("--verify", action="store_true",
                   help="on a complete store, read every tile and write again those failing their checksum "
                        "(missing tiles are always written again)")
    p.add_argument("--allow-small", action="store_true", help="accept a scene smaller than one spec region")
    p.add_argument("--channels", type=int, choices=[1, 3],
                   help="images: convert grey/RGB to this many bands (default: as each file is)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    kw = dict(spec=args.spec, bands=args.bands.split(",") if args.bands else None, tile=args.tile,
              scheduler=args.scheduler, progress=not args.quiet, codec=args.codec, level=args.level,
              overwrite=args.overwrite, allow_small=args.allow_small, channels=args.channels,
              verify=args.verify, direct_io=args.direct_io)
    if is_archive(args.src, args.spec):
        stores = ingest_archive(args.src, args.out, scenes_in_flight=args.scenes_in_flight, **kw)
    else:
        stores = [ingest(args.src, args.out, scene_id=args.scene_id, **kw)]
    for store in stores:
        print(describe_store(store))
    return 0
