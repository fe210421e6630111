"""What the integrity checks cost: reading a store and reading shards, with the checks and without.

    python benchmarks/integrity_cost.py                      # 4096 x 4096, 2 bands float32
    python benchmarks/integrity_cost.py --size 2048 --repeat 3

Overheads are the median over rounds of the checked/unchecked ratio of one round's back-to-back
passes; times are the best pass.

* ``store``: every tile of a ``(2, N, N)`` float32 store (blosc-zstd, 512-px tiles) read through
  :class:`~xtstream.data.windows.ZarrWindows` in 512-px windows. ``checked``: a store with crc32c
  tiles, read through :class:`~xtstream.data.store.CheckedStore` (the tile list at open, the crc
  in the store and again in zarr's codec); ``plain``: the same pixels in a store without checksums,
  read with plain zarr (the old path).
* ``shards``: every region of the scene's 512-px shards through
  :func:`~xtstream.data.shards.read_scenes` (one process, no DataLoader), with the per-sample
  crc32c check (the default) and with it switched off.

Each figure is the best of ``--repeat`` passes over data in the page cache, on one thread, the two
variants alternating pass by pass (the machine is shared: load moves both alike): the checks' CPU
cost, not the disk's. ``*_checks_s`` times the checks alone (every tile's crc32c and blosc-free
header test; every sample's ``check_sample``), the part that does not move with load.
Writes ``benchmarks/results/integrity_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import machine  # noqa: E402

TILE = REGION = 512


def _times(fns, repeat: int) -> list[list[float]]:
    """Times of each of ``fns`` over ``repeat`` rounds, the functions alternating (the order
    rotating each round, so that neither always runs first)."""
    times = [[] for _ in fns]
    for r in range(repeat):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            t = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t)
    return times


def _overhead(checked: list[float], plain: list[float]) -> float:
    """Median over rounds of checked/plain - 1: pairs run back to back share the machine's load."""
    return float(np.median(np.asarray(checked) / np.asarray(plain))) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "integrity_cost.json")
    args = parser.parse_args()

    import zarr

    import xtstream.data.ingest as ing
    import xtstream.data.shards.format as fmt
    from xtstream.data.grid import Window
    from xtstream.data.shards import read_scenes, shard_stores
    from xtstream.data.sources import ArraySource
    from xtstream.data.windows import ZarrWindows

    n = args.size
    rng = np.random.default_rng(0)
    # speckle-like values quantised to 1/256: compressible as SAR scenes are, not white noise
    data = (np.round(rng.gamma(2.0, 0.5, (2, n, n)) * 256) / 256).astype("f4")
    work = Path(tempfile.mkdtemp(prefix="integrity_cost_"))
    checked = ing.ingest(ArraySource(data, scene_id="c"), work / "c.zarr", tile=TILE, progress=False)
    real = ing.make_codec
    ing.make_codec = lambda codec=ing.DEFAULT_CODEC, level=None, **kw: real(codec, level, checksum=False)
    plain = ing.ingest(ArraySource(data, scene_id="p"), work / "p.zarr", tile=TILE, progress=False)
    ing.make_codec = real
    windows = [Window(y, x, min(y + TILE, n), min(x + TILE, n)) for y in range(0, n, TILE) for x in range(0, n, TILE)]
    nbytes = data.nbytes

    def read_checked() -> None:
        reader = ZarrWindows(checked)  # opening lists the tiles: counted
        for w in windows:
            reader.read_window(w)

    def read_plain() -> None:
        arr = zarr.open_array(plain, path="image", mode="r")
        for w in windows:
            np.asarray(arr[:, w.y0:w.y1, w.x0:w.x1])

    from xtstream.data.store import tile_check, tile_keys

    check = tile_check(checked)
    tiles = {k: (checked / k).read_bytes() for k in tile_keys(checked)}

    def check_tiles() -> None:
        for k, b in tiles.items():
            check.check(k, b)

    with zarr.config.set({"async.concurrency": 1, "threading.max_workers": 1}):
        store_times = _times([read_checked, read_plain, check_tiles], args.repeat)
    store_checked, store_plain, store_checks = (min(t) for t in store_times)

    shards = work / "shards"
    shard_stores([checked], shards, region=REGION, progress=False)

    def read_shards() -> None:
        for scene in read_scenes(shards).scenes():
            for _ in scene:
                pass

    from xtstream.data.shards.reader import _tar_samples

    samples = [(k, f) for p in sorted(shards.glob("*.tar")) for k, f in _tar_samples(str(p))]
    metas = [json.loads(f["json"]) for _, f in samples]

    def check_samples() -> None:
        for (k, f), meta in zip(samples, metas):
            real_check(f, meta, k)

    real_check = fmt.check_sample

    def read_unchecked() -> None:
        fmt.check_sample = lambda *a, **k: None
        try:
            read_shards()
        finally:
            fmt.check_sample = real_check

    shard_times = _times([read_shards, read_unchecked, check_samples], args.repeat)
    shards_checked, shards_unchecked, shards_checks = (min(t) for t in shard_times)

    mib = nbytes / 2**20
    result = {
        "machine": machine(), "scene": [2, n, n], "dtype": "float32", "tile": TILE, "region": REGION,
        "codec": "blosc-zstd level 1", "repeat": args.repeat,
        "store_checked_s": store_checked, "store_plain_s": store_plain,
        "store_checked_mib_s": mib / store_checked, "store_plain_mib_s": mib / store_plain,
        "store_overhead": _overhead(*store_times[:2]), "store_checks_s": store_checks,
        "store_checks_share": store_checks / store_plain,
        "shards_checked_s": shards_checked, "shards_unchecked_s": shards_unchecked,
        "shards_checked_mib_s": mib / shards_checked, "shards_unchecked_mib_s": mib / shards_unchecked,
        "shards_overhead": _overhead(*shard_times[:2]), "shards_checks_s": shards_checks,
        "shards_checks_share": shards_checks / shards_unchecked,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
