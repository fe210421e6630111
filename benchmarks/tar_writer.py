"""Our shard tar writer vs ``webdataset.TarWriter``: same samples, same bytes, which is faster.

    python benchmarks/tar_writer.py [--samples 512] [--region 256] [--bands 2] [--repeats 5]

Writes ``--samples`` region samples (a ``(bands, region, region)`` float32 ``.npy`` and a small
``.json`` each, as shards hold them) into a tar file on disk, once with
``webdataset.TarWriter(encoder=False, mtime=0)`` and once with the writer shards use
(:func:`xtstream.data.shards.writer.open_tar` + :func:`~xtstream.data.shards.writer.add_sample`),
alternating, ``--repeats`` times each; checks the two files are byte-identical. ``speedup`` =
ours / TarWriter (medians of MB/s). Writes ``benchmarks/results/tar_writer.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine, table  # noqa: E402


def make_samples(n: int, bands: int, region: int) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        np.save(buf, rng.standard_normal((bands, region, region), dtype=np.float32))
        meta = json.dumps({"scene_id": "bench", "index": i, "region": region}).encode()
        samples.append({"__key__": f"bench/{i:05d}", "npy": buf.getvalue(), "json": meta})
    return samples


def write_ours(path: Path, samples: list[dict]) -> None:
    from xtstream.data.shards.writer import add_sample, open_tar

    with open(path, "wb") as raw:
        tar = open_tar(raw)
        for s in samples:
            add_sample(tar, s)
        tar.close()


def write_webdataset(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    from xtstream.data.shards.writer import TAR_OWNER

    with wds.TarWriter(str(path), encoder=False, mtime=0, user=TAR_OWNER, group=TAR_OWNER, mode=0o444) as tar:
        for s in samples:
            tar.write(s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--region", type=int, default=256)
    p.add_argument("--bands", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=None, help="directory of the tar files (default: a temporary one)")
    args = p.parse_args()
    samples = make_samples(args.samples, args.bands, args.region)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        paths = {"ours": Path(tmp) / "ours.tar", "webdataset": Path(tmp) / "wds.tar"}
        writers = {"ours": write_ours, "webdataset": write_webdataset}
        rates: dict[str, list[float]] = {k: [] for k in writers}
        for _ in range(args.repeats):
            for name, write in writers.items():
                paths[name].unlink(missing_ok=True)
                t = time.perf_counter()
                write(paths[name], samples)
                rates[name].append(paths[name].stat().st_size / 1e6 / (time.perf_counter() - t))
        identical = paths["ours"].read_bytes() == paths["webdataset"].read_bytes()
        size_mb = paths["ours"].stat().st_size / 1e6
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(table([[k, f"{med[k]:.0f}", " ".join(f"{r:.0f}" for r in v)] for k, v in rates.items()],
                ["writer", "MB/s (median)", "runs"]))
    result = {**machine(), "samples": args.samples, "region": args.region, "bands": args.bands,
              "tar_mb": round(size_mb, 1), "ours_mb_s": round(med["ours"], 1),
              "webdataset_mb_s": round(med["webdataset"], 1), "speedup": round(med["ours"] / med["webdataset"], 3),
              "byte_identical": identical, "runs": rates}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tar_writer.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
