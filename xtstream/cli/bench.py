"""``xtstream bench probe [--seeds N] [--scenes N | --steps N] [--bptt-chunks K] [--out results.json]``: measurements that train
models (see :mod:`xtstream.bench`). ``xtstream bench context [--models …] [--seeds N] [--scenes N]``:
the context-dependent task (:mod:`xtstream.bench.context_task`). ``xtstream bench erf [--rows R --cols C ...] [--out DIR]``: the
effective receptive field of region-only and xT models; ``xtstream bench reach [--depths ...]
[--chunks ...]``: Transformer-XL's measured reach against its formula (:mod:`xtstream.bench.erf`)."""

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
                       help="the context encoder's learning rate over the rest's (default: 3 for mamba with "
                            "the xview3 head, 1 otherwise)")
    probe.add_argument("--scenes-per-step", type=positive_int,
                       help="scenes per optimiser step, batched (default: xview3 1 for in_chunk, 4 for "
                            "the others; classification 8)")
    probe.add_argument("--runs", help="comma-separated probe:context[:head] (head xview3 unless named; "
                                      "default: in_chunk and across_chunks for none/xl/mamba, and "
                                      "in_chunk:full, for both heads; the vertical probe only when named, "
                                      "e.g. vertical:xl or vertical:xl:classification)")
    probe.add_argument("--out", type=Path, help="write the results JSON here")
    probe.add_argument("--quiet", action="store_true", help="no progress bars")

    ctx = sub.add_parser("context", help="the context-dependent task: near-shore vessels, region-only vs xT "
                                         "(F1, shore F1)",
                         description="Train region-only, xT-XL, xT-Mamba and full-attention models on a task only "
                                     "context solves (vessels near a shore in another region) and score detection "
                                     "F1 and the near-shore class's F1 (xtstream.bench.context_task).")
    ctx.add_argument("--models", default="region_only,xt_xl,xt_mamba,xt_full",
                     help="comma-separated, of region_only, xt_xl, xt_mamba, xt_full, xt_xl_rows (XL with a "
                          "region memory of one row of regions) (default: the first four)")
    ctx.add_argument("--seeds", type=positive_int, default=3, help="models per kind (default 3)")
    ctx.add_argument("--scenes", type=positive_int, help="training scenes per model (default 3000)")
    ctx.add_argument("--eval-scenes", type=positive_int, help="held-out scenes per model (default 64)")
    ctx.add_argument("--order", choices=("row_major", "column_major", "snake", "two_pass"), default="row_major",
                     help="how scenes are read: row after row, column after column, row-major with every other "
                          "row right to left, or row-major twice with the first pass filling the context state")
    ctx.add_argument("--rows", type=positive_int, help="scene height in regions (default 4)")
    ctx.add_argument("--cols", type=positive_int, help="scene width in regions (default 4)")
    ctx.add_argument("--chunk", type=positive_int, help="regions per chunk (default 4: one row of the default scene)")
    ctx.add_argument("--out", type=Path, help="write the results JSON here")
    ctx.add_argument("--quiet", action="store_true", help="no progress bars")

    erf = sub.add_parser("erf", help="effective receptive field: how far back does each model's output see?",
                         description="Back-propagate one output (the vessel logit at the centre of a "
                                     "noise scene's last region) to the input pixels through the carried "
                                     "context state, for region-only, xT-XL, xT-Mamba and full-attention "
                                     "models at random initialisation (seed 0: which pixels can reach "
                                     "an output is the architecture's, not learnt), and report how many "
                                     "regions back each one reaches and its gradient share outside the "
                                     "target region; for XL, the reach its memory allows next to it.")
    erf.add_argument("--backbone", help="a timm backbone (default: the probes' tiny ConvNeXt, widths 16-128)")
    erf.add_argument("--rows", type=positive_int, default=3, help="scene rows in regions (default 3)")
    erf.add_argument("--cols", type=positive_int, default=4, help="scene columns in regions (default 4)")
    erf.add_argument("--region", type=positive_int, default=64, help="region side in px (default 64)")
    erf.add_argument("--chunk", type=positive_int, default=4, help="regions per chunk (default 4)")
    erf.add_argument("--depth", type=positive_int, default=2, help="context layers (default 2)")
    erf.add_argument("--out", type=Path, help="write erf.json and erf.png into this folder")

    mem = sub.add_parser("memory", help="peak training memory vs image size: bare backbone vs xT (Fig. 6)",
                         description="One forward + backward per image side, each in a fresh process: the timm "
                                     "backbone on the whole image vs the xT model streamed over its regions; "
                                     "peak RSS on CPU, peak allocated on CUDA; a child over --cap-gib is "
                                     "killed and recorded as OOM (xtstream.bench.memory).")
    mem.add_argument("--sizes", type=positive_int, nargs="+", default=[512, 1024, 2048, 4096],
                     help="image sides in px (default 512 1024 2048 4096; the ratios are over 1024)")
    mem.add_argument("--backbone", default="convnext_atto", help="a timm backbone (default convnext_atto)")
    mem.add_argument("--context", default="xl", help="the xT model's context encoder (default xl)")
    mem.add_argument("--region", type=positive_int, default=256, help="region side in px (default 256)")
    mem.add_argument("--chunk", type=positive_int, default=8, help="regions per chunk (default 8)")
    mem.add_argument("--bands", type=positive_int, default=2, help="input bands (default 2)")
    mem.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    mem.add_argument("--cap-gib", type=float, default=16.0, help="kill a child past this RSS, as OOM (default 16)")
    mem.add_argument("--out", type=Path, help="write model_memory.json and model_memory.png into this folder")

    reach = sub.add_parser("reach", help="how many regions back Transformer-XL reaches, measured vs its formula",
                           description="Measure xT-XL's reach (regions back from the last region of a one-row "
                                       "noise scene with non-zero gradient) for every depth and chunk size "
                                       "asked, next to depth x memory chunks x chunk + position.")
    reach.add_argument("--depths", type=positive_int, nargs="+", default=[1, 2, 3], help="context layers (default 1 2 3)")
    reach.add_argument("--chunks", type=positive_int, nargs="+", default=[2, 4], help="chunk sizes (default 2 4)")
    reach.add_argument("--cols", type=positive_int, default=24, help="regions in the scene's row (default 24)")
    reach.add_argument("--out", type=Path, help="write the results JSON here")


