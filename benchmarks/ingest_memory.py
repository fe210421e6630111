"""Ingest memory and throughput: peak RSS flat in scene size; throughput vs a raw floor; scaling.

    python benchmarks/ingest_memory.py                 # 4,096² vs 29,400 × 24,400, two bands
    python benchmarks/ingest_memory.py --large 12000x10000 --small 2048x2048   # quicker

Each measured run is a fresh process; peak RSS sums the process and its dask workers. Writes
``benchmarks/results/ingest_memory.json``. Scenes are generated once under ``benchmarks/work/``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import ensure_scene, machine, run_measured, scale_args, table  # noqa: E402

BANDS = ["VV", "VH"]
CHUNK = 2048


def child_ingest(scene: str, out: str, scheduler: str) -> dict:
    from xtstream.data.ingest import ingest

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    ingest(scene, out, spec="xview3", bands=BANDS, tile=CHUNK, scheduler=scheduler, progress=False)
    return {"seconds": time.perf_counter() - t}


def child_floor(scene: str, out: str) -> dict:
    """The raw floor: one loop of plain rasterio windowed reads and Zarr chunk writes, same bytes."""
    import numpy as np
    import rasterio
    import zarr
    from rasterio.windows import Window

    from xtstream.data.ingest import make_codec

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    files = [Path(scene) / "VV_dB.tif", Path(scene) / "VH_dB.tif"]
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(files[0]) as a, rasterio.open(files[1]) as b:
        h, w = a.height, a.width
        arr = zarr.create_array(out, shape=(2, h, w), chunks=(2, CHUNK, CHUNK), dtype="float32",
                                compressors=make_codec())
        for y in range(0, h, CHUNK):
            for x in range(0, w, CHUNK):
                win = Window(x, y, min(CHUNK, w - x), min(CHUNK, h - y))
                block = np.stack([a.read(1, window=win), b.read(1, window=win)])
                arr[:, y: y + win.height, x: x + win.width] = block
    return {"seconds": time.perf_counter() - t}


def child_naive(scene: str, out: str) -> dict:
    """The usual approach: rioxarray.open_rasterio per band (dask chunks), concat, xarray to_zarr."""
    import rioxarray
    import xarray as xr

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    bands = [rioxarray.open_rasterio(Path(scene) / f, chunks=CHUNK) for f in ("VV_dB.tif", "VH_dB.tif")]
    image = xr.concat(bands, dim="band").rename("image")
    image.to_dataset().to_zarr(out, zarr_format=3, consolidated=False, mode="w")
    return {"seconds": time.perf_counter() - t}


def main() -> None:
    args = scale_args(__doc__, HERE / "work")
    if args.child:
        kind, *rest = args.child
        child = {"ingest": child_ingest, "floor": child_floor, "naive": child_naive}[kind]
        print(json.dumps(child(*rest)))
        return

    sizes = args.sizes
    scenes = {name: ensure_scene(args.work, *hw) for name, hw in sizes.items()}
    out = str(args.work / "bench.zarr")
    me = str(Path(__file__).resolve())
    runs = {}
    for name in ("small", "large"):
        runs[f"{name}_local2"] = run_measured([me, "--child", "ingest", str(scenes[name]), out, "local:2"])
    runs["large_local1"] = run_measured([me, "--child", "ingest", str(scenes["large"]), out, "local:1"])
    runs["large_threads"] = run_measured([me, "--child", "ingest", str(scenes["large"]), out, "threads"])
    runs["large_floor"] = run_measured([me, "--child", "floor", str(scenes["large"]), out])
    runs["large_naive_rioxarray"] = run_measured([me, "--child", "naive", str(scenes["large"]), out])
    shutil.rmtree(out, ignore_errors=True)

    def mb(name: str) -> float:
        h, w = sizes["large" if name.startswith("large") else "small"]
        return 2 * h * w * 4 / 1e6

    rows = [[k, f"{v['seconds']:.1f}", f"{mb(k) / v['seconds']:.0f}", f"{v['peak_rss_mib']:.0f}"]
            for k, v in runs.items()]
    print(table(rows, ["run", "seconds", "MB/s", "peak RSS MiB"]))
    result = {
        **machine(),
        "small": args.small, "large": args.large, "bands": BANDS, "chunk": CHUNK,
        "peak_rss_small_mib": round(runs["small_local2"]["peak_rss_mib"], 1),
        "peak_rss_large_mib": round(runs["large_local2"]["peak_rss_mib"], 1),
        "rss_ratio": round(runs["large_local2"]["peak_rss_mib"] / runs["small_local2"]["peak_rss_mib"], 3),
        "throughput_mb_s": round(mb("large") / runs["large_local2"]["seconds"], 1),
        "floor_mb_s": round(mb("large") / runs["large_floor"]["seconds"], 1),
        "throughput_vs_floor": round(runs["large_floor"]["seconds"] / runs["large_local2"]["seconds"], 3),
        "threads_vs_floor": round(runs["large_floor"]["seconds"] / runs["large_threads"]["seconds"], 3),
        "two_worker_speedup": round(runs["large_local1"]["seconds"] / runs["large_local2"]["seconds"], 3),
        "peak_rss_large_threads_mib": round(runs["large_threads"]["peak_rss_mib"], 1),
        "peak_rss_naive_rioxarray_mib": round(runs["large_naive_rioxarray"]["peak_rss_mib"], 1),
        "naive_seconds_vs_ours": round(runs["large_naive_rioxarray"]["seconds"] / runs["large_local2"]["seconds"], 3),
        "runs": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in runs.items()},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
