"""Regions/s of a model forward with the xView3 head at output stride 1, 2 and 4, against the bare
backbone (``model.encoder(x)``), on CPU: convnext_atto, 256-px regions, XL context (width 256, 2
layers, 8 heads: the ``xt_convnext_atto_xl`` preset), a chunk of 4 regions, ``torch.inference_mode``.
Why: issue 9 asks the xView3 model's forward for >= 0.7x the bare backbone's regions/s; this shows
what each stride costs, and ``model_vs_backbone`` at the head's default stride.

    python benchmarks/head_stride.py [--repeats 5] [--calls 5] [--threads N] [--json PATH]

Each trial times ``--calls`` forwards of one chunk; trials alternate between the runs (the three
strides and the backbone) so drifting load on a shared machine hits all alike, and the median trial
of each is reported. Writes ``benchmarks/results/head_stride.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine  # noqa: E402

import xtstream  # noqa: E402
from xtstream.tasks.xview3 import XView3Head  # noqa: E402

STRIDES = (1, 2, 4)
DEFAULT_STRIDE = inspect.signature(XView3Head).parameters["stride"].default


def trial_seconds(fns: dict, calls: int, repeats: int) -> dict[str, list[float]]:
    """``{name: [seconds per call, one per trial]}``: ``repeats`` trials of ``calls`` calls of each
    ``fns[name]()``, the runs alternating, after two warm-up calls of each."""
    for fn in fns.values():
        fn(), fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - t0) / calls)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="trials per run")
    p.add_argument("--calls", type=int, default=5, help="forwards per trial")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, default=HERE / "results" / "head_stride.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixels = torch.randn(1, args.chunk, args.bands, args.region, args.region)  # (B, C, bands, R, R)
    positions = torch.tensor([[0, k] for k in range(args.chunk)])
    flat = pixels.flatten(0, 1)  # (C, bands, R, R): the same regions through the backbone alone
    fns = {}
    for stride in STRIDES:
        model = xtstream.create_model("convnext_atto", region=args.region, in_chans=args.bands, context="xl",
                                      chunk=args.chunk, dim=256, depth=2, heads=8, head="xview3",
                                      head_kwargs={"stride": stride}).eval()
        fns[f"stride_{stride}"] = lambda model=model: model(pixels, positions)
    fns["backbone"] = lambda: model.encoder(flat)
    with torch.inference_mode():
        seconds = trial_seconds(fns, args.calls, args.repeats)
    rate = {name: args.chunk / statistics.median(s) for name, s in seconds.items()}
    ratio = {name: rate[name] / rate["backbone"] for name in rate}
    result = {**machine(), "device": "cpu", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "backbone": "convnext_atto", "context": "xl (dim 256, depth 2, heads 8)", "region": args.region,
              "chunk": args.chunk, "bands": args.bands, "trials": args.repeats, "calls_per_trial": args.calls,
              "head_params": sum(p.numel() for p in model.head.parameters()),
              "default_stride": DEFAULT_STRIDE,
              "backbone_regions_per_s": round(rate["backbone"], 2),
              **{f"model_stride_{s}_regions_per_s": round(rate[f"stride_{s}"], 2) for s in STRIDES},
              **{f"model_stride_{s}_vs_backbone": round(ratio[f"stride_{s}"], 3) for s in STRIDES},
              "model_vs_backbone": round(ratio[f"stride_{DEFAULT_STRIDE}"], 3),
              "trial_s": {name: [round(t, 4) for t in s] for name, s in seconds.items()}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.chunk} regions of {args.region} px, "
          f"median of {args.repeats} alternating trials of {args.calls} calls")
    for name in fns:
        label = "backbone alone" if name == "backbone" else f"model, stride {name.split('_')[1]}"
        print(f"{label:>18}: {rate[name]:8.1f} regions/s ({ratio[name]:.2f}x the backbone's)")
    print(f"model_vs_backbone at the default stride {DEFAULT_STRIDE}: {result['model_vs_backbone']:.3f} (target >= 0.7)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
