"""``xtstream bench probe [--seeds N] [--scenes N | --steps N] [--bptt-chunks K] [--out results.json]``: measurements that train
models (see :mod:`xtstream.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtstream.cli import positive_int


def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    probe = sub.add_parser("probe", help="context probes: does a trained xT use its context? (AUC)",
                           description="Train region-only and xT models on tasks only context can solve "
                                       "and report each one's AUC (mean ± std over seeds): object AUC "
                                       "for the xView3 head, scene AUC for the classification head.")
    probe.add_argument("--seeds", type=positive_int, default=3, help="models per probe and context (default 3)")
    probe.add_argument("--scenes", type=positive_int,
                       help="training scenes per model (default per head and probe: xview3 1500 for "
                            "in_chunk, 6000 for the others; classification 6000 and 16000)")
    probe.add_argument("--steps", type=positive_int,
                       help="chunk forwards per model instead of --scenes")
    probe.add_argument("--bptt-chunks", type=positive_int,
                       help="back-propagate through the context state over windows of this many chunks "
                            "(default: one whole probe scene; 1: stop-gradient memory)")
    probe.add_argument("--context-lr-scale", type=float,
                       help="the context encoder's learning rate over the rest's (default: 3 for mamba, 1 for the others)")
    probe.add_argument("--scenes-per-step", type=positive_int,
                       help="scenes per optimiser step, batched (default: xview3 1 for in_chunk, 4 for "
                            "the others; classification 8)")
    probe.add_argument("--runs", help="comma-separated probe:context[:head] (head xview3 unless named; "
                                      "default: in_chunk and across_chunks for none/xl/mamba, and "
                                      "in_chunk:full, for both heads; the vertical probe only when named, "
                                      "e.g. vertical:xl or vertical:xl:classification)")
    probe.add_argument("--out", type=Path, help="write the results JSON here")
    probe.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from xtstream.bench.probe import DEFAULT_RUNS, parse_runs, sweep, table

    runs = DEFAULT_RUNS
    if args.runs:
        try:
            runs = parse_runs(args.runs)
        except ValueError as e:
            raise SystemExit(f"xtstream bench probe: {e}") from None
    extra = {k: v for k, v in (("context_lr_scale", args.context_lr_scale),
                                ("scenes_per_step", args.scenes_per_step)) if v is not None}
    results = sweep(runs, seeds=args.seeds, steps=args.steps, scenes=args.scenes, progress=not args.quiet,
                    bptt_chunks=args.bptt_chunks, **extra)
    print(table(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
