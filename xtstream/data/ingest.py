"""Sources → Zarr: one dask graph from a raster source to a chunked, compressed Zarr v3 scene store.

Memory stays flat whatever the scene size: each task reads one ``(bands, N, N)`` chunk of the
source, normalises it, and writes exactly that Zarr chunk (dask chunk == Zarr chunk, one writer
per chunk — the rule that avoids the silent-corruption bugs of unaligned parallel Zarr writes).

Resumable and atomic (the protocol of :mod:`xtstream.data.ledger`): a task marks its chunk done
only after the write returns; a rerun writes only the chunks without a marker. The store is
flagged complete last, once every chunk is marked, and :func:`xtstream.data.store.open_store`
refuses a store without that flag. The store's own attributes record the plan's fingerprint, so a
rerun with another source or configuration is refused (or, with ``overwrite``, replaces it).

Integrity: every tile gets a file, even one equal to the fill value (attribute ``all_tiles``), and
ends in a crc32c (:func:`make_codec`), so readers tell a lost or damaged tile from data (see
:mod:`xtstream.data.store`). A rerun on a complete store lists its tiles and writes any missing one
again; with ``verify`` it also checks every tile's checksum and rewrites those that fail.

One run per store: :func:`ingest` and :func:`ingest_archive` hold each store's lock
(:mod:`xtstream._runtime.lock`) while they write it, and report a full disk or a read-only output
as one :class:`~xtstream.errors.OutputError` (:mod:`xtstream._runtime.oserrors`). A scene
directory may lack a band its spec marks ``optional`` (xView3's ``bathymetry.tif``): the store
then holds the bands the scene has (its ``band_names`` say which); a band asked for by name
(``bands=``) must be there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from xtstream import __version__
from xtstream._runtime.cluster import dask_client, prestart, run_graph
from xtstream._runtime.lock import LOCK_FILE, output_lock
from xtstream._runtime.oserrors import writing
from xtstream._runtime.scratch import thread_array
from xtstream.errors import SourceError, StoreError
from xtstream.data.normalize import normalize, normalize_block, normalize_params, valid_mask
from xtstream.data.sources import is_image_dir, is_image_list, list_images, open_source, source_fingerprint
from xtstream.data.sources.base import WindowedSource, read_checked
from xtstream.data.grid import Window, check_block_bytes
from xtstream.data.specs import DatasetSpec, load_spec
from xtstream.data.ledger import RunLedger
from xtstream.data.tile_writer import TileWriter, fill_margins, tile_writer
from xtstream.data.store import (IMAGE_VAR, NOT_NODES, STORE_FORMAT, TEMPLATE_MARK, VALID_VAR, consolidate,
                                 missing_tiles, read_status, seal_attrs, tile_check, tile_keys)

CODECS = ("zstd", "blosc-zstd", "blosc-lz4", "none")
#: what new stores are written with: the same ratio as blosc-zstd-1 on float32 SAR tiles at ~0.4x
#: its encoding time (benchmarks/ingest_memory.py --stages-only: 32 vs 74 ms per 2-band 2,048^2 tile,
#: ratio 1.32 vs 1.33); the codec was ingest's largest stage
DEFAULT_CODEC = "blosc-lz4"
#: each codec's level when none is given (blosc-lz4: level 5 encoded faster than level 1 — larger
#: blocks — at the same ratio)
DEFAULT_LEVEL = {"blosc-lz4": 5, "blosc-zstd": 1, "zstd": 1, "none": 0}
# total Zarr I/O concurrency is about dask threads x this; keep it small under dask
_ZARR_CONFIG = {"async.concurrency": 4, "threading.max_workers": 2}
# what an ingest's fingerprint hashes; a changed one names the keys that differ
_IDENT_KEYS = ("source_paths", "source_stamps", "shape", "dtype", "band_names", "chunk", "codec", "spec",
               "data_token")


@dataclass
class ScenePlan:
    """What is left to do for one store: a fused graph, and the keys of its chunks not yet written."""

    out: Path
    scene_id: str
    graph: dict
    keys: list[tuple]
    n_chunks: int
    n_done: int
    attrs: dict[str, Any]


def make_codec(codec: str = DEFAULT_CODEC, level: int | None = None, *, checksum: bool = True) -> list[Any]:
    """Zarr v3 bytes-to-bytes codecs for a codec name (``zstd``, ``blosc-zstd``, ``blosc-lz4``,
    ``none``) and level (``None``: :data:`DEFAULT_LEVEL`): the compressor, then (``checksum``) a
    crc32c of the compressed tile, so that any reader — ours, or plain zarr — detects a flipped
    byte or a truncation before decompressing."""
    level = DEFAULT_LEVEL.get(codec, 1) if level is None else level
    if codec == "none":
        compressors: list[Any] = []
    elif codec == "zstd":
        compressors = [zarr.codecs.ZstdCodec(level=level)]
    elif codec in ("blosc-zstd", "blosc-lz4"):
        compressors = [zarr.codecs.BloscCodec(cname=codec.split("-")[1], clevel=level, shuffle="shuffle")]
    else:
        raise StoreError(f"unknown codec {codec!r}; expected one of {CODECS}")
    return compressors + ([zarr.codecs.Crc32cCodec()] if checksum else [])


def plan_ingest(source: Any, out: str | Path, *, spec: str | Path | DatasetSpec | None = None,
                bands: Sequence[str] | None = None, tile: int | None = None,
                scene_id: str | None = None, codec: str | None = None, level: int | None = None,
                overwrite: bool = False, allow_small: bool = False, chunk: int | None = None,
                channels: int | None = None, verify: bool = False, direct_io: bool = True) -> ScenePlan:
    """Create (or reopen, to resume or repair) the store at ``out``; return the graph and the tile
    keys left.

    ``tile``: the side of the store's square tiles (its Zarr chunks) in pixels (default: the
    spec's, else 2048); ``chunk`` is its old name. ``channels`` (1 or 3): convert an image
    source's grey/RGB bands (:mod:`xtstream.data.sources.images`). A complete store whose tile
    files are not all there (or, with ``verify``, whose tiles fail their checksums: every tile is
    read) is reopened and only those tiles are planned. ``codec``/``level``: see :func:`resolve_codec`.
    ``direct_io``: write the tiles past the page cache (``O_DIRECT``) where the file system takes
    it (:mod:`xtstream._runtime.direct_io`: an ingest's output is not read back soon, and filling
    the page cache with it cost more than the disk's wait); ``False``: buffered writes.
    """
    out = Path(out)
    spec = load_spec(spec) if spec is not None else None
    src = open_source(source, spec, bands, channels=channels)
    chunk = tile_size(tile, chunk)
    if chunk is None:  # not `or`: a tile of 0 is refused below, never taken for the default
        chunk = spec.tile if spec else 2048
    if chunk < 1:
        raise StoreError(f"tile must be positive, got {chunk}")
    arr = raw = src.to_dataarray(chunks=chunk)
    valid = norm = None
    if spec is not None:
        present = _present(spec.select(list(bands) if bands else None), arr)
        # what normalisation turns into `fill` is kept as a mask beside the image (`valid`)
        valid = valid_mask(arr, present)
        arr = normalize(arr, present)
        norm = {**normalize_params(raw, present), "dtype": arr.dtype,
                "in_place": bool(getattr(src, "fresh_windows", False))}
    if arr.sizes["y"] == 0 or arr.sizes["x"] == 0:
        raise SourceError(f"{src.name}: empty raster {dict(arr.sizes)}")
    # a tile is written whole (zarr fills a partial one in memory): refuse one that cannot fit
    check_block_bytes(out, "tile", chunk, arr.sizes["band"], arr.dtype, (arr.sizes["y"], arr.sizes["x"]),
                      error=StoreError, option="--tile")
    if spec is not None and not allow_small and max(arr.sizes["y"], arr.sizes["x"]) < spec.region:
        raise SourceError(
            f"{src.name}: scene is {arr.sizes['y']}x{arr.sizes['x']} px, smaller than one "
            f"{spec.region}x{spec.region} region of spec '{spec.name}' (a thumbnail or a wrong file?); "
            "pass allow_small=True (--allow-small) to ingest it anyway (it becomes one padded region)")
    scene_id = scene_id or getattr(src, "scene_id", None) or _default_scene_id(source, out)
    codec, level = resolve_codec(codec, level, None if overwrite else read_status(out).attrs.get("codec"))
    attrs = _attrs(arr, src, spec, scene_id, chunk, codec, level)

    if (out / TEMPLATE_MARK).is_file():
        _clear_store(out)  # killed while laying out the store: no tile was written, start it over
    status = read_status(out)
    if status.exists and not status.ours:
        raise StoreError(f"{out}: exists and is not an xtstream scene store; refusing to write there")
    if status.ours and not overwrite:
        _check_resumable(out, src, arr, status.attrs, attrs)
    # the store records its plan in its own attributes; the ledger keeps the chunk markers
    ledger = _ledger(out)
    recorded = {"fingerprint": status.attrs.get("fingerprint"), "config": status.attrs} if status.ours else None
    ledger.claim(attrs["fingerprint"], _ident(attrs), recorded=recorded, overwrite=overwrite,
                 clear=lambda: _clear_store(out))
    status = read_status(out)
    if status.ours and status.complete:
        damaged = _damaged_tiles(out, verify)
        if not damaged:
            n = int(np.prod(arr.data.numblocks))
            return ScenePlan(out, scene_id, {}, [], n, n, status.attrs)
        _reopen_for_repair(out, ledger, damaged, arr.data.numblocks[1:])
    if not status.exists:
        _write_template(arr, out, attrs, chunk, codec, level, valid=valid)
    if valid is not None and not (out / VALID_VAR / "zarr.json").is_file():
        valid = None  # a store from before the mask: its tiles are written as they were

    done = ledger.done()
    _, nby, nbx = arr.data.numblocks
    # one task per chunk reads, normalises (taking the mask in the same pass) and writes it, so no
    # block ever travels between workers (``arr`` and ``valid`` above are the lazy results it
    # matches: the store's template)
    name = f"ingest-{scene_id}-{attrs['fingerprint']}"
    write = dict(store=str(out), norm=norm, valid=valid is not None, direct=direct_io)
    if isinstance(src, WindowedSource) and getattr(src, "reads_into", False):
        graph = _window_graph(name, src, raw.data.chunks, **write)
    else:  # any other source: its own dask array, each chunk's read fused into the write task
        written = da.map_blocks(_write_chunk, raw.data, **write, dtype=np.int64,
                                chunks=((1,), (1,) * nby, (1,) * nbx), name=name)
        (written,) = dask.optimize(written)
        graph = dict(written.__dask_graph__())
    keys = [(name, 0, i, j) for i in range(nby) for j in range(nbx) if _tile_unit(i, j) not in done]
    return ScenePlan(out, scene_id, graph, keys, nby * nbx, nby * nbx - len(keys), attrs)


def _window_graph(name: str, src: WindowedSource, chunks: tuple[tuple[int, ...], ...],
                  **write: Any) -> dict:
    """The ingest's tasks for a source that reads into a given array (``reads_into``): task
    ``(name, 0, i, j)`` reads tile ``(i, j)`` of ``chunks`` (dask's ``(bands, rows, columns)``
    chunk sizes) into a buffer its thread keeps (:func:`_ingest_window`) and writes it; the source
    is one node of the graph, sent once."""
    source_key = f"source-{name}"
    graph: dict = {source_key: src}
    ys, xs = np.cumsum((0, *chunks[1])), np.cumsum((0, *chunks[2]))
    task = functools.partial(_ingest_window, chunk=(int(src.shape[0]), int(chunks[1][0]), int(chunks[2][0])), **write)
    for i in range(len(chunks[1])):
        for j in range(len(chunks[2])):
            graph[(name, 0, i, j)] = (task, source_key, i, j, int(ys[i]), int(xs[j]), int(ys[i + 1]), int(xs[j + 1]))
    return graph


def _ingest_window(src: WindowedSource, i: int, j: int, y0: int, x0: int, y1: int, x1: int, *,
                   chunk: tuple[int, int, int], **write: Any) -> np.ndarray:
    """Read window ``[y0, y1) x [x0, x1)`` (tile ``(i, j)``) of ``src`` into the corner of this
    thread's kept ``chunk``-shaped ``(bands, H, W)`` buffer and write it (:func:`_write_tile`: an
    edge tile is padded there, in place); the buffer is overwritten by the thread's next tile."""
    window = Window(y0, x0, y1, x1)
    room = thread_array("ingest-read", chunk, src.dtype)
    block = read_checked(src, window, out=room[:, : y1 - y0, : x1 - x0])
    return _write_tile(block, (i, j), window, room=room, **write)


