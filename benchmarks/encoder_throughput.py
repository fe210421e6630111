"""Regions/s of the encode_regions stage and of a whole model's stream vs the bare backbone.

    python benchmarks/encoder_throughput.py                    # CPU, convnext_atto, 256 px, batch 8
    python benchmarks/encoder_throughput.py --device cuda --backbone swinv2_tiny_window8_256 --batch 32

Three runs over the same regions, already in memory (reading is not timed):

* **bare**: the timm ``features_only`` model called directly on batches of ``--batch`` regions
  stacked beforehand and already on the device — the ceiling; and the same at the batch size the
  model's memory budget picks (the model runs are compared with that one: same backbone batches);
* **stage**: ``encode_regions`` over region chunks with ``--batch`` regions per backbone batch:
  stacking, (pinned) host→device copies, the backbone, NCHW normalisation;
* **model**: ``model.stream`` of an xT model (the backbone, ``--context`` over chunks of
  ``--chunk`` regions — by default Transformer-XL of width 256, 2 layers, as the
  ``xt_convnext_atto_xl`` preset — and the classification head) with the backbone batch its
  memory budget chooses (independent of the chunk), per-scene state, head outputs per chunk;
* **model, no context**: the same with ``context="none"``: what the streaming machinery itself
  (chunking, states, batching, the head) costs over the bare backbone.

Inference (``torch.inference_mode``). Trials alternate between the runs so drifting load on a
shared machine hits all alike; the median trial of each is reported. Writes
``benchmarks/results/encoder_throughput.json`` (``stage_vs_backbone``, ``model_vs_backbone``).
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

import xtstream  # noqa: E402
from xtstream.data.chunk import RegionChunk  # noqa: E402
from xtstream.data.grid import RegionGrid  # noqa: E402
from xtstream.models.encoders import budget_batch_size, encode_regions  # noqa: E402


def make_pixels(n: int, region: int, bands: int) -> tuple[RegionGrid, np.ndarray]:
    """A scene grid of at least ``n`` regions and ``(n, bands, R, R)`` random pixels."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = RegionGrid(rows * region, cols * region, region)
    rng = np.random.default_rng(0)
    return grid, rng.standard_normal((n, bands, region, region), dtype=np.float32)


def make_chunks(grid: RegionGrid, pixels: np.ndarray, chunk: int) -> list[RegionChunk]:
    """Fresh chunks over the same pixel arrays (the stream fills in outputs, so each trial gets new ones)."""
    return [RegionChunk("bench", grid, list(range(i, min(i + chunk, len(pixels)))), pixels[i:i + chunk])
            for i in range(0, len(pixels), chunk)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(chunks: list[RegionChunk], encoder, batch: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    n = 0
    for out in encode_regions(chunks, encoder, chunk=len(chunks[0]), batch_size=batch, device=device):
        n += len(out)
    sync(device)
    assert n == sum(len(c) for c in chunks)
    return time.perf_counter() - start


def time_model(chunks: list[RegionChunk], model, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    n = sum(len(c) for c in model.stream(chunks, device=device))
    sync(device)
    assert n == sum(len(c) for c in chunks)
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
    p.add_argument("--context", default="xl", help="the model run's context encoder")
    p.add_argument("--chunk", type=int, default=4, help="the model run's context chunk (regions)")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def build(context: str):
        return xtstream.create_model(args.backbone, region=args.region, in_chans=args.bands, context=context,
                                     chunk=args.chunk, dim=256, depth=2, heads=8, head="classification",
                                     num_classes=10).to(device).eval()

    models = {"model": build(args.context), "model_none": build("none")}
    encoder = models["model"].encoder
    grid, pixels = make_pixels(args.regions, args.region, args.bands)
    model_batch = budget_batch_size(encoder, device=device)

    def stack(batch: int) -> list[torch.Tensor]:
        return [torch.from_numpy(pixels[i: i + batch]).to(device) for i in range(0, len(pixels), batch)]

    stacked, stacked_model = stack(args.batch), stack(model_batch)
    runs: dict[str, list[float]] = {"bare": [], "bare_model_batch": [], "stage": [], "model": [], "model_none": []}
    with torch.inference_mode():
        time_bare(stacked[:2], encoder, device)  # warm-up: allocator, kernels, caches
        time_stage(make_chunks(grid, pixels[: 2 * args.batch], args.chunk), encoder, args.batch, device)
        for m in models.values():
            time_model(make_chunks(grid, pixels, args.chunk), m, device)
        for _ in range(args.trials):
            runs["bare"].append(time_bare(stacked, encoder, device))
            runs["bare_model_batch"].append(time_bare(stacked_model, encoder, device))
            runs["stage"].append(time_stage(make_chunks(grid, pixels, args.chunk), encoder, args.batch, device))
            for name, m in models.items():
                runs[name].append(time_model(make_chunks(grid, pixels, args.chunk), m, device))
    rate = {k: args.regions / statistics.median(v) for k, v in runs.items()}
    labels = {"bare": f"bare backbone (pre-stacked batches of {args.batch}, on device)",
              "bare_model_batch": f"bare backbone (pre-stacked batches of {model_batch}: the model's budget batch)",
              "stage": f"encode_regions stage (batches of {args.batch})",
              "model": f"model.stream: {args.context} context, chunk {args.chunk}, classification head "
                       f"(budget batch {model_batch})",
              "model_none": f"model.stream: no context, classification head (budget batch {model_batch})"}
    rows = [[labels[k], f"{rate[k]:.1f}", " ".join(f"{s:.2f}" for s in runs[k])] for k in runs]
    print(table(rows, ["run", "regions/s (median)", "trial seconds"]))
    result = {
        **machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "backbone": args.backbone, "region": args.region, "bands": args.bands,
        "batch_size": args.batch, "regions": args.regions, "trials": args.trials,
        "model_context": args.context, "model_chunk": args.chunk, "model_head": "classification",
        "model_batch_size": model_batch,
        "stage_regions_per_s": round(rate["stage"], 2),
        "backbone_regions_per_s": round(rate["bare"], 2),
        "model_regions_per_s": round(rate["model"], 2),
        "model_none_regions_per_s": round(rate["model_none"], 2),
        "stage_vs_backbone": round(rate["stage"] / rate["bare"], 3),
        "backbone_model_batch_regions_per_s": round(rate["bare_model_batch"], 2),
        "model_vs_backbone": round(rate["model"] / rate["bare_model_batch"], 3),
        "model_none_vs_backbone": round(rate["model_none"] / rate["bare_model_batch"], 3),
        "stage_trial_s": [round(s, 3) for s in runs["stage"]],
        "backbone_trial_s": [round(s, 3) for s in runs["bare"]],
        "backbone_model_batch_trial_s": [round(s, 3) for s in runs["bare_model_batch"]],
        "model_trial_s": [round(s, 3) for s in runs["model"]],
        "model_none_trial_s": [round(s, 3) for s in runs["model_none"]],
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("trial_s")}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_throughput.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
