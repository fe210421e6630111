"""Ingest memory and throughput: peak RSS flat in scene size; speed vs the naive path users have,
vs a raw parallel floor, one worker vs two, and an archive on a local cluster vs threads.

    python benchmarks/ingest_memory.py                 # 4,096² vs 29,400 × 24,400, two bands
    python benchmarks/ingest_memory.py --large 12000x10000 --small 2048x2048   # quicker
    python benchmarks/ingest_memory.py --stages-only   # one tile's per-stage split alone

Runs on the large scene: ours on threads / ``local:1`` / ``local:2``; the naive path
(``rioxarray.open_rasterio(chunks=2048)`` per band, ``xr.concat``, ``to_zarr``) with zarr's defaults
(as users run it) and with our codec and normalisation (the same work); the raw floor — read,
encode, write, nothing else — serially, on two threads (the physical limit here) and, for scale, on
as many threads as ours (one more than the cores: ``ingest_threads``); and an archive
of ``--archive`` scenes (``--archive-size``) on threads vs ``local:2`` (timed once the cluster is up,
as one serving a whole archive is; its start-up is timed beside). Each measured run is a fresh
process, repeated ``--repeats`` times in rounds, each round in a rotated order (medians of
seconds, the largest peak), after the
previous output is deleted, the disk's write-back flushed (``os.sync``) and the run's input read
into the page cache (this VM's kernel pages out files left unread for a minute); peak RSS sums the
process and its dask workers, sampled every 20 ms. Writes
``benchmarks/results/ingest_memory.json``. Scenes are generated once under ``benchmarks/work/``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
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


def child_ingest_up(scene: str, out: str, scheduler: str) -> dict:
    """:func:`child_ingest` on a ``local:N`` cluster already up (started as ``--scheduler local:N``
    starts it; its start-up reported as ``start_seconds``): what is left without the start-up."""
    from xtstream._runtime.cluster import local_cluster

    t = time.perf_counter()
    with local_cluster(int(scheduler.split(":")[1]), ["xtstream.data.ingest"]) as cluster:
        start = time.perf_counter() - t
        return {**child_ingest(scene, out, cluster.scheduler_address), "start_seconds": start}


def child_floor(scene: str, out: str, threads: str = "1") -> dict:
    """The raw floor: plain rasterio windowed reads of both bands, our codec, each chunk's file
    written as the ingest writes it (:mod:`xtstream.data.tile_writer`, past the page cache) — no
    normalisation, no mask, no bookkeeping — in a loop (``threads`` 1) or on a thread pool with a
    rasterio handle per thread (the parallel floor)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rasterio
    import zarr
    from rasterio.windows import Window

    from xtstream.data.ingest import make_codec
    from xtstream.data.tile_writer import tile_writer

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    files = [Path(scene) / "VV_dB.tif", Path(scene) / "VH_dB.tif"]
    with rasterio.open(files[0]) as a:
        h, w = a.height, a.width
    zarr.create_array(out, shape=(2, h, w), chunks=(2, CHUNK, CHUNK), dtype="float32", compressors=make_codec())
    writer = tile_writer(out, direct=True)
    local = threading.local()

    def tile(yx: tuple[int, int]) -> None:
        if not hasattr(local, "handles"):
            local.handles = [rasterio.open(f) for f in files]
        y, x = yx
        win = Window(x, y, min(CHUNK, w - x), min(CHUNK, h - y))
        block = np.stack([f.read(1, window=win) for f in local.handles])
        writer.write((0, y // CHUNK, x // CHUNK), block)

    tiles = [(y, x) for y in range(0, h, CHUNK) for x in range(0, w, CHUNK)]
    with rasterio.Env(GDAL_CACHEMAX=64), ThreadPoolExecutor(int(threads)) as pool:
        list(pool.map(tile, tiles))
    return {"seconds": time.perf_counter() - t}


def child_naive(scene: str, out: str, mode: str = "defaults") -> dict:
    """The usual approach: rioxarray.open_rasterio per band (dask chunks), concat, xarray to_zarr.
    ``mode`` ``defaults``: as users run it (zarr's default codec, no normalisation); ``same``: with
    our codec and the spec's normalisation (the same work as ours, minus the valid mask and the
    resume bookkeeping)."""
    import rioxarray
    import xarray as xr

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    bands = [rioxarray.open_rasterio(Path(scene) / f, chunks=CHUNK) for f in ("VV_dB.tif", "VH_dB.tif")]
    image = xr.concat(bands, dim="band").rename("image")
    if mode == "same":
        from xtstream.data.ingest import make_codec
        from xtstream.data.normalize import normalize
        from xtstream.data.specs import load_spec

        # the spec's normalisation takes all bands of a block at once, as ours does
        image = normalize(image.assign_coords(band=BANDS).chunk({"band": -1}), load_spec("xview3").select(BANDS))
        image.encoding = {"compressors": make_codec()}
    image.to_dataset().to_zarr(out, zarr_format=3, consolidated=False, mode="w")
    return {"seconds": time.perf_counter() - t}


def child_archive(root: str, out: str, scheduler: str) -> dict:
    """``ingest_archive`` of every scene under ``root``: ``seconds`` (a ``local:N`` cluster already
    up, as a cluster serving an archive is: the start-up amortised over it) and ``start_seconds``
    (the cluster's start-up, reported beside it), and how many scenes."""
    import contextlib

    from xtstream.data.ingest import ingest_archive

    shutil.rmtree(out, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        t = time.perf_counter()
        if scheduler.startswith("local:"):
            # started as `--scheduler local:N` starts it (its workers' allocator, their imports)
            from xtstream._runtime.cluster import local_cluster

            cluster = stack.enter_context(local_cluster(int(scheduler.split(":")[1]), ["xtstream.data.ingest"]))
            scheduler = cluster.scheduler_address
        start = time.perf_counter() - t
        t = time.perf_counter()
        stores = ingest_archive(root, out, spec="xview3", bands=BANDS, tile=CHUNK, scheduler=scheduler, progress=False)
        return {"seconds": time.perf_counter() - t, "start_seconds": start, "scenes": len(stores)}


def _write_buffered(path: Path, parts: list) -> None:
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)


def prefetch(path: Path) -> int:
    """Read the band files (:data:`BANDS`) under ``path`` once, into the page cache; return bytes.
    Only the bands: the runs read nothing else (a scene's bathymetry is as large as a band)."""
    total = 0
    for f in sorted(path.rglob("*.tif")):
        if f.name.startswith(tuple(f"{band}_" for band in BANDS)):
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(16 << 20):
                    total += len(chunk)
    return total


def ensure_archive(work: Path, n: int, h: int, w: int) -> Path:
    """An archive root of ``n`` scene directories, each the ``h x w`` synthetic scene (hard links)."""
    scene = ensure_scene(work, h, w)
    root = work / f"archive_{n}x{h}x{w}"
    for k in range(n):
        d = root / f"scene{k}"
        d.mkdir(parents=True, exist_ok=True)
        for f in scene.iterdir():
            if f.is_file() and not (d / f.name).exists():
                try:
                    (d / f.name).hardlink_to(f)
                except OSError:
                    shutil.copy2(f, d / f.name)
    return root


def child_stages(scene: str, n: str = "6") -> dict:
    """Where one tile's time goes (issue 14): ``n`` 2048² tiles of the scene, each stage timed on
    its own in this process, one thread — GDAL decode of both bands, normalisation with the valid
    mask, the codec (the default, + crc32c) and the file write as the ingest does them (a tile's
    parts, past the page cache: :func:`~xtstream._runtime.direct_io.write_direct`), and, for
    scale, the same file written through the page cache (``buffered_write``) and zarr's own write
    of the tile (``zarr_write``; ``zarr_overhead`` = zarr's write − our codec − a buffered write:
    what the ingest saves by writing its tiles itself). Medians in ms per tile."""
    import tempfile

    import numpy as np
    import zarr

    from xtstream._runtime.direct_io import write_direct
    from xtstream.data.chunk_codecs import chunk_layout
    from xtstream.data.grid import Window
    from xtstream.data.ingest import make_codec
    from xtstream.data.normalize import normalize_block
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
    # "normalise": with the valid-data mask, taken in the same pass (as the ingest does)
    ms: dict[str, list[float]] = {k: [] for k in ("gdal_decode", "normalise", "codec", "file_write",
                                                  "buffered_write", "zarr_write")}
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(Path(tmp) / "z", shape=(2, h, w), chunks=(2, CHUNK, CHUNK), dtype="float32",
                                compressors=make_codec())
        encode = chunk_layout(Path(tmp) / "z").part_encoder()
        for y, x in tiles:
            t = [time.perf_counter()]
            raw = src.read_window(Window(y, x, y + CHUNK, x + CHUNK))
            t.append(time.perf_counter())
            block = normalize_block(raw, **params, valid=np.empty(raw.shape, np.uint8))
            t.append(time.perf_counter())
            parts = encode(np.ascontiguousarray(block))
            t.append(time.perf_counter())
            # a new file, as each tile's is: as the ingest writes it (past the page cache), then,
            # for scale, through the page cache, then zarr's own write of the tile
            if not write_direct(Path(tmp) / f"tile{y}.{x}", parts):
                _write_buffered(Path(tmp) / f"tile{y}.{x}", parts)
            t.append(time.perf_counter())
            _write_buffered(Path(tmp) / f"buffered{y}.{x}", parts)
            t.append(time.perf_counter())
            with zarr.config.set({"array.write_empty_chunks": True}):
                arr[:, y: y + CHUNK, x: x + CHUNK] = block
            t.append(time.perf_counter())
            for k, a, b in zip(ms, t, t[1:]):
                ms[k].append((b - a) * 1000)
        # the codec stage with each codec the ingest offers: ms per tile and compression ratio
        codecs = {}
        for name, level in (("blosc-zstd", 1), ("blosc-lz4", 1), ("blosc-lz4", 5), ("zstd", 1), ("none", 0)):
            z = zarr.create_array(Path(tmp) / f"{name}{level}", shape=(2, CHUNK, CHUNK), chunks=(2, CHUNK, CHUNK),
                                  dtype="float32", compressors=make_codec(name, level))
            enc = chunk_layout(Path(tmp) / f"{name}{level}").part_encoder()
            raw = np.ascontiguousarray(block)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                size = sum(np.frombuffer(part, np.uint8).nbytes for part in enc(raw))
                times.append((time.perf_counter() - t) * 1000)
            codecs[f"{name}-{level}"] = {"ms": round(statistics.median(times), 1), "ratio": round(raw.nbytes / size, 3)}
            del z
    med = {k: round(statistics.median(v), 1) for k, v in ms.items()}
    # zarr writes through the page cache: its overhead over our codec and a buffered write
    med["zarr_overhead"] = round(max(0.0, med["zarr_write"] - med["codec"] - med["buffered_write"]), 1)
    stages = ("gdal_decode", "normalise", "codec", "file_write")  # the ingest's; the writes for scale are not
    ours = sum(med[k] for k in stages)
    return {"tiles": len(tiles), "tile": CHUNK, "ms_per_tile": med, "codecs_on_the_last_tile": codecs,
            "share": {k: round(med[k] / ours, 3) for k in stages}}


def _options(p) -> None:
    p.add_argument("--stages-only", action="store_true", help="time one tile's stages alone, keeping the other results")
    p.add_argument("--archive", type=int, default=4, help="scenes in the archive run (default 4)")
    p.add_argument("--archive-size", default="8192x8192", help="each archive scene's HxW (default 8192x8192)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of every run; medians are reported (default 2)")


def main() -> None:
    args = scale_args(__doc__, HERE / "work", extra=_options)
    if args.child:
        kind, *rest = args.child
        child = {"ingest": child_ingest, "ingest_up": child_ingest_up, "floor": child_floor, "naive": child_naive, "stages": child_stages,
                 "archive": child_archive}[kind]
        print(json.dumps(child(*rest)))
        return
    me = str(Path(__file__).resolve())
    results = HERE / "results" / "ingest_memory.json"
    if args.stages_only:
        large = ensure_scene(args.work, *args.sizes["large"])
        prefetch(large)
        stages = run_measured([me, "--child", "stages", str(large)], interval=0.5)
        result = json.loads(results.read_text()) if results.exists() else {}
        result["stages"] = stages
        print(json.dumps(stages, indent=1))
        results.write_text(json.dumps(result, indent=1) + "\n")
        return

    sizes = args.sizes
    scenes = {name: ensure_scene(args.work, *hw) for name, hw in sizes.items()}
    ah, aw = map(int, args.archive_size.split("x"))
    archive = ensure_archive(args.work, args.archive, ah, aw)
    out = str(args.work / "bench.zarr")
    large = str(scenes["large"])
    plan = {
        "small_local2": ["ingest", str(scenes["small"]), out, "local:2"],
        "large_local2": ["ingest", large, out, "local:2"],
        "large_local1": ["ingest", large, out, "local:1"],
        # for scale: the same with the cluster up (its start-up timed apart)
        "large_local2_up": ["ingest_up", large, out, "local:2"],
        "large_local1_up": ["ingest_up", large, out, "local:1"],
        "large_threads": ["ingest", large, out, "threads"],
        "large_floor": ["floor", large, out, "1"],
        "large_floor_parallel": ["floor", large, out, "2"],
        # for scale: the floor on as many threads as our threads ingest runs (one more than the cores)
        "large_floor_parallel_ours": ["floor", large, out, str((os.cpu_count() or 1) + 1)],
        "large_naive_rioxarray": ["naive", large, out, "defaults"],
        "large_naive_same_work": ["naive", large, out, "same"],
        "archive_threads": ["archive", str(archive), out, "threads"],
        "archive_local2": ["archive", str(archive), out, "local:2"],
    }
    # the page cache holds the scene for every run alike: read it once before the first timed run
    # (and its files again before each run, below)
    run_measured([me, "--child", "floor", large, out, "2"], interval=0.5)
    # this machine's speed drifts by 15-20 % within minutes: every run is repeated in rounds
    # (each round runs them all once) and its median taken, so all see the same drift
    trials: dict[str, list[dict]] = {k: [] for k in plan}
    names = list(plan)
    for k in range(args.repeats):
        # each round in another order (rotated): no run always follows the same one. What a run
        # pays for fresh page-cache pages depends on what the run before it freed (this VM hands
        # freed memory back to its host), and large_local2 always followed the small run
        start = k * len(names) // args.repeats
        for name in names[start:] + names[:start]:
            child = plan[name]
            # the last run's output is deleted and the disk's write-back flushed first, so that no
            # run pays for the pages another one wrote (it did: runs after a large write were up to
            # 40 % slower, on local:2 most). RSS sampled every 20 ms: at 0.1 s the 3-s small run's
            # peak was missed by up to 80 MiB
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            # read the run's input files first, untimed: this VM's kernel pages out file pages
            # left unread for a minute (DAMON reclaim: the large scene was 65-70 % resident after a
            # few idle minutes), so a run after the archive runs read part of its scene from disk
            prefetch(Path(child[1]))
            trials[name].append(run_measured([me, "--child", *child]))
    runs = {name: {"seconds": statistics.median(t["seconds"] for t in ts),
                   **({"start_seconds": statistics.median(t["start_seconds"] for t in ts)}
                      if "start_seconds" in ts[0] else {}),
                   "peak_rss_mib": max(t["peak_rss_mib"] for t in ts),
                   "seconds_each": [round(t["seconds"], 2) for t in ts]} for name, ts in trials.items()}
    prefetch(Path(large))
    stages = run_measured([me, "--child", "stages", large], interval=0.5)
    shutil.rmtree(out, ignore_errors=True)

    def mb(name: str) -> float:
        if name.startswith("archive"):
            return args.archive * 2 * ah * aw * 4 / 1e6
        h, w = sizes["large" if name.startswith("large") else "small"]
        return 2 * h * w * 4 / 1e6

    rows = [[k, f"{v['seconds']:.1f}", f"{mb(k) / v['seconds']:.0f}", f"{v['peak_rss_mib']:.0f}"]
            for k, v in runs.items()]
    print(table(rows, ["run", "seconds", "MB/s", "peak RSS MiB"]))
    sec = {k: v["seconds"] for k, v in runs.items()}
    result = {
        **machine(),
        "small": args.small, "large": args.large, "bands": BANDS, "chunk": CHUNK,
        "archive": {"scenes": args.archive, "size": args.archive_size},
        "peak_rss_small_mib": round(runs["small_local2"]["peak_rss_mib"], 1),
        "peak_rss_large_mib": round(runs["large_local2"]["peak_rss_mib"], 1),
        "rss_ratio": round(runs["large_local2"]["peak_rss_mib"] / runs["small_local2"]["peak_rss_mib"], 3),
        # issue 14's targets: ours on threads vs the naive path with its defaults, vs the same work,
        # vs the raw parallel floor; two workers vs one; an archive on local:2 vs threads
        "threads_vs_naive": round(sec["large_naive_rioxarray"] / sec["large_threads"], 3),
        "threads_vs_naive_same_work": round(sec["large_naive_same_work"] / sec["large_threads"], 3),
        "threads_vs_parallel_floor": round(sec["large_floor_parallel"] / sec["large_threads"], 3),
        "threads_vs_parallel_floor_same_threads": round(sec["large_floor_parallel_ours"] / sec["large_threads"], 3),
        "two_worker_speedup": round(sec["large_local1"] / sec["large_local2"], 3),
        "two_worker_speedup_cluster_up": round(sec["large_local1_up"] / sec["large_local2_up"], 3),
        "local2_start_s": round(runs["large_local2_up"]["start_seconds"], 2),
        # the cluster up (start-up amortised over an archive); with its start-up, for this archive
        "archive_local2_vs_threads": round(sec["archive_threads"] / sec["archive_local2"], 3),
        "archive_local2_start_s": round(runs["archive_local2"]["start_seconds"], 2),
        "archive_local2_vs_threads_with_start": round(
            sec["archive_threads"] / (sec["archive_local2"] + runs["archive_local2"]["start_seconds"]), 3),
        "archive_seconds_per_scene_local2": round(sec["archive_local2"] / args.archive, 2),
        "throughput_mb_s": round(mb("large") / sec["large_local2"], 1),
        "throughput_threads_mb_s": round(mb("large") / sec["large_threads"], 1),
        "floor_mb_s": round(mb("large") / sec["large_floor"], 1),
        "parallel_floor_mb_s": round(mb("large") / sec["large_floor_parallel"], 1),
        "throughput_vs_floor": round(sec["large_floor"] / sec["large_local2"], 3),
        "threads_vs_floor": round(sec["large_floor"] / sec["large_threads"], 3),
        "peak_rss_large_threads_mib": round(runs["large_threads"]["peak_rss_mib"], 1),
        "peak_rss_naive_rioxarray_mib": round(runs["large_naive_rioxarray"]["peak_rss_mib"], 1),
        "rss_vs_naive": round(runs["large_threads"]["peak_rss_mib"] / runs["large_naive_rioxarray"]["peak_rss_mib"], 3),
        "naive_seconds_vs_ours": round(sec["large_naive_rioxarray"] / sec["large_local2"], 3),
        "repeats": args.repeats,
        "rotated": True,  # each round's runs in a rotated order
        "runs": {k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                 for k, v in runs.items()},
        "stages": stages,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