def finalize(plan: ScenePlan) -> Path:
    """Flag a store complete once every chunk is marked done; refuse otherwise."""
    ledger = _ledger(plan.out)
    if not read_status(plan.out).complete:
        n_done = len(ledger.done())
        if n_done < plan.n_chunks:
            raise StoreError(f"{plan.out}: only {n_done} of {plan.n_chunks} chunks written; rerun to resume")
        group = zarr.open_group(plan.out, mode="r+", zarr_format=3)
        info = group.attrs["xtstream"]
        # the complete flag goes last: until it is set, open_store refuses the store. A repaired
        # store keeps its first completion time: its pixels are those it had, so shard runs made
        # from it still recognise it
        group.attrs["xtstream"] = {**info, "complete": True, "completed": info.get("completed") or _now()}
    ledger.clear()
    consolidate(plan.out)  # after the ledger is gone: it is not part of the store
    return plan.out


def ingest(source: Any, out: str | Path, *, spec: str | Path | DatasetSpec | None = None,
           bands: Sequence[str] | None = None, tile: int | None = None, scene_id: str | None = None,
           scheduler: str | None = None, client: Any = None, progress: bool = True,
           codec: str | None = None, level: int | None = None, overwrite: bool = False,
           allow_small: bool = False, chunk: int | None = None, channels: int | None = None,
           verify: bool = False, direct_io: bool = True) -> Path:
    """Ingest one scene into a Zarr v3 store at ``out``; resume it if a previous run was cut off.

    The store is tiled in ``tile x tile`` Zarr chunks (default: the spec's, else 2048).
    ``channels`` (1 or 3): convert an image's grey/RGB bands. On a complete store it writes again
    any tile whose file is missing, and with ``verify`` any tile failing its checksum (reading
    them all). ``direct_io``: tiles written past the page cache where possible (:func:`plan_ingest`).

    >>> ingest("scene_dir/", "scene.zarr", spec="xview3")          # doctest: +SKIP
    >>> xarray.open_zarr("scene.zarr")["image"]                     # (band, y, x)  # doctest: +SKIP
    """
    tile = tile_size(tile, chunk)
    with output_lock(out, "scene store", error=StoreError), writing(out):
        if client is None:
            prestart(scheduler, preload=[__name__])  # a local cluster's workers: imported while we plan
        plan = plan_ingest(source, out, spec=spec, bands=bands, tile=tile, scene_id=scene_id,
                           codec=codec, level=level, overwrite=overwrite, allow_small=allow_small,
                           channels=channels, verify=verify, direct_io=direct_io)
        if plan.keys:
            if client is not None:
                run_graph(plan.graph, plan.keys, client, progress=progress, desc=plan.scene_id)
            else:
                with dask_client(scheduler, preload=[__name__]) as c:
                    run_graph(plan.graph, plan.keys, c, progress=progress, desc=plan.scene_id, threads=ingest_threads())
        return finalize(plan)


