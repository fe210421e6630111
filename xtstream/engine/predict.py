"""Streaming prediction over whole scenes: chunks in, per-scene outputs and one merged CSV out.

``predict(model, sources, out)`` streams every scene region chunk by chunk through the model
(one context state per scene, :meth:`XTModel.stream`) and hands each chunk's outputs to the
task's scene writer (:meth:`Task.scene_writer`: for xView3 a georeferenced Zarr store of the
dense maps and the scene's detections; for classification the top-k classes). Output layout::

    OUT/
      predict.json             the run: task, checkpoint hash, options (a rerun must match)
      scenes/{scene}.zarr      per-scene outputs of the task (xView3), complete-flagged
      scenes/{scene}.csv.json  the SHA-256 of the scene's CSV, written just before it
      scenes/{scene}.csv       the scene's rows; written last, atomically: the scene is done
      detections.csv           all scenes' rows merged in input order (predictions.csv for
                               classification), written once every scene is done

**Resuming**: a scene whose ``scenes/{scene}.csv`` exists (and matches the SHA-256 beside it: a
damaged CSV is predicted again, never merged) is skipped; any other output of it is redone from
its first region (a half-written store is never complete-flagged, so it is never
mistaken for a finished one). **Many processes** (``torchrun``, or ``RANK``/``WORLD_SIZE``):
scenes are split between ranks whole, before finished ones are skipped, so the split does not
depend on what is done; each rank writes its own scenes; whichever rank finds every scene done
merges the CSV (after a barrier when ``torch.distributed`` is initialised: rank 0).

**One run per directory**: the first rank holds ``OUT``'s lock (:mod:`xtstream._runtime.lock`),
so a second ``predict`` into it refuses; a full disk or a read-only ``OUT`` is one
:class:`~xtstream.errors.OutputError`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from xtstream._runtime.atomic import replacing
from xtstream._runtime.lock import holds_only_lock, output_lock
from xtstream._runtime.oserrors import writing
from xtstream._runtime.write_behind import WriteBehind
from xtstream.data.georef import Georef
from xtstream.data.grid import RegionGrid
from xtstream.data.shards.format import scene_key
from xtstream.data.split import split_scenes, worker_info
from xtstream.errors import ModelConfigError, StoreError

RUN_FORMAT = "xtstream-predict/1"
RUN_FILE = "predict.json"
SCENES_DIR = "scenes"


@dataclass
class SceneEntry:
    """One scene to predict: where its regions come from and where it lies."""

    scene_id: str
    kind: str  # "shards" or "source"
    handle: Any  # a ShardedScene, or a window reader
    grid: RegionGrid | None
    georef: Georef = field(default_factory=Georef)
    bands: int | None = None


@dataclass
class PredictResult:
    """What a call did: ``out``, ``csv`` (the merged CSV, ``None`` while other ranks still work),
    ``predicted`` / ``skipped`` (scene ids: done now / found done), ``rows`` (written now),
    ``scenes`` (every scene id of the sources, in order: what the merged CSV covers)."""

    out: Path
    csv: Path | None
    predicted: list[str]
    skipped: list[str]
    rows: int
    scenes: list[str] = field(default_factory=list)


def predict(model: Any, sources: Any, out: str | Path, *, task: Any = None, chunk: int | None = None,
            device: torch.device | str | None = None, batch_size: int | None = None,
            memory_budget: int | None = None, num_workers: int = 0, prefetch: int = 2,
            overwrite: bool = False, progress: bool = True, split_ranks: bool = True,
            **options: Any) -> PredictResult:
    """Predict whole scenes into ``out`` (layout, resuming and ranks: see the module docstring).

    ``model``: an :class:`~xtstream.models.xt.XTModel` or a checkpoint path (:func:`load_model`).
    ``sources``: scene stores, scene directories / GeoTIFFs / any raster source, image files,
    image directories or image-list CSVs (one scene per image, :mod:`xtstream.data.sources.images`;
    grey and RGB images are converted to the model's ``in_chans`` when it is 1 or 3), shard
    directories or their ``manifest.json`` — one or a list. ``task``: a task name or instance (default: the
    task that trains the model's head). ``chunk``: regions per chunk (default the model's).
    ``num_workers``: DataLoader workers reading regions (scenes split between them whole).
    ``split_ranks``: share the scenes between ``torchrun`` ranks (``False``: this process predicts
    them all, e.g. validation on rank 0 of a training run).
    ``options``: the task's prediction options (xView3: ``threshold``, ``min_distance``,
    ``vessel_threshold``, ``fishing_threshold``, ``geotiff``; classification: ``top_k``).
    """
    from xtstream.models.checkpoint import load_model
    from xtstream.tasks.base import get_task, task_for_head

    checkpoint = None
    if isinstance(model, (str, Path)):
        checkpoint = Path(model)
        model = load_model(checkpoint)
    config = model.config
    task = task_for_head(config.head) if task is None else get_task(task)
    if task.head != config.head:
        where = f"checkpoint {checkpoint}" if checkpoint else "the model"
        raise ModelConfigError(f"{where} has a {config.head!r} head; task {task.name!r} predicts with "
                               f"a {task.head!r} head")
    if chunk is None:
        chunk = config.chunk
    elif chunk < 1:  # not `chunk or …`: 0 is a mistake, not "the default"
        raise ModelConfigError(f"chunk must be at least 1, got {chunk} (None: the model's, {config.chunk})")
    if batch_size is not None and batch_size < 1:
        raise ModelConfigError(f"batch_size must be at least 1, got {batch_size} (None: from a memory budget)")
    out = Path(out)
    entries = list_scenes(sources, config.region, channels=config.in_chans if config.in_chans in (1, 3) else None)
    for e in entries:
        if e.bands is not None and e.bands != config.in_chans:
            raise ModelConfigError(f"{_where(e)}: scene {e.scene_id!r} has {e.bands} band(s); the model "
                                   f"takes {config.in_chans} (in_chans)")
    run = {"format": RUN_FORMAT, "task": task.name, "model": _model_hash(model, checkpoint),
           "config": config.to_dict(), "chunk": chunk, "options": options}
    # every rank writes its own scenes into OUT: the first holds the lock for the whole run
    first = not split_ranks or worker_info()[0] == 0
    lock = output_lock(out, "prediction directory", error=StoreError) if first else contextlib.nullcontext()
    with lock, writing(out):
        return _predict(model, task, config, entries, out, run, chunk=chunk, device=device, batch_size=batch_size,
                        memory_budget=memory_budget, num_workers=num_workers, prefetch=prefetch,
                        overwrite=overwrite, progress=progress, split_ranks=split_ranks, options=options)


def _predict(model: Any, task: Any, config: Any, entries: list[SceneEntry], out: Path, run: dict[str, Any], *,
             chunk: int, device: Any, batch_size: int | None, memory_budget: int | None, num_workers: int,
             prefetch: int, overwrite: bool, progress: bool, split_ranks: bool,
             options: dict[str, Any]) -> PredictResult:
    """:func:`predict` once its arguments are checked and ``out`` locked."""
    _claim(out, run, overwrite)
    scenes_dir = out / SCENES_DIR
    scenes_dir.mkdir(parents=True, exist_ok=True)

    mine = split_scenes(entries, by_worker=False) if split_ranks else entries
    todo = [e for e in mine if not _scene_done(scenes_dir, e.scene_id)]
    skipped = [e.scene_id for e in mine if e not in todo]
    if skipped and progress:
        print(f"predict: {len(skipped)} scene(s) already done in {out}, skipped: {_names(skipped)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    rows_written, done = 0, []
    for dataset, group in _datasets(todo, config.region, chunk, prefetch, config.passes):
        by_id = {e.scene_id: e for e in group}
        loader = dataset if num_workers == 0 else torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        bar = _bar(sum(len(e.grid) for e in group if e.grid is not None) or None, progress)
        writers: dict[str, Any] = {}
        started: dict[str, float] = {}
        # outputs are written a couple of chunks behind the model (one writer thread, in order)
        with torch.inference_mode(), WriteBehind(depth=2) as behind:
            for c in model.stream(loader, device=device, batch_size=batch_size, memory_budget=memory_budget):
                if c.first:
                    e = by_id[c.scene_id]
                    writers[c.scene_id] = task.scene_writer(scenes_dir, c.scene_id, c.grid, e.georef, **options)
                    started[c.scene_id] = time.perf_counter()
                c.outputs = _to_host(c.outputs)  # the device's memory is not held by the queue
                c.pixels = None
                behind.submit(writers[c.scene_id].write, c)
                bar.update(len(c))
                if c.last:
                    behind.flush()
                    w = writers.pop(c.scene_id)
                    rows = w.finish()
                    _write_csv(_part(scenes_dir, c.scene_id), w.columns, rows)
                    rows_written += len(rows)
                    done.append(c.scene_id)
                    if progress:
                        bar.write(f"{c.scene_id}: {len(c.grid)} regions in "
                                  f"{time.perf_counter() - started.pop(c.scene_id):.1f} s, {w.summary(rows)}")
        bar.close()
    merged = _merge(out, task, [e.scene_id for e in entries], wait_for_ranks=split_ranks)
    if progress:
        print(f"predict: {len(done)} scene(s) predicted, {len(skipped)} skipped; "
              + (f"merged -> {merged}" if merged else "waiting for other ranks' scenes before merging"))
    return PredictResult(out, merged, done, skipped, rows_written, [e.scene_id for e in entries])


def _to_host(out: Any) -> Any:
    """Outputs moved to host memory (tensors, in dicts / lists / tuples), floating ones as float32
    (converted on the device: writers then need no torch op, see the xView3 scene writer)."""
    if isinstance(out, torch.Tensor):
        out = out.detach()
        return (out.float() if out.is_floating_point() else out).cpu()
    if isinstance(out, dict):
        return {k: _to_host(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_host(v) for v in out)
    return out


def list_scenes(sources: Any, region: int, channels: int | None = None) -> list[SceneEntry]:
    """Every scene of ``sources`` (see :func:`predict`), in input order; ids must be unique.
    Image directories and lists become one scene per image; ``channels`` (1 or 3) converts images."""
    from xtstream.data.shards.reader import _expand, group_shards, load_manifest
    from xtstream.data.sources.images import expand_sources
    from xtstream.data.windows import open_windows

    entries: list[SceneEntry] = []
    for src in expand_sources(sources, channels):
        p = Path(src) if isinstance(src, (str, Path)) else None
        if p is not None and ((p.is_dir() and (p / "manifest.json").is_file()) or p.suffix == ".json"):
            for s in load_manifest(p):
                entries.append(SceneEntry(s.scene_id, "shards", s, s.grid, Georef.from_info(s.georef),
                                          len(s.bands) if s.bands else None))
        elif p is not None and (p.suffix == ".tar" or any(ch in str(p) for ch in "*{")):
            for s in group_shards(_expand(str(p))):
                entries.append(SceneEntry(s.scene_id, "shards", s, None))
        else:
            reader = open_windows(src)
            bands, h, w = reader.shape
            entries.append(SceneEntry(reader.scene_id, "source", reader, RegionGrid(h, w, region),
                                      Georef.from_info(reader.georef), bands))
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.scene_id] = seen.get(e.scene_id, 0) + 1
    twice = sorted(k for k, n in seen.items() if n > 1)
    if twice:
        raise StoreError(f"scene id(s) {twice} appear more than once among the sources; each scene's "
                         "outputs are named by its id")
    return entries


def _datasets(entries: list[SceneEntry], region: int, chunk: int, prefetch: int, passes: int = 1
              ) -> Iterable[tuple[Any, list]]:
    """One chunk dataset per run of same-kind entries (node split already done: ``by_node=False``)."""
    from xtstream.data.dataset import SceneChunks
    from xtstream.data.shards.reader import ShardSceneSet
    from xtstream.data.streams import SourceSceneSet

    runs: list[list[SceneEntry]] = []
    for e in entries:
        if runs and runs[-1][0].kind == e.kind:
            runs[-1].append(e)
        else:
            runs.append([e])
    for group in runs:
        if group[0].kind == "shards":
            scenes = ShardSceneSet([e.handle for e in group], by_node=False, region=region, prefetch=prefetch)
        else:
            scenes = SourceSceneSet([e.handle for e in group], region, by_node=False, prefetch=prefetch)
        yield SceneChunks(scenes, chunk, passes), group


def _part(scenes_dir: Path, scene_id: str) -> Path:
    return scenes_dir / f"{scene_key(scene_id)}.csv"


def _where(e: SceneEntry) -> str:
    """The file a scene entry reads (for messages)."""
    handle = e.handle
    path = getattr(handle, "path", None) or getattr(getattr(handle, "source", None), "name", None)
    if path is None and getattr(handle, "urls", None):
        path = Path(handle.urls[0]).parent
    return str(path or e.scene_id)


def _scene_done(scenes_dir: Path, scene_id: str) -> bool:
    """Whether a scene's CSV is there, whole: it matches the SHA-256 recorded before it was written
    (CSVs of runs from before the record are trusted). A damaged one is predicted again."""
    part = _part(scenes_dir, scene_id)
    if not part.is_file():
        return False
    expected = _recorded_sha(part)
    if expected is None or expected == hashlib.sha256(part.read_bytes()).hexdigest():
        return True
    warnings.warn(f"{part}: differs from the SHA-256 recorded when it was written (damaged); predicting "
                  f"scene {scene_id!r} again", stacklevel=3)
    return False


def _recorded_sha(part: Path) -> str | None:
    try:
        return json.loads(part.with_name(part.name + ".json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write atomically (temporary file, fsync, rename): a CSV under its real name is complete."""
    with replacing(path, ".partial") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        # the checksum first: a kill between the two leaves a record without its CSV (the scene is
        # redone), never a CSV a rerun cannot check
        with replacing(path.with_name(path.name + ".json")) as record:
            record.write_text(json.dumps({"sha256": hashlib.sha256(tmp.read_bytes()).hexdigest()}))


