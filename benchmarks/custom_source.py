"""Custom sources at speed: a procedural scene streamed as regions through the two source protocols.

    python benchmarks/custom_source.py [--size 16384] [--region 256] [--chunk 2048] [--repeats 3]

The same procedural field (``sin(y / 100) * cos(x / 77)``, one float32 band) as

* ``windowed``: a :class:`~xtstream.data.sources.WindowedSource` (``read_window`` computes the
  window asked for), and
* ``raster``: a ``RasterSource`` (``to_dataarray(chunks)`` → ``dask.array.map_blocks`` over
  ``--chunk``² chunks), read through :class:`~xtstream.data.windows.BlockCache`;

each streamed region by region (``iter_regions``, row-major, ``--region`` px) in one process,
alternating, median of ``--repeats``. ``raster_vs_windowed`` (also ``dask_vs_windowed``, issue
13's name) = raster / windowed regions/s (target: ≥ 0.9); ``raster_chunk_computes`` counts how often each chunk was computed (1: read
once). Then issue 13's figures: each path streams a ``--bands``-band source of each of
``--memory-sizes`` (default 4,096² and 100,000²) once, in a fresh process: ``peak_rss_mib`` per path
and size, ``stream_rss_ratio`` (largest over smallest, the worse path), and ``dask_vs_windowed`` =
raster / windowed regions/s on the largest. Last, the pass through a model: each path's source of
each of ``--model-sizes`` predicted by ``xtstream.predict`` with a small classification model
(:data:`MODEL`), in a fresh process: ``model_peak_rss_mib``, ``model_rss_ratio``. ``rss_ratio``
is the worse of the two ratios (target: ≤ 1.1).
Writes ``benchmarks/results/custom_source.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, run_measured, table  # noqa: E402


def field(y0: int, y1: int, x0: int, x1: int, bands: int = 1) -> np.ndarray:
    """``(bands, y1 - y0, x1 - x0)`` float32: band ``b`` is ``sin(y / 100) * cos(x / 77) * (b + 1)``."""
    y = np.arange(y0, y1, dtype="f4")[:, None]
    x = np.arange(x0, x1, dtype="f4")[None, :]
    one = (np.sin(y / 100) * np.cos(x / 77)).astype("f4")
    return np.stack([one * (b + 1) for b in range(bands)])


def sources(size: int, bands: int = 1):
    import dask.array as da

    from xtstream.data.sources import WindowedSource
    from xtstream.data.sources.base import build_dataarray

    class Windowed(WindowedSource):
        name, shape, dtype, band_names = "windowed", (bands, size, size), np.dtype("f4"), [f"v{b}" for b in range(bands)]

        def read_window(self, w):
            return field(w.y0, w.y1, w.x0, w.x1, bands)

    class Raster:
        name = "raster"

        def __init__(self) -> None:
            self.computes: dict[tuple[int, int], int] = {}
            self.lock = threading.Lock()

        def to_dataarray(self, chunks: int | tuple[int, int] = 2048):
            from xtstream.data.sources import chunk_sides

            ys, xs = chunk_sides(chunks)

            def block(block_info=None):
                (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
                with self.lock:
                    self.computes[(y0, x0)] = self.computes.get((y0, x0), 0) + 1
                return field(y0, y1, x0, x1, bands)
            rows = tuple(min(ys, size - i) for i in range(0, size, ys))
            cols = tuple(min(xs, size - i) for i in range(0, size, xs))
            return build_dataarray(da.map_blocks(block, dtype="f4", chunks=((bands,), rows, cols)),
                                   [f"v{b}" for b in range(bands)], name=self.name)

    return Windowed(), Raster()


def child_stream(path: str, size: int, bands: int, region: int, chunk: int) -> dict:
    """Stream every region of one ``size``² source through one path, once (a fresh process each,
    so that its peak RSS is this stream's)."""
    from xtstream.data.grid import RegionGrid
    from xtstream.data.windows import SourceWindows, iter_regions

    src = dict(zip(("windowed", "raster"), sources(size, bands)))[path]
    grid = RegionGrid(size, size, region)
    t = time.perf_counter()
    n = sum(1 for _ in iter_regions(SourceWindows(src, tile=chunk), grid))
    seconds = time.perf_counter() - t
    return {"regions": n, "seconds": seconds, "regions_per_s": n / seconds,
            "chunk_computes": max(src.computes.values()) if path == "raster" else None}


#: the model of the pass through a model: a small ConvNeXt, one Transformer-XL layer, a classification head
MODEL = {"chunk": 16, "context": "xl", "dim": 64, "depth": 1, "heads": 2, "head": "classification",
         "num_classes": 2, "depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}


def child_model(path: str, size: int, bands: int, region: int, chunk: int) -> dict:
    """``xtstream.predict`` of one ``size``² source through one path with :data:`MODEL` (a fresh
    process: its peak RSS is the whole job's, model and prediction output included)."""
    import shutil
    import tempfile

    import torch

    import xtstream

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = xtstream.create_model("convnext_atto", region=region, in_chans=bands, **MODEL).eval()
    src = dict(zip(("windowed", "raster"), sources(size, bands)))[path]
    out = Path(tempfile.mkdtemp(prefix="custom_source_predict_"))
    try:
        t = time.perf_counter()
        xtstream.predict(model, src, out / "run", progress=False)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = ((size + region - 1) // region) ** 2
    return {"regions": n, "seconds": seconds, "regions_per_s": n / seconds,
            "chunk_computes": max(src.computes.values()) if path == "raster" else None}


def memory_runs(kind: str, sizes: list[int], bands: int, region: int, chunk: int) -> dict:
    """Each path over each size in a fresh process (``kind``: ``stream`` regions, or ``model``:
    predict through :data:`MODEL`): peak RSS, regions/s."""
    runs: dict[str, dict[str, dict]] = {"windowed": {}, "raster": {}}
    me = str(Path(__file__).resolve())
    for size in sizes:
        for path in runs:
            r = run_measured([me, "--child", kind, path, str(size), str(bands), str(region), str(chunk)],
                             interval=0.1)
            runs[path][str(size)] = r
            print(f"{kind:>6} {path:>8} {size:>6}²: {r['regions']:>6} regions, {r['regions_per_s']:.0f} regions/s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[4096, 100_000],
                   help="source sides streamed once per path in fresh processes (peak RSS; the largest sets dask_vs_windowed)")
    p.add_argument("--bands", type=int, default=2, help="bands of the memory runs' sources")
    p.add_argument("--json", type=Path, default=HERE / "results" / "custom_source.json")
    p.add_argument("--model-sizes", type=int, nargs="*", default=[4096, 100_000],
                   help="source sides predicted once per path through a small classification model in fresh "
                        "processes (peak RSS; none: skip the pass, keeping the last results')")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, path, *numbers = args.child
        print(json.dumps((child_stream if kind == "stream" else child_model)(path, *map(int, numbers))))
        return

    from xtstream.data.grid import RegionGrid
    from xtstream.data.windows import SourceWindows, iter_regions

    grid = RegionGrid(args.size, args.size, args.region)
    rates: dict[str, list[float]] = {"windowed": [], "raster": []}
    computes: list[int] = []
    for _ in range(args.repeats):
        windowed, raster = sources(args.size)
        for name, src in (("windowed", windowed), ("raster", raster)):
            reader = SourceWindows(src, tile=args.chunk)
            t = time.perf_counter()
            n = sum(1 for _ in iter_regions(reader, grid))
            rates[name].append(n / (time.perf_counter() - t))
        computes.append(max(raster.computes.values()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(table([[k, f"{med[k]:.0f}", " ".join(f"{r:.0f}" for r in v)] for k, v in rates.items()],
                ["source", "regions/s (median)", "runs"]))
    runs = memory_runs("stream", args.memory_sizes, args.bands, args.region, args.chunk)
    small, large = str(min(args.memory_sizes)), str(max(args.memory_sizes))
    peak = {path: {size: round(r["peak_rss_mib"], 1) for size, r in by_size.items()} for path, by_size in runs.items()}
    rss_ratio = max(peak[path][large] / peak[path][small] for path in peak)
    large_rates = {path: runs[path][large]["regions_per_s"] for path in runs}
    if args.model_sizes:
        model_runs = memory_runs("model", args.model_sizes, args.bands, args.region, args.chunk)
    else:  # the last results' pass, as measured then
        model_runs = json.loads(args.json.read_text()).get("model_runs", {}) if args.json.exists() else {}
    model_peak = {path: {size: round(r["peak_rss_mib"], 1) for size, r in by_size.items()}
                  for path, by_size in model_runs.items()}
    model_ratio = None
    if model_peak:
        sides = sorted(model_peak["windowed"], key=int)
        model_ratio = max(model_peak[path][sides[-1]] / model_peak[path][sides[0]] for path in model_peak)
    result = {**machine(), "size": args.size, "region": args.region, "chunk": args.chunk, "regions": len(grid),
              "windowed_regions_per_s": round(med["windowed"], 1), "raster_regions_per_s": round(med["raster"], 1),
              "raster_vs_windowed": round(med["raster"] / med["windowed"], 3),
              "raster_chunk_computes": max(computes), "runs": rates,
              # issue 13's figures: the largest memory-run source (100,000², two bands), each path once
              "memory_sizes": args.memory_sizes, "bands": args.bands, "peak_rss_mib": peak,
              # the worse of the stream and the pass through the model
              "rss_ratio": round(max(rss_ratio, model_ratio or 0), 3), "stream_rss_ratio": round(rss_ratio, 3),
              "model_rss_ratio": None if model_ratio is None else round(model_ratio, 3),
              "model_peak_rss_mib": model_peak, "model": f"convnext_atto {MODEL}",
              "large_regions_per_s": {k: round(v, 1) for k, v in large_rates.items()},
              "dask_vs_windowed": round(large_rates["raster"] / large_rates["windowed"], 3),
              "large_chunk_computes": runs["raster"][large]["chunk_computes"],
              "memory_runs": runs, "model_runs": model_runs,
              "targets": {"raster_vs_windowed": 0.9, "dask_vs_windowed": 0.9, "rss_ratio": 1.1}}
    print(json.dumps({k: result[k] for k in ("raster_vs_windowed", "raster_chunk_computes", "rss_ratio",
                                             "dask_vs_windowed", "peak_rss_mib", "model_peak_rss_mib")}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