def ingest_threads() -> int:
    """Threads of an ingest on the local threaded scheduler: dask's ``num_workers`` where set, else
    one more than the cores. Why one more: a task waits on the disk for its direct writes (and
    reads); the extra thread computes meanwhile. The 29,400 x 24,400 ingest on 2 cores: 6.1 s on
    3 threads instead of 7.1 s on 2, an archive of four 8,192² scenes 2.75 s instead of 3.14
    (medians of 4 alternating rounds), at ~110 MiB more peak RSS (a tile's buffers more)."""
    return dask.config.get("num_workers", None) or (os.cpu_count() or 1) + 1


def find_scenes(root: str | Path, spec: str | Path | DatasetSpec | None = None) -> list[Path]:
    """Scene directories under an archive root: subdirectories holding the spec's first band file."""
    root = Path(root)
    spec = load_spec(spec) if spec is not None else None
    marker = spec.bands[0].file if spec else None
    scenes = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if marker and (sub / marker).is_file():
            scenes.append(sub)
        elif marker is None and any(f.suffix.lower() in (".tif", ".tiff") for f in sub.iterdir()):
            scenes.append(sub)
    return scenes


def is_archive(path: str | Path, spec: str | Path | DatasetSpec | None = None) -> bool:
    """True for a directory of scene directories (and no band files of its own), an image
    directory or an image-list CSV (:mod:`xtstream.data.sources.images`: a scene per image)."""
    path = Path(path)
    if is_image_list(path) or (spec is None and is_image_dir(path)):
        return True
    if not path.is_dir() or (path / "zarr.json").exists():
        return False
    own = [f for f in path.iterdir() if f.suffix.lower() in (".tif", ".tiff")]
    return not own and bool(find_scenes(path, spec))


