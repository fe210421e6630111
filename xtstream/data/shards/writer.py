"""Zarr scene stores → ordered WebDataset region shards, as one resumable dask graph.

The plan is fixed before anything is written: each scene's regions, in row-major order, are cut
into shards of at most ``max_count`` regions and about ``max_shard_size`` bytes (sized from the
exact bytes of a sample's arrays plus a JSON allowance; cuts fall on read-block boundaries where
that keeps shards within the limits). One dask task writes one shard, streaming its regions
from the store block by block (:func:`xtstream.data.streams.plan_reads`): tasks run in parallel over
scenes and shards, memory is bounded by one read block and two prefetched regions per running
task.

Members are written as ``webdataset.TarWriter(encoder=False, mtime=0)`` writes them (same names,
order, headers and bytes — a test holds the two byte-identical), but through ``tarfile``'s file
mode with multi-MiB copies: TarWriter's stream mode pushes data through Python in 10 KiB pieces,
which profiled at 40% of a single-threaded shard write. Kept because the gain holds: 2.9x
TarWriter's MB/s on 512 two-band 256² float32 samples, same bytes (``benchmarks/tar_writer.py``,
2026-12-04, 2 cores).

Resumable and atomic, like ingest (the protocol of :mod:`xtstream.data.ledger`): a shard is
written to ``NAME.tar.PID-THREAD.partial`` (the writer's own: a task run twice never shares one;
removed if the write fails, e.g. on a full disk), renamed when closed, then marked done in
``_xtstream_done/NAME.json`` with its size and SHA-256 (hashed as it is written, so no second
read). A rerun re-hashes the shards already written (``verify``, in parallel in the graph) and
writes again any whose SHA-256 changed, plus the shards not written; files are byte-for-byte those
of a clean run (tar mtimes are fixed). ``manifest.json`` is written last, listing shards, scenes,
region counts and checksums; readers rely on it.

The plan file records the shard names the run writes: ``overwrite`` removes exactly the files of
the run it replaces, and never replaces a file that no run of ours wrote. One run per shard
directory: :func:`shard_stores` holds its lock (:mod:`xtstream._runtime.lock`); a full disk or a
read-only directory is one :class:`~xtstream.errors.OutputError`, and no partial file stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from xtstream import __version__
from xtstream.errors import ShardError
from xtstream._runtime.atomic import replacing
from xtstream._runtime.lock import output_lock
from xtstream._runtime.malloc import limit_arenas
from xtstream._runtime.oserrors import writing
from xtstream.data.grid import RegionGrid, check_block_bytes
from xtstream.data.ledger import RunLedger, unique_tag
from xtstream.data.sample import RegionSample
from xtstream._runtime.prefetch import prefetched
from xtstream.data.windows import ZarrWindows, decode_passes, iter_regions, plan_reads
from xtstream.data.shards.format import (MANIFEST, MANIFEST_FORMAT, encode_sample, manifest_text, npy_bytes,
                                         read_manifest, shard_name, tar_member_bytes)

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = 1 << 30
JSON_ALLOWANCE = 4096  # tar bytes reserved per sample for its .json (objects lists are short)
TAR_COPY_BYTES = 8 << 20
# shard writing waits on the disk (page-cache write-back) as much as it decompresses: with more
# threads than cores, some decompress while others wait (29k scene, 2 cores: 22 s → 16.5 s)
THREADS_PER_CORE = 3
MAX_THREADS = 16  # each running task holds a read block and a few regions: keep their sum bounded
# each running task holds one read block: smaller blocks than the readers' keep the many threads'
# memory near one task's (29k scene: 4 MiB blocks, peak RSS 736 MiB vs 939 MiB with 16 MiB, as fast)
SHARD_MAX_READ_BYTES = 4 * 2**20
PREFETCH_REGIONS = 2
TAR_OWNER = "xtstream"


@dataclass
class ShardTask:
    """One shard to write: regions ``start .. stop - 1`` of scene ``scene_id`` from ``store``;
    ``labels`` (the scene's, read by ``label_task``) add targets and objects."""

    name: str
    scene_id: str
    store: str
    start: int
    stop: int
    region: int
    max_read_bytes: int
    labels: Any = field(default=None, repr=False)
    label_task: Any = field(default=None, repr=False)  # the xtstream.tasks.Task of the labels


@dataclass
class ShardPlan:
    out: Path
    fingerprint: str
    config: dict
    scenes: list[dict]
    tasks: list[ShardTask]
    done: dict[str, dict]

    @property
    def todo(self) -> list[ShardTask]:
        return [t for t in self.tasks if t.name not in self.done]


def sample_bytes(bands: int, itemsize: int, region: int, targets: dict[str, Any] | None = None) -> int:
    """Tar bytes of one sample: its ``.npy`` pixels and stored ``targets`` exactly, plus the JSON
    allowance."""
    npy_header = 128
    total = tar_member_bytes(npy_header + bands * itemsize * region * region) + JSON_ALLOWANCE
    for target in (targets or {}).values():
        total += tar_member_bytes(len(npy_bytes(target)))
    return total


def stored_targets(task: Any, labels: Any, grid: RegionGrid, index: int = 0) -> dict[str, Any]:
    """What a shard stores of region ``index``'s targets (its sizes are every region's)."""
    targets, _ = task.region_targets(labels, grid, index)
    return task.pack_targets(labels, grid, index, targets)[0]


def cut_shards(blocks: Sequence[Any], n_regions: int, per_shard: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` shards of at most ``per_shard`` regions, cut between read blocks where possible."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for block in blocks:
        if block.stop - start > per_shard and block.start > start:
            bounds.append((start, block.start))
            start = block.start
        while block.stop - start > per_shard:
            bounds.append((start, start + per_shard))
            start += per_shard
    if start < n_regions:
        bounds.append((start, n_regions))
    return bounds


def plan_shards(stores: Sequence[str | Path], out: str | Path, *, region: int,
                labels: str | Path | None = None, task: Any = None, spec: Any = None,
                max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, max_count: int | None = None,
                max_read_bytes: int = SHARD_MAX_READ_BYTES, overwrite: bool = False) -> ShardPlan:
    """Check the inputs, fix the plan (or reload it to resume) and find the shards already done.

    ``labels``: a labels file parsed by ``task`` (a :mod:`xtstream.tasks` name or instance;
    default ``"xview3"``), with the ``labels:`` block of ``spec`` (a dataset spec or its name) if
    given. Without labels, ``task`` and ``spec`` must be left out.
    """
    out = Path(out)
    if region < 1:
        raise ShardError(f"region must be a positive number of pixels, got {region}")
    if max_count is not None and max_count < 1:  # 0 once meant "no limit" through a falsy test
        raise ShardError(f"max_count must be at least 1, got {max_count} (None: shards cut by size only)")
    if max_shard_size < 1:
        raise ShardError(f"max_shard_size must be at least 1 byte, got {max_shard_size}")
    if not stores:
        raise ShardError("no scene stores given")
    readers = [ZarrWindows(s) for s in stores]
    ids = [r.scene_id for r in readers]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ShardError(f"scene id(s) {dup} appear in more than one store; scene ids must be unique")
    grids = [RegionGrid(r.shape[1], r.shape[2], region) for r in readers]
    for store, r in zip(stores, readers):  # a region is padded and copied whole: refuse a huge one now
        check_block_bytes(store, "region", region, r.shape[0], r.dtype, r.shape[1:], error=ShardError,
                          option="--region")
    scene_labels, label_config = None, None
    if labels is not None:
        from xtstream.tasks.base import get_task  # the task's modules only when there are labels

        task = get_task("xview3" if task is None else task)
        scene_labels = task.read_labels(labels, scene_ids=ids, spec=spec,
                                        shapes={i: (g.height, g.width) for i, g in zip(ids, grids)})
        label_config = {"path": str(labels), "sha256": _file_sha256(Path(labels)), "task": task.name,
                        "spec": None if spec is None else str(getattr(spec, "source", spec))}
    elif task is not None or spec is not None:
        raise ShardError("a task or spec (--task, --spec) describes labels, but no labels file was given")
    config = {
        "format": MANIFEST_FORMAT, "region": region, "max_shard_size": int(max_shard_size),
        "max_count": max_count, "max_read_bytes": int(max_read_bytes), "labels": label_config,
        "stores": [{"path": str(Path(s).resolve()), "scene_id": r.scene_id, "shape": list(r.shape),
                    "dtype": str(r.dtype), "fingerprint": r.attrs.get("fingerprint"),
                    "completed": r.attrs.get("completed")} for s, r in zip(stores, readers)],
    }
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

    scenes, tasks = [], []
    for store, reader, grid in zip(stores, readers, grids):
        bands, itemsize = reader.shape[0], reader.dtype.itemsize
        stored = None if scene_labels is None else stored_targets(task, scene_labels[reader.scene_id], grid)
        per = max(1, int(max_shard_size) // sample_bytes(bands, itemsize, region, stored))
        per = min(per, max_count) if max_count is not None else per
        blocks = plan_reads(grid, reader.tiles, bands * itemsize, max_read_bytes)
        passes = decode_passes(blocks, reader.tiles, (grid.height, grid.width))
        if passes > 2:
            log.warning("%s: store tiles (Zarr chunks) %dx%d are taller than the %d px regions, so each "
                        "tile is decoded %.1f times; ingest with --chunk %d for fast sharding, or raise "
                        "--max-read-bytes", store, *reader.tiles, region, passes, region)
        names = []
        for n, (a, b) in enumerate(cut_shards(blocks, len(grid), per)):
            name = shard_name(reader.scene_id, n)
            names.append(name)
            tasks.append(ShardTask(name, reader.scene_id, str(store), a, b, region, max_read_bytes,
                                   None if scene_labels is None else scene_labels[reader.scene_id],
                                   None if scene_labels is None else task))
        scenes.append({"scene_id": reader.scene_id, "store": str(store), "bands": reader.bands,
                       "dtype": str(reader.dtype), "scene_shape": [grid.height, grid.width],
                       "grid": [grid.rows, grid.cols], "region": region, "regions": len(grid),
                       "objects": None if scene_labels is None else len(scene_labels[reader.scene_id]),
                       "shards": names, **reader.georef})
    ledger = _ledger(out)
    old = ledger.recorded()
    ours = _written_by(out, old)
    if old is None or old.get("fingerprint") != fingerprint:
        # a file in the way that no run of ours wrote is someone else's: never replace it
        foreign = [t.name for t in tasks if (out / t.name).exists() and t.name not in ours]
        if foreign:
            raise ShardError(f"{out / foreign[0]}: exists and was not written by an earlier shard run here "
                             f"({len(foreign)} such file(s)); move it away or choose another --out")
    ledger.claim(fingerprint, config, overwrite=overwrite, clear=lambda: _clear(out, ours),
                 units=[t.name for t in tasks])
    _drop_partials(out, [t.name for t in tasks])  # of killed runs: the shards will be written again
    return ShardPlan(out, fingerprint, config, scenes, tasks, _done_shards(out))


def write_shard(task: ShardTask, out: str) -> dict:
    """Write one shard (a dask task): stream its regions into ``NAME.tar.partial``, hash as it goes,
    rename, then mark it done. Returns the marker (name, scene, region range, bytes, sha256)."""
    limit_arenas()  # in whichever process runs the task: dask workers too
    out_dir = Path(out)
    final = out_dir / task.name
    # this writer's own partial file: a task run twice (a retried or duplicated dask task) must
    # not interleave two writes into one file, or find the other's renamed away
    partial = out_dir / f"{task.name}.{unique_tag()}.partial"
    reader = ZarrWindows(task.store)
    grid = RegionGrid(reader.shape[1], reader.shape[2], task.region)
    try:
        with open(partial, "wb", buffering=1 << 20) as raw:  # tar headers are 512 B: batch them
            sink = _HashingFile(raw)
            with open_tar(sink) as tar:
                # decoding the next block overlaps encoding, hashing and writing this one
                samples = iter_regions(reader, grid, task.start, task.stop, max_read_bytes=task.max_read_bytes)
                for sample, extra in prefetched(_labelled(samples, task, grid), PREFETCH_REGIONS):
                    name = None if task.label_task is None else task.label_task.name
                    add_sample(tar, encode_sample(sample, reader.bands, name, extra))
        # no fsync: the marker-after-rename protocol survives a killed process; after a power
        # loss a shard can keep its size with lost contents, which a rerun (verify) catches by SHA-256
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)  # a failed write (a full disk) must not leave it filling the disk
        raise
    marker = {"name": task.name, "scene_id": task.scene_id, "start": task.start, "stop": task.stop,
              "regions": task.stop - task.start, "bytes": sink.size, "sha256": sink.hexdigest()}
    _ledger(out_dir).mark(task.name, marker)
    return marker


def check_shard(task: ShardTask, out: str, marker: dict) -> dict:
    """Re-hash a shard already written (a dask task); write it again if its SHA-256 is not the one
    recorded when it was written (same size, changed bytes: a bad disk, a power loss)."""
    path = Path(out) / task.name
    if _file_sha256(path) == marker.get("sha256"):
        return marker
    log.warning("%s: SHA-256 differs from the one recorded when it was written (corrupt); writing it again", path)
    return write_shard(task, out)


def _labelled(samples: Iterator[RegionSample], task: ShardTask, grid: RegionGrid
              ) -> Iterator[tuple[RegionSample, dict | None]]:
    """``(sample, extra)``: the sample with its targets as the label task stores them and its
    objects, plus the task's extra record (``None`` without labels)."""
    for sample in samples:
        extra = None
        if task.label_task is not None:
            targets, sample.objects = task.label_task.region_targets(task.labels, grid, sample.index)
            sample.targets, extra = task.label_task.pack_targets(task.labels, grid, sample.index, targets)
        yield sample, extra


def open_tar(fileobj: Any) -> tarfile.TarFile:
    """A tar being written to ``fileobj`` (file mode, USTAR, large copies); close it to finish."""
    return tarfile.TarFile(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=TAR_COPY_BYTES)


def add_sample(tar: tarfile.TarFile, files: dict[str, Any]) -> int:
    """Append one sample (``{"__key__": KEY, ext: bytes}``) as ``KEY.ext`` members, in sorted order,
    read-only, owner ``xtstream``, mtime 0 (a resumed run writes the same bytes as a clean one).
    Returns the data bytes added."""
    key, total = files["__key__"], 0
    for ext in sorted(k for k in files if not k.startswith("_")):
        data = files[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = TAR_OWNER
        tar.addfile(info, _BufferReader(data))
        total += info.size
    return total


def write_manifest(plan: ShardPlan) -> Path:
    """Collect every shard's marker into ``manifest.json`` (atomically); refuse if any is missing."""
    done = _done_shards(plan.out)
    missing = [t.name for t in plan.tasks if t.name not in done]
    if missing:
        raise ShardError(f"{plan.out}: {len(missing)} shard(s) not written (first: {missing[0]}); rerun to resume")
    shards = [done[t.name] for t in plan.tasks]
    manifest = {
        "format": MANIFEST_FORMAT, "version": __version__, "fingerprint": plan.fingerprint,
        "region": plan.config["region"], "config": plan.config, "scenes": plan.scenes, "shards": shards,
        "totals": {"scenes": len(plan.scenes), "shards": len(shards),
                   "regions": int(sum(s["regions"] for s in shards)), "bytes": int(sum(s["bytes"] for s in shards))},
    }
    path = plan.out / MANIFEST
    with replacing(path, f".{unique_tag()}.tmp") as tmp:
        tmp.write_text(manifest_text(json.loads(json.dumps(manifest, default=_plain))))
    # the manifest now lists every shard; the plan file stays, so that a rerun recognises this run
    _ledger(plan.out).clear()
    return path


def shard_stores(stores: Sequence[str | Path], out: str | Path, *, region: int,
                 labels: str | Path | None = None, task: Any = None, spec: Any = None,
                 max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, max_count: int | None = None,
                 max_read_bytes: int = SHARD_MAX_READ_BYTES, scheduler: str | None = None, client: Any = None, progress: bool = True,
                 overwrite: bool = False, verify: bool = True) -> Path:
    """Cut scene stores into ordered region shards under ``out``; resume an interrupted run.

    Returns the path of ``manifest.json``. ``labels``, ``task``, ``spec``: see :func:`plan_shards`.
    ``verify``: re-hash the shards an earlier run wrote and write again those that changed
    (reads them all once); without it a rerun trusts any shard of the recorded size.
    ``scheduler``/``client`` choose where the graph runs
    (see :func:`xtstream._runtime.cluster.dask_client`); the shard directory must be visible to workers.

    >>> shard_stores(["a.zarr", "b.zarr"], "shards/", region=512, labels="labels.csv")  # doctest: +SKIP
    """
    limit_arenas()  # before the thread pool starts, so that its threads share the arenas
    with output_lock(out, "shard directory", error=ShardError), writing(out):
        return _shard_locked(stores, out, region=region, labels=labels, task=task, spec=spec,
                             max_shard_size=max_shard_size, max_count=max_count, max_read_bytes=max_read_bytes,
                             scheduler=scheduler, client=client, progress=progress, overwrite=overwrite,
                             verify=verify)


def _shard_locked(stores: Sequence[str | Path], out: str | Path, *, scheduler: str | None, client: Any,
                  progress: bool, verify: bool, **plan_kw: Any) -> Path:
    """:func:`shard_stores`, its output locked."""
    from xtstream._runtime.cluster import dask_client, prestart, run_graph

    if client is None:
        prestart(scheduler, preload=[__name__])  # a local cluster's workers: imported while we plan
    plan = plan_shards(stores, out, **plan_kw)
    todo = plan.todo
    graph = {("xtstream-shard", t.name): (write_shard, t, str(plan.out)) for t in todo}
    if verify:
        graph.update({("xtstream-shard", t.name): (check_shard, t, str(plan.out), plan.done[t.name])
                      for t in plan.tasks if t.name in plan.done})
    if graph:
        keys = list(graph)
        threads = min(MAX_THREADS, THREADS_PER_CORE * (os.cpu_count() or 1))
        if client is not None:
            run_graph(graph, keys, client, progress=progress, desc="shards")
        else:
            with dask_client(scheduler, preload=[__name__]) as c:
                run_graph(graph, keys, c, progress=progress, desc="shards", threads=threads)
    return write_manifest(plan)


class _BufferReader:
    """``read(n)`` over a bytes-like object without copying (``tarfile`` copies out of it)."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self._view, self._pos = memoryview(data).cast("B"), 0

    def read(self, n: int = -1) -> memoryview:
        end = len(self._view) if n < 0 else min(self._pos + n, len(self._view))
        piece, self._pos = self._view[self._pos:end], end
        return piece


class _HashingFile:
    """A write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, raw: Any):
        self.raw, self.size, self._hash = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:  # tarfile's file mode asks where it starts
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:  # the owner closes the real file
        pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _ledger(out: Path) -> RunLedger:
    return RunLedger(out, error=ShardError, what="shards")


def _written_by(out: Path, plan: dict | None) -> set[str]:
    """Names of the shards the run recorded in ``plan`` wrote (or was writing) in ``out``: those its
    plan lists, plus (plans from before units were recorded) its manifest's and done-markers'."""
    if plan is None:
        return set()
    names = set(plan.get("units") or [])
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text())
        except ValueError:
            doc = {}
        if isinstance(doc, dict) and doc.get("fingerprint") == plan.get("fingerprint"):
            names.update(s["name"] for s in doc.get("shards") or [] if isinstance(s, dict)
                         and isinstance(s.get("name"), str))
    names.update(_ledger(out).done())
    return names


def _clear(out: Path, names: set[str]) -> None:
    """Remove the shards ``names`` (and their partial files) and the manifest of the run being
    replaced; the ledger removes its own files. Anything else in ``out`` stays."""
    for name in names:
        if Path(name).name != name:  # a plan names files in ``out`` only
            continue
        (out / name).unlink(missing_ok=True)
    _drop_partials(out, names)
    (out / MANIFEST).unlink(missing_ok=True)


def _drop_partials(out: Path, names: Sequence[str] | set[str]) -> None:
    """Remove the partial files of shards ``names`` (left by killed writers)."""
    if not out.is_dir():
        return
    wanted = set(names)
    for p in out.glob("*.partial"):
        base = p.name.removesuffix(".partial")
        base = base if base in wanted else base.rsplit(".", 1)[0]  # NAME.tar.PID-THREAD.partial
        if base in wanted:
            p.unlink(missing_ok=True)


def _done_shards(out: Path) -> dict[str, dict]:
    """Markers of shards whose tar is still there, whole (same size as when marked)."""
    manifest = out / MANIFEST
    found: dict[str, dict] = {}
    if manifest.is_file():
        try:
            found.update((s["name"], s) for s in read_manifest(manifest)["shards"])
        except ShardError as err:  # the shards are re-hashed or written again; the manifest is rewritten
            log.warning("%s; it is written again", err)
    found.update(_ledger(out).done())
    return {n: m for n, m in found.items() if isinstance(m, dict) and isinstance(m.get("bytes"), int)
            and (out / n).is_file() and (out / n).stat().st_size == m["bytes"]}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers (for the manifest's JSON)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
