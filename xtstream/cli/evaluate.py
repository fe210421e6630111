"""``xtstream evaluate PRED.csv GT.csv [--shoreline-dir DIR] [--json OUT]``: the xView3 metric
(:mod:`xtstream.tasks.xview3.metric`, formulas and sources there), or top-1/top-5 accuracy with
``--task classification`` (:mod:`xtstream.tasks.classification.metric`)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", type=Path, help="predictions CSV (xView3 submission columns, or scene_id,top1..topK)")
    p.add_argument("gt", type=Path, help="ground-truth CSV (xView3 labels; or scene_id,label or an image list "
                   "path[,scene_id],label)")
    p.add_argument("--task", choices=["xview3", "classification"], default="xview3",
                   help="which metric (default xview3)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickled shoreline files (the official xView3 layout) — runs pickle: trusted dirs only")
    p.add_argument("--shoreline-dir", type=Path,
                   help="directory of {scene_id}_shoreline.npy; without it F1_shore is 0 (as the reference)")
    conf = p.add_mutually_exclusive_group()
    conf.add_argument("--score-all", action="store_true",
                      help="score every ground-truth object (default: HIGH and MEDIUM confidence only)")
    conf.add_argument("--drop-low", action="store_true",
                      help="drop predictions matched to LOW-confidence objects before scoring")
    p.add_argument("--distance-tolerance", type=float, default=200.0,
                   help="a match counts if closer than this, metres (default 200)")
    p.add_argument("--shore-tolerance", type=float, default=2.0,
                   help="'close to shore' within this many km (default 2)")
    p.add_argument("--pixel-size", type=float, default=10.0, help="metres per pixel (default 10)")
    p.add_argument("--json", type=Path, dest="json_out", help="also write the components to this JSON file")


def _evaluate_xview3(args: argparse.Namespace) -> dict[str, Any]:
    from xtstream.tasks.xview3.metric import (check_scenes, read_ground_truth, read_predictions,
                                              read_shorelines, score)

    gt = read_ground_truth(args.gt)
    preds = read_predictions(args.pred)
    check_scenes(preds, gt, args.pred)
    shorelines = None
    if args.shoreline_dir is not None:
        with warnings.catch_warnings():  # said once, on stdout beside the scores, not as a Python warning
            warnings.simplefilter("ignore")
            shorelines, missing = read_shorelines(args.shoreline_dir, {g["scene_id"] for g in gt},
                                                  allow_pickle=args.allow_pickle)
        if missing:
            print(f"note: {len(missing)} scene(s) have no shoreline file in {args.shoreline_dir}; "
                  f"left out of F1_shore: {', '.join(missing)}")
    return score(preds, gt, shorelines, tolerance_m=args.distance_tolerance,
                 shore_tolerance_km=args.shore_tolerance, pixel_size_m=args.pixel_size,
                 score_all=args.score_all, drop_low=args.drop_low)


def run(args: argparse.Namespace) -> int:
    if args.task == "classification":
        from xtstream.tasks.classification.metric import topk

        result = topk(args.pred, args.gt)
    else:
        result = _evaluate_xview3(args)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.6f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0