def ingest_archive(root: str | Path, out_root: str | Path, *, spec: str | Path | DatasetSpec | None = None,
                   scenes_in_flight: int = 2, scheduler: str | None = None, progress: bool = True,
                   **kw: Any) -> list[Path]:
    """Ingest every scene under ``root`` into ``out_root/{scene_id}.zarr``: the scene directories
    of an archive root, or the images of an image directory or image-list CSV (one store per
    image, ``{scene_key}.zarr``, scene id = file stem or the list's ``scene_id``; ``channels=``
    converts grey/RGB).

    Scenes go through as a bounded queue of graphs: ``scenes_in_flight`` scenes' chunk tasks are
    submitted together, so memory is bounded by chunks in flight, not by the archive's size.
    Already complete stores are skipped; interrupted ones resume.
    """
    from xtstream.data.shards.format import scene_key

    if is_image_list(root) or (spec is None and is_image_dir(root)):
        scenes = [(f"{scene_key(r.scene_id)}.zarr", r.scene_id, r) for r in list_images(root, kw.get("channels"))]
    else:
        scenes = [(f"{s.name}.zarr", s.name, s) for s in find_scenes(root, spec)]
    if not scenes:
        raise SourceError(f"{root}: no scene directories found")
    out_root = Path(out_root)
    if scenes_in_flight < 1:
        raise SourceError(f"scenes_in_flight must be at least 1, got {scenes_in_flight}")
    written = []
    with writing(out_root):
        if out_root.exists() and not out_root.is_dir():
            raise StoreError(f"{out_root}: exists and is a file, not a directory; choose another output "
                             "for the scene stores")
        out_root.mkdir(parents=True, exist_ok=True)
        with dask_client(scheduler, preload=[__name__]) as client:
            if client is not None:
                return _archive_on_cluster(client, scenes, out_root, spec, scenes_in_flight, progress, kw)
            for start in range(0, len(scenes), scenes_in_flight):
                group = scenes[start: start + scenes_in_flight]
                with contextlib.ExitStack() as locks:  # each store is locked while its graph runs
                    for name, _, _ in group:
                        locks.enter_context(output_lock(out_root / name, "scene store", error=StoreError))
                    plans = [plan_ingest(src, out_root / name, spec=spec, scene_id=sid, **kw)
                             for name, sid, src in group]
                    graph = {k: v for p in plans for k, v in p.graph.items()}
                    run_graph(graph, [k for p in plans for k in p.keys], client, progress=progress, threads=ingest_threads(),
                              desc=f"scenes {start + 1}-{start + len(group)}/{len(scenes)}")
                    written.extend(finalize(p) for p in plans)
    return written


