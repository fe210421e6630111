"""Regions/s of the encode_regions stage vs the bare backbone on the same pre-stacked batches.

    python benchmarks/encoder_throughput.py                    # CPU, convnext_atto, 256 px, batch 8
    python benchmarks/encoder_throughput.py --device cuda --backbone swinv2_tiny_window8_256 --batch 32

The stage takes an iterator of RegionSamples (numpy pixels already in memory, so reading is not
timed): grouping, stacking, (pinned) host→device copies, the backbone, NCHW normalisation. The
bare run calls the timm ``features_only`` model directly on batches stacked beforehand and already
on the device: the ceiling. Inference (``torch.inference_mode``). Trials alternate between the two
so drifting load on a shared machine hits both alike; the median trial of each is reported.
Writes ``benchmarks/results/encoder_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, table  # noqa: E402

from xtstream.models.encoders import create_region_encoder, encode_regions  # noqa: E402
from xtstream.data.grid import RegionGrid  # noqa: E402
from xtstream.data.sample import RegionSample  # noqa: E402


def make_samples(n: int, region: int, bands: int) -> list[RegionSample]:
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = RegionGrid(rows * region, cols * region, region)
    rng = np.random.default_rng(0)
    return [RegionSample("bench", i, grid, rng.standard_normal((bands, region, region), dtype=np.float32))
            for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(samples, encoder, batch: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    n = 0
    for out in encode_regions(iter(samples), encoder, batch_size=batch, device=device):
        n += len(out)
    sync(device)
    assert n == len(samples)
    return time.perf_counter() - start


def time_bare(batches: list[torch.Tensor], encoder, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for x in batches:
        encoder.features(x)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--regions", type=int, default=64)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = create_region_encoder(args.backbone, region=args.region, in_chans=args.bands).to(device).eval()
    samples = make_samples(args.regions, args.region, args.bands)
    stacked = [torch.from_numpy(np.stack([s.pixels for s in samples[i: i + args.batch]])).to(device)
               for i in range(0, len(samples), args.batch)]
    stage_s, bare_s = [], []
    with torch.inference_mode():
        time_bare(stacked[:2], encoder, device)  # warm-up: allocator, kernels, caches
        time_stage(samples[: 2 * args.batch], encoder, args.batch, device)
        for _ in range(args.trials):
            bare_s.append(time_bare(stacked, encoder, device))
            stage_s.append(time_stage(samples, encoder, args.batch, device))
    stage_rate = args.regions / statistics.median(stage_s)
    bare_rate = args.regions / statistics.median(bare_s)
    rows = [["bare backbone (pre-stacked, on device)", f"{bare_rate:.1f}",
             " ".join(f"{s:.2f}" for s in bare_s)],
            ["encode_regions stage", f"{stage_rate:.1f}", " ".join(f"{s:.2f}" for s in stage_s)]]
    print(table(rows, ["run", "regions/s (median)", "trial seconds"]))
    result = {
        **machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "backbone": args.backbone, "region": args.region, "bands": args.bands,
        "batch_size": args.batch, "regions": args.regions, "trials": args.trials,
        "stage_regions_per_s": round(stage_rate, 2),
        "backbone_regions_per_s": round(bare_rate, 2),
        "stage_vs_backbone": round(stage_rate / bare_rate, 3),
        "stage_trial_s": [round(s, 3) for s in stage_s],
        "backbone_trial_s": [round(s, 3) for s in bare_s],
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("trial_s")}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_throughput.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
