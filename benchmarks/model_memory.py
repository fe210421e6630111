"""Peak memory of training on one image, 512² to 8,192²: the bare backbone vs the xT stream.

    python benchmarks/model_memory.py                         # CPU, convnext_atto, region 256
    python benchmarks/model_memory.py --device cuda --backbone swinv2_tiny_window8_256
    python benchmarks/model_memory.py --sizes 512 1024 2048   # quicker

For each (model, size), a fresh process runs one forward + backward:

* ``backbone``: the timm backbone on the whole image (one region of the image's size) with a
  classification head — what one does without xT;
* ``xt``: the xT model (region encoder, context encoder, classification head) streamed over the
  image's regions chunk by chunk, a backward per chunk, memory detached between chunks; the
  regions are generated one at a time, so the full image never exists.

CPU: peak RSS of the child (sampled), also counted above the RSS right after building the model.
CUDA: ``torch.cuda.max_memory_allocated``. A run that passes ``--cap-gib`` (or leaves less than
``--reserve-gib`` of the machine's memory free) is killed and recorded as OOM, as is a CUDA OOM.
Writes ``benchmarks/results/model_memory.json`` and the figure ``model_memory.png``. The
measurement is :mod:`xtstream.bench.memory` (also ``xtstream bench memory``); this adds the
machine to the record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine  # noqa: E402

from xtstream.bench.memory import MemorySetup, measure, write  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="convnext_atto")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--context", default="xl")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--cap-gib", type=float, default=16.0)
    p.add_argument("--reserve-gib", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    setup = MemorySetup(backbone=args.backbone, context=args.context, region=args.region, chunk=args.chunk,
                        depth=args.depth, dim=args.dim, heads=args.heads, bands=args.bands, device=args.device)
    results = {**machine(), **measure(args.sizes, setup, cap_gib=args.cap_gib, reserve_gib=args.reserve_gib)}
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "labels")}, indent=1))
    write(results, args.out)


if __name__ == "__main__":
    main()