def _archive_on_cluster(client: Any, scenes: list[tuple[str, str, Any]], out_root: Path, spec: Any,
                        in_flight: int, progress: bool, kw: dict[str, Any]) -> list[Path]:
    """:func:`ingest_archive` on a dask cluster: a queue of ``in_flight`` scenes' graphs, the next
    scene submitted as soon as the oldest is finished, so that the workers never wait for a
    whole group of scenes to end (the stragglers' tail). The next scene is planned while the queue
    runs: the queued scenes tend to end together, and planning then (0.06-0.12 s a scene here)
    left both workers idle between an archive's scenes."""
    import collections

    from xtstream._runtime.cluster import gather_graph, submit_graph

    bar = _ArchiveBar(progress, len(scenes))
    queue: collections.deque = collections.deque()  # (plan, futures, lock) oldest first
    written: list[Path] = []
    todo = iter(scenes)
    ahead = None  # (plan, lock) of the next scene, planned while the queue runs

    def plan_next() -> tuple[ScenePlan, contextlib.ExitStack] | None:
        scene = next(todo, None)
        if scene is None:
            return None
        name, sid, src = scene
        lock = contextlib.ExitStack()  # the store is locked from its planning to its end
        lock.enter_context(output_lock(out_root / name, "scene store", error=StoreError))
        try:
            return plan_ingest(src, out_root / name, spec=spec, scene_id=sid, **kw), lock
        except BaseException:
            lock.close()
            raise

    try:
        while True:
            while len(queue) < in_flight:
                planned, ahead = ahead or plan_next(), None
                if planned is None:
                    break
                plan, lock = planned
                try:
                    futures = submit_graph(plan.graph, plan.keys, client) if plan.keys else []
                except BaseException:
                    lock.close()
                    raise
                bar.add(futures)
                queue.append((plan, futures, lock))
            if not queue:
                return written
            if ahead is None:
                ahead = plan_next()
            plan, futures, lock = queue.popleft()
            with lock:
                gather_graph(futures, client)
                written.append(finalize(plan))
            bar.scene_done()
    finally:
        for _, futures, lock in queue:  # an error: what has not run is cancelled, the locks freed
            client.cancel(futures)
            lock.close()
        if ahead is not None:
            ahead[1].close()
        bar.close()


