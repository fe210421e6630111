"""Context probes: does a trained xT use its context? Object AUC of region-only vs xT models.

    python benchmarks/context_probe.py                 # 3 seeds x the probe/context runs (about an hour)
    python benchmarks/context_probe.py --seeds 1 --scenes 300    # a quick look
    python benchmarks/context_probe.py --runs in_chunk:mamba,across_chunks:mamba --merge   # rerun two
    python benchmarks/context_probe.py --runs in_chunk:xl:classification --merge   # the classification head

``--merge`` reruns only ``--runs`` and keeps the other runs of the existing results file (each run
records its date and budget; the summary keys are recomputed over all of them).

The same sweep as ``xtstream bench probe`` (see :mod:`xtstream.bench.probe` for the probes), with
the machine recorded; writes ``benchmarks/results/context_probe.json`` (``auc_region_only``,
``auc_xl_in_chunk``, ``auc_xl_across_chunks``, ``auc_mamba_in_chunk``,
``auc_mamba_across_chunks``, ``auc_full_in_chunk``, ``seeds``, the classification head's
``auc_xl_in_chunk_classification`` and so on, and the per-run details).
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

from xtstream.bench.probe import DEFAULT_RUNS, parse_runs, summarise, sweep, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scenes", type=int, help="training scenes per model (default: per head and probe, xtstream.bench.probe.DEFAULT_SCENES)")
    p.add_argument("--bptt-chunks", type=int, help="default: one whole probe scene per window")
    p.add_argument("--runs", help="comma-separated probe:context[:head] (default: all of DEFAULT_RUNS)")
    p.add_argument("--merge", action="store_true",
                   help="keep the existing results file's other runs (same seeds and budgets required)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 to run one model per core "
                                                "in parallel processes, each with --merge)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = DEFAULT_RUNS
    if args.runs:
        try:
            runs = parse_runs(args.runs)
        except ValueError as e:
            p.error(str(e))
    path = args.out / "context_probe.json"
    old = json.loads(path.read_text()) if args.merge and path.exists() else None
    if old is not None:  # checked before an hour of training, not after
        # budgets are per run (each records its scenes and scenes per step); these are global
        bptt = "scene" if args.bptt_chunks is None else args.bptt_chunks
        for key, value in (("seeds", args.seeds), ("bptt_chunks", bptt)):
            if old.get(key) != value:
                p.error(f"--merge: {path} was run with {key}={old.get(key)!r}, this run would use "
                        f"{value!r}; rerun everything instead")
    results = {**machine(), **sweep(runs, seeds=args.seeds, scenes=args.scenes, bptt_chunks=args.bptt_chunks)}
    if old is not None:
        results = merge_runs(path, results, summarise, ("auc_",))
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
