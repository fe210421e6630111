"""The ``xtstream`` command line: a thin layer over the Python API.

Each subcommand lives beside the code it drives and exposes ``configure_parser(parser)`` and
``run(args) -> int``; this module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from xtstream import __version__
from xtstream.errors import XTStreamError

# name -> (module, one-line help); modules are imported only when their command runs
COMMANDS = {
    "synth": ("xtstream.cli.synth", "write a synthetic xView3-like scene (GeoTIFFs + labels)"),
    "ingest": ("xtstream.cli.ingest", "ingest a raster source (or an archive of scenes) into Zarr v3"),
    "shard": ("xtstream.cli.shard", "cut Zarr scene stores into ordered WebDataset region shards"),
    "predict": ("xtstream.cli.predict", "predict whole scenes with a trained model: georeferenced maps + detections CSV"),
    "bench": ("xtstream.cli.bench", "measurements that train models: bench probe (does xT use its context?)"),
    "train": ("xtstream.cli.train", "train (or resume) an xT model from a YAML config; torchrun for many GPUs"),
    "evaluate": ("xtstream.cli.evaluate", "score predictions: the xView3 metric, or top-1/top-5 for classification"),
    "demo": ("xtstream.cli.demo", "run the main job on a generated scene with a local dask cluster"),
}


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``0`` is refused, never taken for "the default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r} (leave the option out for the default)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtstream", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xtstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except XTStreamError as err:
        print(f"xtstream {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xtstream {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
