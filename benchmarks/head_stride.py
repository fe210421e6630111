"""Regions/s of a model forward with the xView3 head at output stride 1, 2 and 4, against the bare
backbone (``model.encoder(x)``), on CPU: convnext_atto, 256-px regions, XL context (width 256, 2
layers), a chunk of 4 regions, ``torch.inference_mode``. Why: the full-resolution decoder tail cost
more than the backbone; this shows what each stride costs.

    python benchmarks/head_stride.py [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

import xtstream


def regions_per_s(fn, regions: int, repeats: int) -> float:
    """Best-of-``repeats`` rate of ``fn()`` (after two warm-up calls): the least-disturbed run."""
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return regions / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pixels = torch.randn(1, args.chunk, args.bands, args.region, args.region)  # (B, C, bands, R, R)
    positions = torch.tensor([[0, k] for k in range(args.chunk)])
    rates = {}
    with torch.inference_mode():
        for stride in (1, 2, 4):
            model = xtstream.create_model("convnext_atto", region=args.region, in_chans=args.bands, context="xl",
                                          chunk=args.chunk, dim=256, depth=2, heads=8, head="xview3",
                                          head_kwargs={"stride": stride}).eval()
            rates[f"model, stride {stride}"] = regions_per_s(lambda: model(pixels, positions), args.chunk, args.repeats)
        flat = pixels.flatten(0, 1)  # (C, bands, R, R): the same regions through the backbone alone
        rates["backbone alone"] = regions_per_s(lambda: model.encoder(flat), args.chunk, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.chunk} regions of {args.region} px")
    for name, rate in rates.items():
        print(f"{name:>18}: {rate:8.1f} regions/s ({rates['backbone alone'] / rate:.2f}x the backbone's time)")


if __name__ == "__main__":
    main()
