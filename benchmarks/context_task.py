"""The context-dependent task: near-shore vessels told from far ones, region-only vs xT (F1, shore F1).

    python benchmarks/context_task.py                          # 4 models x 3 seeds (about an hour on 2 cores)
    python benchmarks/context_task.py --seeds 1 --scenes 500   # a quick look
    python benchmarks/context_task.py --models xt_mamba,xt_full --threads 1 --merge   # one core's share
    python benchmarks/context_task.py --models xt_xl,xt_mamba --order two_pass --merge   # another order

The same sweep as ``xtstream bench context`` (the task: :mod:`xtstream.bench.context_task`), with
the machine recorded. ``--merge`` keeps the other models of the existing results file (read again
just before writing, so two ``--merge`` processes, one per core, both land). Writes
``benchmarks/results/context_task.json``: ``seeds``, and for each of ``region_only``, ``xt_xl``,
``xt_mamba``, ``xt_full``: ``f1_<name>`` and ``shore_f1_<name>`` (means over seeds) with
``_std`` (``<name>_<order>`` for another ``--order``), ``shore_gain`` (the best xT's shore F1 over region-only's, in points), per-seed details.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, merge_runs  # noqa: E402

from xtstream.bench.context_task import DEFAULT_MODELS, MODELS, ORDERS, summarise, sweep, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scenes", type=int, help="training scenes per model (default: xtstream.bench.context_task.SCENES)")
    p.add_argument("--eval-scenes", type=int, help="held-out scenes per model (default: EVAL_SCENES)")
    p.add_argument("--order", choices=ORDERS, default="row_major", help="how scenes are read (default row_major)")
    p.add_argument("--rows", type=int, help="scene height in regions (default 4)")
    p.add_argument("--cols", type=int, help="scene width in regions (default 4)")
    p.add_argument("--chunk", type=int, help="regions per chunk (default 4)")
    p.add_argument("--merge", action="store_true", help="keep the existing results file's other models (same seeds)")
    p.add_argument("--threads", type=int, help="torch threads (1: one model per core in parallel --merge processes)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = tuple(m for m in args.models.split(",") if m)
    if any(m not in MODELS for m in models):
        p.error(f"--models: known are {list(MODELS)}")
    path = args.out / "context_task.json"
    if args.merge and path.exists() and json.loads(path.read_text()).get("seeds") != args.seeds:
        p.error(f"--merge: {path} was run with other seeds; rerun everything instead")
    kw = {k: v for k, v in (("scenes", args.scenes), ("eval_scenes", args.eval_scenes), ("rows", args.rows), ("cols", args.cols),
                             ("chunk", args.chunk)) if v is not None}
    kw["order"] = args.order
    results = {**machine(), **sweep(models, seeds=args.seeds, **kw)}
    if args.merge and path.exists():
        results = merge_runs(path, results, summarise, ("f1_", "shore_f1_", "shore_gain"))
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
