"""Streaming prediction of whole scenes: memory flat in scene size, pipeline overhead, head cost.

    python benchmarks/predict_scene.py                                   # 4,096² and 29,400 × 24,400
    python benchmarks/predict_scene.py --small 1024x1024 --large 2048x3000 --work /tmp/w   # quick

The scenes are synthetic xView3-like (VV, VH; spec xview3; store tiles = the region size), made and
ingested once under ``--work``. The model is ``xt_convnext_atto_xl`` (ConvNeXt-atto regions of
256 px, 2 Transformer-XL layers, chunks of 4, the xView3 head at its default output stride),
seeded random weights saved as a checkpoint — speed and memory do not depend on the weights.
Every measured run is a fresh process on the CPU (its peak RSS is the process tree's):

* ``predict``: :func:`xtstream.predict` of the scene from its store — reading, the model, writing
  the five maps to a Zarr store, scene-level peak finding, the detections CSV — timed around the
  call (imports and the checkpoint load before the clock starts);
* ``model``: the same model's streaming forward (:meth:`XTModel.stream`, context carried chunk
  to chunk) over ``--memory-regions`` regions of the small scene held in memory as chunks — what
  prediction would cost with free I/O — and the bare backbone (``model.encoder``) on the same
  regions in the same batches, in one process: trials alternate between the two (the median of
  each), since a shared machine's speed drifts by ±20 % between processes. Run before and after
  the predict runs; their mean is the reference.

``vs_model`` = predict regions/s (large scene) / in-memory regions/s; ``model_vs_backbone`` =
in-memory / backbone regions/s; ``rss_ratio`` = predict peak RSS large / small. Writes
``benchmarks/results/predict_scene.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import ensure_store, machine, run_measured, scale_args, table  # noqa: E402

REGION = 256
BANDS = ["VV", "VH"]
MODEL = "xt_convnext_atto_xl"
TARGETS = {"peak_rss_mib": 2048, "rss_ratio": 1.1, "vs_model": 0.9, "model_vs_backbone": 0.7}


def ensure_checkpoint(work: Path) -> Path:
    path = work / f"{MODEL}_b{len(BANDS)}.pt"
    if not path.exists():
        import torch

        import xtstream

        torch.manual_seed(0)
        xtstream.save_checkpoint(xtstream.create_model(MODEL, in_chans=len(BANDS)), path)
    return path


def child_predict(ckpt: str, store: str, out: str) -> dict:
    import xtstream
    from xtstream.engine.predict import predict

    model = xtstream.load_model(ckpt)
    shutil.rmtree(out, ignore_errors=True)
    # what predict imports on first use, imported before the clock: a process's start-up, not
    # the pipeline's throughput
    import dask.array  # noqa: F401
    import rioxarray  # noqa: F401
    import zarr  # noqa: F401

    from xtstream.engine.predict import list_scenes

    list_scenes([store], REGION)
    t = time.perf_counter()
    result = predict(model, [store], out, progress=False)
    seconds = time.perf_counter() - t
    regions = len(xtstream.open_scene(store, REGION))
    import resource

    # the kernel's own high-water mark of this process, beside the sampled tree peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "regions": regions, "detections": result.rows, "maxrss_mib": round(maxrss, 1)}


def _held_chunks(store: str, n: int) -> list:
    """The first ``n`` regions of ``store`` as chunks of the model's size, decoded into memory."""
    import itertools

    import xtstream
    from xtstream.data.chunk import chunked

    scene = xtstream.open_scene(store, REGION)
    return list(chunked(itertools.islice(iter(scene), n), 4))


