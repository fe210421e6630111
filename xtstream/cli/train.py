"""``xtstream train --config CONFIG.yaml [section.key=value …] [--overwrite]``: run or resume the
training a config describes (:func:`xtstream.train`; the config's sections in
:mod:`xtstream.engine.config`). Many GPUs or nodes: ``torchrun --nproc_per_node N -m xtstream
train --config …``."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="training config (YAML), e.g. pipelines/xview3.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override config values, e.g. optimiser.lr=3e-4 epochs=2 data.workers=4")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that holds a run (deletes its checkpoints and log)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from xtstream.engine.run import train

    summary = train(args.config, args.overrides, overwrite=args.overwrite, progress=not args.quiet)
    if summary.get("loss") is not None:
        print(f"{summary['out']}: {summary['steps']} steps over {summary['epochs']} epoch(s), mean loss of the "
              f"last steps {summary['loss']:.4g}; model {summary['model']}, resumable checkpoint "
              f"{summary['checkpoint']}")
    return 0