class _ArchiveBar:
    """Tiles done over tiles planned so far (``tqdm``), and scenes done; nothing without ``progress``."""

    def __init__(self, progress: bool, scenes: int) -> None:
        self.scenes, self.done, self.bar = scenes, 0, None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, unit="chunk", desc=f"scenes 0/{scenes}")

    def add(self, futures: list[Any]) -> None:
        if self.bar is not None:
            self.bar.total += len(futures)
            self.bar.refresh()
            for f in futures:
                f.add_done_callback(lambda _: self.bar.update(1))

    def scene_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(f"scenes {self.done}/{self.scenes}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def resolve_codec(codec: str | None, level: int | None, recorded: Any = None) -> tuple[str, int]:
    """The ``(codec, level)`` an ingest writes with. ``codec=None``: the one ``recorded`` in an
    existing store (``[codec, level]`` from its attributes) — a rerun resumes a store written before
    the default changed — else :data:`DEFAULT_CODEC`; ``level=None``: the recorded level for the
    recorded codec, else :data:`DEFAULT_LEVEL`."""
    if codec is None and isinstance(recorded, (list, tuple)) and len(recorded) == 2 and recorded[0] in CODECS:
        codec = recorded[0]
        if level is None:
            level = int(recorded[1])
    codec = DEFAULT_CODEC if codec is None else codec
    if codec not in CODECS:
        raise StoreError(f"unknown codec {codec!r}; expected one of {CODECS}")
    return codec, DEFAULT_LEVEL[codec] if level is None else int(level)


def tile_size(tile: int | None, chunk: int | None) -> int | None:
    """``tile``, or the deprecated ``chunk`` it replaced ("chunk" now means C regions only)."""
    if chunk is not None:
        warnings.warn("ingest(chunk=...) is now ingest(tile=...): a store's Zarr chunks are its tiles",
                      DeprecationWarning, stacklevel=3)
        if tile is not None and tile != chunk:
            raise StoreError(f"tile={tile} and chunk={chunk} disagree; pass tile= only")
        return chunk
    return tile


def _write_chunk(block: np.ndarray, *, block_info: dict | None = None, **write: Any) -> np.ndarray:
    """:func:`_write_tile` of a ``(bands, h, w)`` chunk of the source's dask array, where
    ``block_info`` (dask's) locates it."""
    (_, _), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    _, i, j = block_info[0]["chunk-location"]
    return _write_tile(block, (i, j), Window(y0, x0, y1, x1), **write)


def _write_tile(block: np.ndarray, tile: tuple[int, int], window: Window, *, store: str, norm: dict[str, Any] | None = None,
                valid: bool = False, direct: bool = False, room: np.ndarray | None = None) -> np.ndarray:
    """Normalise the ``(bands, h, w)`` source pixels of ``window``, the store's tile ``(i, j)``, with
    ``norm`` (:func:`normalize_block`'s parameters; ``None``: written as read), write them and, with
    ``valid``, their valid-data mask where they belong (with ``direct``, past the page cache where
    possible); return the byte count as ``(1, 1, 1)``.

    ``room``: a whole chunk's ``(bands, H, W)`` buffer whose corner ``block`` is (an edge tile read
    into it): its margins are filled and the whole chunk written, instead of the tile writer
    copying the tile into a padded buffer of its own."""
    i, j = tile
    y0, x0, y1, x1 = window
    nbytes = block.nbytes
    # the mask is the task's own, so its thread keeps the buffer (a fresh one is faulted in
    # again), a whole chunk's room too where the image has it
    mask_room = thread_array("ingest-mask", room.shape if room is not None else block.shape, np.uint8) if valid else None
    mask = mask_room[:, : block.shape[1], : block.shape[2]] if valid else None
    if norm is not None:
        block = normalize_block(block, **norm, valid=mask)
    # every tile gets its file, even one equal to the fill value, so that a missing file always
    # means a lost tile (readers refuse it instead of filling it in). Written directly (zarr's
    # own files, see tile_writer: four tile-sized buffers fewer per tile than zarr's path) where
    # the layout allows, else by zarr with write_empty_chunks
    writers = _tile_writers(store, (IMAGE_VAR, VALID_VAR) if mask is not None else (IMAGE_VAR,), direct)
    if all(w is not None for w in writers):
        for w, data, whole in zip(writers, (block, mask), (room, mask_room)):
            w.write((0, i, j), _in_room(data, whole, w.layout.chunk_shape, w.layout.fill_value))
    else:
        with zarr.config.set({**_ZARR_CONFIG, "array.write_empty_chunks": True}):
            arr = zarr.open_array(store, path=IMAGE_VAR, mode="r+", zarr_format=3)
            arr[:, y0:y1, x0:x1] = block
            if mask is not None:
                zarr.open_array(store, path=VALID_VAR, mode="r+", zarr_format=3)[:, y0:y1, x0:x1] = mask
    # the marker goes last: a chunk counts as written only once its write has returned
    _ledger(store).mark(_tile_unit(i, j))
    return np.full((1, 1, 1), nbytes, dtype=np.int64)


def _in_room(block: np.ndarray, room: np.ndarray | None, chunk_shape: tuple[int, ...], fill: Any) -> np.ndarray:
    """``room`` with its margins around ``block`` (its corner) set to ``fill``, where ``room`` has
    the chunk's shape and ``block`` is still its corner (normalisation worked in place); else
    ``block``, for the tile writer to pad."""
    if (room is None or room.shape != tuple(chunk_shape) or block.shape == room.shape or block.dtype != room.dtype
            or block.ctypes.data != room.ctypes.data or block.strides != room.strides):
        return block
    fill_margins(room, block.shape, fill)
    return room


def _tile_writers(store: str, names: tuple[str, ...], direct: bool) -> tuple[TileWriter | None, ...]:
    """The :func:`tile_writer` of each of the store's variables ``names``, made once per process
    and metadata: a task used to read and parse both ``zarr.json`` files for its one tile. Keyed by
    each file's inode, mtime and size, so that a store laid out again (``overwrite``, another
    codec) gets new writers."""
    stamps = []
    for name in names:
        try:
            st = os.stat(Path(store) / name / "zarr.json")
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return _made_tile_writers(store, names, direct, tuple(stamps))


@functools.lru_cache(maxsize=16)
def _made_tile_writers(store: str, names: tuple[str, ...], direct: bool, stamps: tuple) -> tuple[TileWriter | None, ...]:
    return tuple(tile_writer(Path(store) / name, direct=direct) for name in names)


def _ledger(store: str | Path) -> RunLedger:
    return RunLedger(store, error=StoreError, what="an ingest", plan_file=None)


def _tile_unit(i: int, j: int) -> str:
    """The ledger's name for the Zarr chunk at tile row ``i``, column ``j``."""
    return f"{i}.{j}"


def _damaged_tiles(out: Path, verify: bool) -> list[str]:
    """Keys of a complete store's tiles that are missing (one listing) or, with ``verify``, fail
    their checks (every tile read)."""
    damaged = missing_tiles(out)
    if verify:
        check = tile_check(out)
        for key in tile_keys(out):
            if key in damaged:
                continue
            try:
                check.check(key, (out / key).read_bytes())
            except (StoreError, OSError):
                damaged.append(key)
    return damaged


def _reopen_for_repair(out: Path, ledger: RunLedger, damaged: list[str], numblocks: tuple[int, int]) -> None:
    """Turn a complete store with damaged tiles back into a resumable ingest that writes only those.

    Order matters for a cut-off repair: the store is flagged incomplete first (readers refuse it),
    then the damaged files go, then every other tile is marked done; a rerun resumes from there.
    """
    group = zarr.open_group(out, mode="r+", zarr_format=3)
    group.attrs["xtstream"] = {**group.attrs["xtstream"], "complete": False, "repaired": _now()}
    bad = set()
    for key in damaged:
        (out / key).unlink(missing_ok=True)  # a rewrite must not merge into a corrupt tile
        i, j = key.split("/")[-2:]
        bad.add(_tile_unit(int(i), int(j)))
    for i in range(numblocks[0]):
        for j in range(numblocks[1]):
            if _tile_unit(i, j) not in bad:
                ledger.mark(_tile_unit(i, j))
    warnings.warn(f"{out}: {len(damaged)} tile(s) missing or damaged ({', '.join(damaged[:4])}"
                  f"{', ...' if len(damaged) > 4 else ''}); writing them again", stacklevel=3)


def _check_resumable(out: Path, src: Any, arr: xr.DataArray, recorded: dict, attrs: dict) -> None:
    """Refuse, saying how to fix it, to resume a store from a source that cannot be recognised: one
    without paths or a fingerprint, whose token changed (it holds the instance's ``id()``)."""
    if (recorded.get("fingerprint") == attrs["fingerprint"] or arr.attrs.get("source_paths")
            or source_fingerprint(src) is not None):
        return
    same = all(recorded.get(k) == attrs.get(k) for k in _IDENT_KEYS if k != "data_token")
    if not same:
        return  # another shape, spec, tile…: the ledger names what differs
    kind = type(src).__name__
    raise SourceError(
        f"{out}: cannot resume this ingest: source {src.name!r} ({kind}) has no file paths and no stable "
        f"fingerprint, so it cannot be told from another source. Give {kind} a method "
        "`def fingerprint(self): return '…'` returning a string that changes whenever its pixels do "
        "(e.g. a version and its parameters), or pass overwrite=True (--overwrite) to start over")


def _present(spec: DatasetSpec, arr: xr.DataArray) -> DatasetSpec:
    """``spec`` without the optional bands the source lacks (sources skip missing optional files)."""
    names = {str(b) for b in arr["band"].values}
    return spec.select([b.name for b in spec.bands if b.name in names or not b.optional])


def _clear_store(out: Path) -> None:
    """Remove a replaced store's contents; its lock file stays (this run holds it)."""
    for p in out.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _ident(attrs: dict[str, Any]) -> dict[str, Any]:
    """The part of a store's attributes that its fingerprint hashes (what a resume must match), as
    the store records it (JSON: tuples become lists), so that a refusal names only what differs."""
    return json.loads(json.dumps({k: attrs[k] for k in _IDENT_KEYS if k in attrs}, default=str))


def store_nodata_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The image's attributes as stored: a source's per-band ``nodata`` list becomes ``band_nodata``,
    and ``nodata`` is kept only as the one value all bands share (what rioxarray's ``.rio.nodata``
    reads: a list made it raise ``TypeError``); bands with different nodata values have no scalar
    ``nodata`` (``.rio.nodata`` is ``None``) and are described by ``band_nodata`` alone."""
    out = dict(attrs)
    nodata = out.pop("nodata", None)
    if not isinstance(nodata, (list, tuple)):
        if nodata is not None:
            out["nodata"] = nodata
        return out
    out["band_nodata"] = list(nodata)
    values = {v for v in nodata if v is not None}
    if len(values) == 1 and None not in nodata:
        out["nodata"] = values.pop()
    return out


def _write_template(arr: xr.DataArray, out: Path, attrs: dict, chunk: int, codec: str,
                    level: int, valid: xr.DataArray | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    bands = arr.sizes["band"]
    # each dask block must map onto whole Zarr chunks, or two tasks would rewrite one chunk
    # concurrently and one of the writes would be lost
    for axis in (1, 2):
        if any(c % chunk for c in arr.data.chunks[axis][:-1]):
            raise StoreError(f"{out}: dask chunks {arr.data.chunks[axis]} do not align to {chunk}")
    ds = arr.to_dataset(name=IMAGE_VAR)
    # variable-length strings: Zarr v3 has no stable spec for fixed-width unicode
    ds = ds.assign_coords(band=np.asarray([str(b) for b in arr["band"].values], dtype=object))
    ds.attrs = {"xtstream": seal_attrs(attrs)}
    ds[IMAGE_VAR].attrs = store_nodata_attrs(ds[IMAGE_VAR].attrs)
    # set on .encoding, not to_zarr(encoding=…): the latter drops the CRS grid-mapping link
    ds[IMAGE_VAR].encoding.update(chunks=(bands, chunk, chunk), compressors=make_codec(codec, level))
    if valid is not None:
        ds[VALID_VAR] = valid.assign_coords(band=ds["band"])
        ds[VALID_VAR].encoding.update(chunks=(bands, chunk, chunk), compressors=make_codec(codec, level),
                                      fill_value=0)
    # the layout is several files: marked unfinished until all are there (see TEMPLATE_MARK)
    out.mkdir(parents=True, exist_ok=True)
    mark = out / TEMPLATE_MARK
    mark.write_text("")
    with warnings.catch_warnings():  # appending lists the group, our lock file and mark in it
        warnings.filterwarnings("ignore", message=NOT_NODES)
        # "a", not "w-": the directory holds our lock and mark ("w-" refuses any non-empty one)
        ds.to_zarr(out, mode="a", compute=False, zarr_format=3, consolidated=False)
    mark.unlink()


def _attrs(arr: xr.DataArray, src: Any, spec: DatasetSpec | None, scene_id: str, chunk: int,
           codec: str, level: int) -> dict[str, Any]:
    crs = arr.rio.crs if "spatial_ref" in arr.coords else None
    transform = list(arr.rio.transform())[:6] if crs is not None else arr.attrs.get("transform")
    ident = {
        "source_paths": [str(p) for p in arr.attrs.get("source_paths", [])] or [str(src.name)],
        "shape": [int(s) for s in arr.shape],
        "dtype": str(arr.dtype),
        "band_names": [str(b) for b in arr["band"].values],
        "spec": spec.to_dict() if spec else None,
        "chunk": chunk,
        "codec": [codec, level],
    }
    # a rerun on changed files must not resume into chunks written from the old ones
    ident["source_stamps"] = [_stamp(p) for p in ident["source_paths"]]
    if not arr.attrs.get("source_paths"):
        # no path to compare: the source's own fingerprint, else its values' token (dask's: stable
        # for numpy data, not for a custom source without one — see _check_resumable)
        fingerprint = source_fingerprint(src)
        ident["data_token"] = (dask.base.tokenize(arr.data) if fingerprint is None
                               else f"fingerprint:{fingerprint}")
    return {
        "format": STORE_FORMAT,
        "complete": False,
        "scene_id": scene_id,
        "version": __version__,
        "created": _now(),
        "crs": crs.to_wkt() if crs is not None else None,
        "transform": transform,
        "fingerprint": hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "all_tiles": True,  # every tile has a file (see _write_chunk): a missing one is lost
        **ident,
    }


def _stamp(path: str) -> list | None:
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    return None


def _default_scene_id(source: Any, out: Path) -> str:
    if isinstance(source, (str, Path)):
        p = Path(source)
        return p.name.split(".")[0] if p.is_file() else p.name.removesuffix(".zarr")
    return out.name.removesuffix(".zarr")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