def child_model(ckpt: str, store: str, n: str, trials: str = "5") -> dict:
    import statistics

    import numpy as np
    import torch

    import xtstream

    model = xtstream.load_model(ckpt).eval()
    chunks = _held_chunks(store, int(n))
    batches = [torch.from_numpy(np.ascontiguousarray(c.pixels)) for c in chunks]
    regions = sum(len(c) for c in chunks)

    def model_pass() -> None:
        for _ in model.stream(chunks):
            pass

    def backbone_pass() -> None:
        for x in batches:
            model.encoder(x)

    runs = {"in_memory": model_pass, "backbone": backbone_pass}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        list(model.stream(chunks[:4]))  # warm-up (allocator, first-call paths)
        for x in batches[:4]:
            model.encoder(x)
        for _ in range(int(trials)):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - t)
    return {"regions": regions, "trial_s": seconds,
            **{f"{k}_regions_per_s": regions / statistics.median(v) for k, v in seconds.items()}}


def main() -> None:
    args = scale_args(__doc__, HERE / "work")
    if args.child:
        kind, *rest = args.child
        import torch  # noqa: F401 - imported before any clock starts

        fn = {"predict": child_predict, "model": child_model}[kind]
        print(json.dumps(fn(*rest)))
        return
    me = str(Path(__file__).resolve())
    ckpt = str(ensure_checkpoint(args.work))
    stores = {name: str(ensure_store(args.work, h, w, prefix="predictbench", tile=REGION, bands=BANDS))
              for name, (h, w) in args.sizes.items()}
    n = str(min(256, len(__import__("xtstream").open_scene(stores["small"], REGION))))
    runs: dict[str, dict] = {}
    # in-memory and backbone runs bracket the predict runs: the machine is shared, load drifts
    runs["model_before"] = run_measured([me, "--child", "model", ckpt, stores["small"], n])
    for name, store in stores.items():
        out = str(args.work / f"predictbench_{name}_out")
        runs[f"{name}_predict"] = run_measured([me, "--child", "predict", ckpt, store, out])
        shutil.rmtree(out, ignore_errors=True)
    runs["model_after"] = run_measured([me, "--child", "model", ckpt, stores["small"], n])

    def rate(k: str) -> float:
        return runs[k]["regions"] / runs[k]["seconds"]

    rows = [[k, v["regions"], f"{v['seconds']:.1f}", f"{rate(k):.1f}", f"{v['peak_rss_mib']:.0f}"]
            for k, v in runs.items() if k.endswith("_predict")]
    for when in ("before", "after"):
        r = runs[f"model_{when}"]
        rows += [[f"{kind} ({when})", r["regions"], "", f"{r[f'{kind}_regions_per_s']:.1f}", ""]
                 for kind in ("in_memory", "backbone")]
    print(table(rows, ["run", "regions", "seconds", "regions/s", "peak RSS MiB"]))
    in_memory = (runs["model_before"]["in_memory_regions_per_s"] + runs["model_after"]["in_memory_regions_per_s"]) / 2
    backbone = (runs["model_before"]["backbone_regions_per_s"] + runs["model_after"]["backbone_regions_per_s"]) / 2
    result = {
        **machine(),
        "device": "cpu", "model": MODEL, "region": REGION, "bands": BANDS, "small": args.small, "large": args.large,
        "peak_rss_mib": round(max(runs[f"{s}_predict"]["peak_rss_mib"] for s in stores), 1),
        "rss_ratio": round(runs["large_predict"]["peak_rss_mib"] / runs["small_predict"]["peak_rss_mib"], 3),
        "vs_model": round(rate("large_predict") / in_memory, 3),
        "vs_model_small": round(rate("small_predict") / in_memory, 3),
        "model_vs_backbone": round(in_memory / backbone, 3),
        "regions_per_s": {"predict_large": round(rate("large_predict"), 1),
                          "predict_small": round(rate("small_predict"), 1),
                          "in_memory": round(in_memory, 1), "backbone": round(backbone, 1)},
        "targets": TARGETS,
        "runs": runs,
    }
    print(json.dumps({k: result[k] for k in ("peak_rss_mib", "rss_ratio", "vs_model", "model_vs_backbone")}))
    out = HERE / "results" / "predict_scene.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