def _merge(out: Path, task: Any, scene_ids: list[str], wait_for_ranks: bool = True) -> Path | None:
    """Concatenate the scenes' parts into ``out/{task.predictions_csv}`` once all exist."""
    dist = torch.distributed
    if wait_for_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        if dist.get_rank() != 0:
            return None
    parts = [_part(out / SCENES_DIR, s) for s in scene_ids]
    if not all(p.exists() for p in parts):
        return None
    for p in parts:
        expected = _recorded_sha(p)
        if expected is not None and expected != hashlib.sha256(p.read_bytes()).hexdigest():
            raise StoreError(f"{p}: differs from the SHA-256 recorded when it was written (damaged); rerun "
                             "the same command to predict its scene again")
    target = out / task.predictions_csv
    header: list[str] | None = None
    with replacing(target, f".partial{worker_info()[0]}") as tmp, open(tmp, "w", newline="") as f:
        for p in parts:
            with open(p, newline="") as part:
                reader = csv.reader(part)
                head = next(reader, None)
                if header is None and head is not None:
                    header = head
                    csv.writer(f).writerow(head)
                elif head != header:
                    raise StoreError(f"{p}: columns {head} differ from the other scenes' {header}")
                csv.writer(f).writerows(reader)
        f.flush()
        os.fsync(f.fileno())
    return target


