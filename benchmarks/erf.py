"""Effective receptive field (the paper's §7.1): how far back one output of each model sees.

    python benchmarks/erf.py                    # a 4 x 4 scene, chunks of 4, depth 2 (seconds)
    python benchmarks/erf.py --rows 3 --cols 4  # what ``xtstream bench erf`` runs by default

The same comparison as ``xtstream bench erf`` (see :mod:`xtstream.bench.erf`): region-only, xT-XL,
xT-Mamba and full attention at random initialisation (seed 0), the vessel logit at the centre of a
noise scene's last region back-propagated to the pixels through the carried context state. By
default the scene is 4 x 4 regions, not the command's 3 x 4: there XL's two layers of one-chunk
memory reach back 11 of the 15 regions, so its limit shows in the figure (at 3 x 4 it reaches the
first region, as Mamba and full attention do).

Also the **reach sweep**: XL at depth 1, 2, 3 and chunks of 2 and 4 on a 1 x 24 scene (longer than
the deepest reach, 15), measured reach against :func:`xtstream.bench.erf.xl_reach_formula`.

Writes ``benchmarks/results/erf.json`` (``reach_<model>``, ``share_outside_<model>``,
``reach_formula_xl``, ``reach_sweep_matches``, ``models``, ``reach`` rows ``{depth, chunk,
measured, formula}``) and ``benchmarks/results/erf.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine  # noqa: E402

from xtstream.bench.erf import compare, compare_figure, reach_sweep, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--region", type=int, default=64)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--sweep-cols", type=int, default=24, help="regions in the reach sweep's one-row scene")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    results, maps = compare(rows=args.rows, cols=args.cols, region=args.region, chunk=args.chunk, depth=args.depth)
    sweep = reach_sweep(rows=1, cols=args.sweep_cols, region=args.region)
    seconds = time.perf_counter() - start

    models = results["models"]
    summary = {f"reach_{k}": r["reach_regions"] for k, r in models.items()}
    summary.update({f"share_outside_{k}": round(r["share_outside"], 4) for k, r in models.items()})
    summary["reach_formula_xl"] = models["xl"]["reach_formula"]
    summary["reach_sweep_matches"] = all(r["measured"] == r["formula"] for r in sweep)
    document = {**machine(), "threads": torch.get_num_threads(), "seconds": round(seconds, 1), **summary,
                **results, "reach_scene": {"rows": 1, "cols": args.sweep_cols, "region": args.region,
                                           "target": args.sweep_cols - 1, "weights": "random init, seed 0"},
                "reach": sweep}
    print(table(results))
    print(f"\nXL reach sweep (regions back from the last of 1 x {args.sweep_cols})")
    for r in sweep:
        print(f"  depth {r['depth']}, chunk {r['chunk']}: measured {r['measured']:>2}, formula {r['formula']:>2}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "erf.json").write_text(json.dumps(document, indent=1) + "\n")
    compare_figure(results, maps, args.out / "erf.png")
    print(f"wrote {args.out / 'erf.json'}, {args.out / 'erf.png'} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