def run(args: argparse.Namespace) -> int:
    return {"probe": run_probe, "context": run_context, "erf": run_erf, "reach": run_reach,
            "memory": run_memory}[args.bench](args)


def _report(text: str, results: dict, out: Path | None) -> int:
    """Print a sweep's table; write its results JSON to ``out`` when given."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


def run_context(args: argparse.Namespace) -> int:
    from xtstream.bench.context_task import MODELS, sweep, table

    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"xtstream bench context: unknown model(s) {unknown}; known: {list(MODELS)}")
    kw = {k: v for k, v in (("scenes", args.scenes), ("eval_scenes", args.eval_scenes), ("rows", args.rows),
                             ("cols", args.cols), ("chunk", args.chunk)) if v is not None}
    results = sweep(models, seeds=args.seeds, progress=not args.quiet, order=args.order, **kw)
    return _report(table(results), results, args.out)


def run_probe(args: argparse.Namespace) -> int:
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
    return _report(table(results), results, args.out)


def run_erf(args: argparse.Namespace) -> int:
    from xtstream.bench.erf import compare, compare_figure, table

    results, maps = compare(rows=args.rows, cols=args.cols, region=args.region, chunk=args.chunk,
                            depth=args.depth, backbone=args.backbone)
    print(table(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "erf.json").write_text(json.dumps(results, indent=1) + "\n")
        compare_figure(results, maps, args.out / "erf.png")
        print(f"wrote {args.out / 'erf.json'}, {args.out / 'erf.png'}")
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from xtstream.bench.memory import MemorySetup, measure, write

    if 1024 not in args.sizes:
        raise SystemExit("xtstream bench memory: --sizes must include 1024 (the ratios are over it)")
    setup = MemorySetup(backbone=args.backbone, context=args.context, region=args.region, chunk=args.chunk,
                        bands=args.bands, device=args.device)
    results = measure(sorted(args.sizes), setup, cap_gib=args.cap_gib)
    print(f"peak at {results['xt_ratio_top_size']}² / 1024²: xT {results['xt_mem_ratio']}, "
          f"bare backbone {results['backbone_mem_ratio']} (at {results['backbone_ratio_top_size']}²)")
    if args.out is not None:
        doc, png = write(results, args.out)
        print(f"wrote {doc}, {png}")
    return 0


def run_reach(args: argparse.Namespace) -> int:
    from xtstream.bench.erf import reach_sweep

    rows = reach_sweep(args.depths, args.chunks, cols=args.cols)
    print("depth  chunk  measured  formula")
    for r in rows:
        print(f"{r['depth']:>5}  {r['chunk']:>5}  {r['measured']:>8}  {r['formula']:>7}"
              + ("" if r["measured"] < args.cols - 1 else "  (capped: the scene's first region)"))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cols": args.cols, "reach": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
