"""Context probes: does a trained xT use its context? Object AUC of region-only vs xT models.

    python benchmarks/context_probe.py                 # 3 seeds x the probe/context runs (about an hour)
    python benchmarks/context_probe.py --seeds 1 --scenes 300    # a quick look

The same sweep as ``xtstream bench probe`` (see :mod:`xtstream.bench.probe` for the probes), with
the machine recorded; writes ``benchmarks/results/context_probe.json`` (``auc_region_only``,
``auc_xl_in_chunk``, ``auc_xl_across_chunks``, ``auc_mamba_in_chunk``,
``auc_mamba_across_chunks``, ``auc_full_in_chunk``, ``seeds``, and the per-run details).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine  # noqa: E402

from xtstream.bench.probe import DEFAULT_RUNS, sweep, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scenes", type=int, help="training scenes per model (default: per probe, DEFAULT_SCENES)")
    p.add_argument("--bptt-chunks", type=int, help="default: one whole probe scene per window")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    results = {**machine(), **sweep(DEFAULT_RUNS, seeds=args.seeds, scenes=args.scenes,
                                      bptt_chunks=args.bptt_chunks)}
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "context_probe.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