def _claim(out: Path, run: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` this run's, or check that it already is (a resumed or other-rank run)."""
    record = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: exists and is not a directory")
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError as err:
            raise StoreError(f"{record}: unreadable ({err}); move {out} away or pass --overwrite") from None
        differs = sorted(k for k in run if old.get(k) != json.loads(json.dumps(run[k], default=str)))
        if differs and not overwrite:
            raise StoreError(f"{out} holds predictions of another run (differs in {differs}); "
                             "use another --out, or --overwrite to start over")
        if not differs:
            return
    elif out.is_dir() and not holds_only_lock(out):
        raise StoreError(f"{out}: exists, is not empty and holds no {RUN_FILE}: not an xtstream prediction "
                         "directory; choose another --out")
    if overwrite and record.is_file():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    with replacing(record, f".partial{worker_info()[0]}") as tmp:
        tmp.write_text(json.dumps(run, indent=1, sort_keys=True, default=str))


def _clear(out: Path) -> None:
    """Remove what a previous predict run wrote in ``out`` — nothing else."""
    import shutil

    from xtstream.data.prediction_store import prediction_status

    scenes = out / SCENES_DIR
    if scenes.is_dir():
        for p in scenes.iterdir():
            if p.suffix == ".zarr" and prediction_status(p)[0]:
                shutil.rmtree(p)
            elif p.suffix in (".csv", ".tif", ".partial") or p.name.endswith((".csv.partial", ".tif.partial",
                                                                                ".csv.json", ".csv.json.tmp")):
                p.unlink()
    for name in ("detections.csv", "predictions.csv"):  # the merged CSVs tasks write, nothing else
        (out / name).unlink(missing_ok=True)


def _model_hash(model: Any, checkpoint: Path | None) -> str:
    h = hashlib.sha256()
    if checkpoint is not None:
        with open(checkpoint, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _names(ids: list[str], k: int = 5) -> str:
    return ", ".join(ids[:k]) + (f" (+{len(ids) - k} more)" if len(ids) > k else "")


class _NoBar:
    def update(self, n: int) -> None: ...
    def write(self, s: str) -> None: print(s)
    def close(self) -> None: ...


def _bar(total: int | None, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="region")
