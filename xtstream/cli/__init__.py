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
from xtstream._runtime.oserrors import output_error
from xtstream.errors import XTStreamError

EXIT_CODES = """exit codes:
  0    success
  1    unexpected failure (a bug: a traceback is printed)
  2    bad input: arguments, config, spec, source, store, shards, labels (one line naming the file)
  3    an output cannot be written: disk full, read-only, permission denied (rerun resumes)
  4    the output is in use by another run (its pid and host are named)
  130  interrupted (rerun the same command to resume)"""

# name -> (module, one-line help). Every module is imported to build the parser (0.4 s with the
# data side's xarray, zarr and dask); torch and timm load only when a command that needs them runs
COMMANDS = {
    "synth": ("xtstream.cli.synth", "write a synthetic xView3-like scene (GeoTIFFs + labels)"),
    "ingest": ("xtstream.cli.ingest", "ingest a raster source (or an archive of scenes) into Zarr v3"),
    "shard": ("xtstream.cli.shard", "cut Zarr scene stores into ordered WebDataset region shards"),
    "predict": ("xtstream.cli.predict", "predict whole scenes with a trained model: georeferenced maps + detections CSV"),
    "bench": ("xtstream.cli.bench", "measurements of models: bench probe|context (does xT use its context?), bench erf|reach (how far back it sees), bench memory (peak memory vs image size)"),
    "train": ("xtstream.cli.train", "train (or resume) an xT model from a YAML config; torchrun for many GPUs"),
    "evaluate": ("xtstream.cli.evaluate", "score predictions: the xView3 metric, or top-1/top-5 for classification"),
    "demo": ("xtstream.cli.demo", "run the main job on a generated scene with a local dask cluster"),
}


def _int_at_least(text: str, low: int, hint: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}{hint}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``0`` is refused, never taken for "the default")."""
    return _int_at_least(text, 1, " (leave the option out for the default)")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _int_at_least(text, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtstream", description=__doc__.splitlines()[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xtstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod = importlib.import_module(module)
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors end as one line on stderr and an exit code (:data:`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except XTStreamError as err:
        # one line, whatever a library put into the message: scripts read the last line
        print(f"xtstream {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        # a file-system refusal the API did not translate (a command without an output lock)
        clear = output_error(err, getattr(args, "out", None))
        if clear is None:
            raise
        print(f"xtstream {args.command}: error: {clear}", file=sys.stderr)
        return clear.exit_code
    except KeyboardInterrupt:
        print(f"xtstream {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
