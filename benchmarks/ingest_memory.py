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


def child_stages(scene: str, n: str = "6") -> dict:
    """Where one tile's time goes (issue 14): ``n`` 2048² tiles of the scene, each stage timed on
    its own in this process, one thread — GDAL decode of both bands, normalisation, the valid
    mask, the codec (blosc-zstd-1 + crc32c), the file write, and zarr's own write of the same
    tile (its async machinery = zarr write − codec − file write). Medians in ms per tile."""
    import statistics
    import tempfile

    import numpy as np
    import zarr

    from xtstream.data.chunk_codecs import chunk_layout
    from xtstream.data.grid import Window
    from xtstream.data.ingest import make_codec
    from xtstream.data.normalize import normalize_block, valid_block
    from xtstream.data.sources import open_source
    from xtstream.data.specs import load_spec

    spec = load_spec("xview3").select(BANDS)
    src = open_source(scene, spec, BANDS)
    _, h, w = src.shape
    nd = np.array([b.nodata for b in spec.bands], dtype=np.float64)
    params = dict(nodata=nd, lo=np.array([b.clip[0] for b in spec.bands]), hi=np.array([b.clip[1] for b in spec.bands]),
                  mean=np.array([b.mean for b in spec.bands]), std=np.array([b.std for b in spec.bands]),
                  fill=np.array([b.fill for b in spec.bands]), dtype=np.dtype("float32"))
    tiles = [(y, x) for y in range(0, h - CHUNK + 1, CHUNK) for x in range(0, w - CHUNK + 1, CHUNK)]
    tiles = tiles[len(tiles) // 3: len(tiles) // 3 + int(n)]  # inside the scene, away from its edges
    ms: dict[str, list[float]] = {k: [] for k in ("gdal_decode", "normalise", "valid_mask", "codec", "file_write",
                                                  "zarr_write")}
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(Path(tmp) / "z", shape=(2, h, w), chunks=(2, CHUNK, CHUNK), dtype="float32",
                                compressors=make_codec())
        encode = chunk_layout(Path(tmp) / "z").encoder()
        for y, x in tiles:
            t0 = time.perf_counter()
            raw = src.read_window(Window(y, x, y + CHUNK, x + CHUNK))
            t1 = time.perf_counter()
            block = normalize_block(raw, **params)
            t2 = time.perf_counter()
            valid_block(raw, nd)
            t3 = time.perf_counter()
            data = encode(np.ascontiguousarray(block).tobytes())
            t4 = time.perf_counter()
            (Path(tmp) / "tile").write_bytes(data)
            t5 = time.perf_counter()
            arr[:, y: y + CHUNK, x: x + CHUNK] = block
            t6 = time.perf_counter()
            for k, a, b in zip(ms, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                ms[k].append((b - a) * 1000)
        # the codec stage with each codec the ingest offers: ms per tile and compression ratio
        codecs = {}
        for name, level in (("blosc-zstd", 1), ("blosc-lz4", 1), ("blosc-lz4", 5), ("zstd", 1), ("none", 0)):
            z = zarr.create_array(Path(tmp) / f"{name}{level}", shape=(2, CHUNK, CHUNK), chunks=(2, CHUNK, CHUNK),
                                  dtype="float32", compressors=make_codec(name, level))
            enc = chunk_layout(Path(tmp) / f"{name}{level}").encoder()
            raw_bytes = np.ascontiguousarray(block).tobytes()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                size = len(enc(raw_bytes))
                times.append((time.perf_counter() - t) * 1000)
            codecs[f"{name}-{level}"] = {"ms": round(statistics.median(times), 1), "ratio": round(len(raw_bytes) / size, 3)}
            del z
    med = {k: round(statistics.median(v), 1) for k, v in ms.items()}
    med["zarr_overhead"] = round(max(0.0, med["zarr_write"] - med["codec"] - med["file_write"]), 1)
    ours = med["gdal_decode"] + med["normalise"] + med["valid_mask"] + med["codec"] + med["file_write"] + med["zarr_overhead"]
    return {"tiles": len(tiles), "tile": CHUNK, "ms_per_tile": med, "codecs_on_the_last_tile": codecs,
            "share": {k: round(med[k] / ours, 3) for k in ("gdal_decode", "normalise", "valid_mask", "codec",
                                                             "file_write", "zarr_overhead")}}


def main() -> None:
    args = scale_args(__doc__, HERE / "work", extra=lambda p: p.add_argument(
        "--stages-only", action="store_true", help="time one tile's stages alone, keeping the other results"))
    if args.child:
        kind, *rest = args.child
        child = {"ingest": child_ingest, "floor": child_floor, "naive": child_naive, "stages": child_stages}[kind]
        print(json.dumps(child(*rest)))
        return
    me = str(Path(__file__).resolve())
    results = HERE / "results" / "ingest_memory.json"
    if args.stages_only:
        stages = run_measured([me, "--child", "stages", str(ensure_scene(args.work, *args.sizes["large"]))], interval=0.5)
        result = json.loads(results.read_text()) if results.exists() else {}
        result["stages"] = stages
        print(json.dumps(stages, indent=1))
        results.write_text(json.dumps(result, indent=1) + "\n")
        return

    sizes = args.sizes
    scenes = {name: ensure_scene(args.work, *hw) for name, hw in sizes.items()}
    out = str(args.work / "bench.zarr")
    runs = {}
    for name in ("small", "large"):
        runs[f"{name}_local2"] = run_measured([me, "--child", "ingest", str(scenes[name]), out, "local:2"])
    runs["large_local1"] = run_measured([me, "--child", "ingest", str(scenes["large"]), out, "local:1"])
    runs["large_threads"] = run_measured([me, "--child", "ingest", str(scenes["large"]), out, "threads"])
    runs["large_floor"] = run_measured([me, "--child", "floor", str(scenes["large"]), out])
    runs["large_naive_rioxarray"] = run_measured([me, "--child", "naive", str(scenes["large"]), out])
    stages = run_measured([me, "--child", "stages", str(scenes["large"])], interval=0.5)
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
        "stages": stages,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
