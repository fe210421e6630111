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
* ``in_memory``: the same model's streaming forward (:meth:`XTModel.stream`, context carried
  chunk to chunk) over ``--memory-regions`` regions of the small scene held in memory as chunks:
  what prediction would cost with free I/O;
* ``backbone``: the bare backbone (``model.encoder``) on the same regions in the same batches.

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
    t = time.perf_counter()
    result = predict(model, [store], out, progress=False)
    seconds = time.perf_counter() - t
    regions = len(xtstream.open_scene(store, REGION))
    return {"seconds": seconds, "regions": regions, "detections": result.rows}


def _held_chunks(store: str, n: int) -> list:
    """The first ``n`` regions of ``store`` as chunks of the model's size, decoded into memory."""
    import itertools

    import xtstream
    from xtstream.data.chunk import chunked

    scene = xtstream.open_scene(store, REGION)
    return list(chunked(itertools.islice(iter(scene), n), 4))


def child_in_memory(ckpt: str, store: str, n: str) -> dict:
    import torch

    import xtstream

    model = xtstream.load_model(ckpt).eval()
    chunks = _held_chunks(store, int(n))
    with torch.inference_mode():
        list(model.stream(chunks[:4]))  # warm-up (allocator, first-call paths)
        t = time.perf_counter()
        regions = sum(len(c) for c in model.stream(chunks))
    return {"seconds": time.perf_counter() - t, "regions": regions}


def child_backbone(ckpt: str, store: str, n: str) -> dict:
    import numpy as np
    import torch

    import xtstream

    model = xtstream.load_model(ckpt).eval()
    batches = [torch.from_numpy(np.ascontiguousarray(c.pixels)) for c in _held_chunks(store, int(n))]
    with torch.inference_mode():
        for x in batches[:4]:
            model.encoder(x)
        t = time.perf_counter()
        for x in batches:
            model.encoder(x)
    return {"seconds": time.perf_counter() - t, "regions": sum(len(x) for x in batches)}


def main() -> None:
    args = scale_args(__doc__, HERE / "work")
    if args.child:
        kind, *rest = args.child
        import torch  # noqa: F401 - imported before any clock starts

        fn = {"predict": child_predict, "in_memory": child_in_memory, "backbone": child_backbone}[kind]
        print(json.dumps(fn(*rest)))
        return
    me = str(Path(__file__).resolve())
    ckpt = str(ensure_checkpoint(args.work))
    stores = {name: str(ensure_store(args.work, h, w, prefix="predictbench", tile=REGION, bands=BANDS))
              for name, (h, w) in args.sizes.items()}
    n = str(min(256, len(__import__("xtstream").open_scene(stores["small"], REGION))))
    runs: dict[str, dict] = {}
    # in-memory and backbone runs bracket the predict runs: the machine is shared, load drifts
    runs["backbone"] = run_measured([me, "--child", "backbone", ckpt, stores["small"], n])
    runs["in_memory"] = run_measured([me, "--child", "in_memory", ckpt, stores["small"], n])
    for name, store in stores.items():
        out = str(args.work / f"predictbench_{name}_out")
        runs[f"{name}_predict"] = run_measured([me, "--child", "predict", ckpt, store, out])
        shutil.rmtree(out, ignore_errors=True)
    runs["in_memory_after"] = run_measured([me, "--child", "in_memory", ckpt, stores["small"], n])
    runs["backbone_after"] = run_measured([me, "--child", "backbone", ckpt, stores["small"], n])

    def rate(k: str) -> float:
        return runs[k]["regions"] / runs[k]["seconds"]

    rows = [[k, v["regions"], f"{v['seconds']:.1f}", f"{rate(k):.1f}", f"{v['peak_rss_mib']:.0f}"]
            for k, v in runs.items()]
    print(table(rows, ["run", "regions", "seconds", "regions/s", "peak RSS MiB"]))
    in_memory = (rate("in_memory") + rate("in_memory_after")) / 2
    backbone = (rate("backbone") + rate("backbone_after")) / 2
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
