"""The task interface and its registry: what a region is labelled with, and how a head trains on it.

A task owns everything specific to one kind of label: parsing a labels file into per-scene label
objects, turning them into per-region targets, and the loss of its head's outputs against them.
The data side (ingest, shards, readers) only moves named arrays around, so a new task never
touches the shard format or the sample type.

>>> @register_task                                              # doctest: +SKIP
... class Segmentation(Task):
...     name, head = "segmentation", "my_seg_head"
...     def read_labels(self, path, *, scene_ids=None, shapes=None, spec=None): ...
...     def loss(self, chunk): ...

Per-scene label objects only need ``region_targets(grid, index) -> (targets, objects)`` (what
:func:`xtstream.data.streams.open_scene` and the shard writer call through the task) and
``len()`` (how many labelled things the scene has, for the shard manifest).
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from xtstream._runtime.registry import Registry
from xtstream.errors import LabelError, TaskError

if TYPE_CHECKING:  # the data side must not import torch
    from torch import Tensor

    from xtstream.data.chunk import RegionChunk
    from xtstream.data.grid import RegionGrid


class Task:
    """Base class of tasks. Subclasses set ``name`` and ``head`` and implement :meth:`read_labels`
    and :meth:`loss`; :meth:`pack_targets` / :meth:`unpack_targets` only where a task stores its
    targets in shards differently from how it trains on them."""

    #: the registry name, also recorded in shards written for the task
    name: str = ""
    #: the registered head (:func:`xtstream.models.heads.register_head`) this task trains
    head: str = ""

    def read_labels(self, path: str | Path, *, scene_ids: Iterable[str] | None = None,
                    shapes: Mapping[str, tuple[int, int]] | None = None, spec: Any = None) -> dict[str, Any]:
        """``{scene_id: labels}`` from a labels file; every id in ``scene_ids`` gets an entry.
        ``shapes`` (``{scene_id: (H, W)}``) lets a task check labels against their scene;
        ``spec``: a dataset spec (or its name) whose ``labels:`` block describes the file."""
        raise NotImplementedError

    def region_targets(self, labels: Any, grid: "RegionGrid", index: int
                       ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """``({name: (R, R) map or () scalar}, objects inside)`` of region ``index``."""
        return labels.region_targets(grid, index)

    def pack_targets(self, labels: Any, grid: "RegionGrid", index: int, targets: dict[str, np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a shard stores of region ``index``: ``({name: array}, JSON-ready extra)``; each
        array becomes ``KEY.<name>.npy`` (in its dtype), ``extra`` the sample's ``labels`` record."""
        return targets, {}

    def unpack_targets(self, stored: dict[str, np.ndarray], objects: list[dict[str, Any]],
                       extra: dict[str, Any], grid: "RegionGrid", index: int) -> dict[str, np.ndarray]:
        """Inverse of :meth:`pack_targets` at read time: the targets :meth:`region_targets` gave."""
        return stored

    def loss(self, chunk: "RegionChunk") -> tuple["Tensor", dict[str, float]]:
        """``(scalar, {part: value})``: the loss of ``chunk.outputs`` against ``chunk.targets``
        (and ``chunk.info``); the default loss of :func:`xtstream.engine.train_chunks`."""
        raise NotImplementedError

    #: the merged CSV :func:`xtstream.predict` writes (one part per scene, merged in scene order)
    predictions_csv: str = "predictions.csv"

    def scene_writer(self, out_dir: Path, scene_id: str, grid: "RegionGrid", georef: Any = None,
                     **options: Any) -> Any:
        """What :func:`xtstream.predict` writes a scene with: an object with ``columns`` (the CSV
        header), ``write(chunk)`` (each chunk with ``outputs``, in order), ``finish() -> rows``
        (``[{column: value}]``, after the last chunk; any files under ``out_dir`` complete by then)
        and ``summary(rows) -> str``. ``georef``: the scene's :class:`~xtstream.data.georef.Georef`;
        ``options``: the task's prediction options (thresholds, ...)."""
        raise NotImplementedError(f"task {self.name!r} cannot predict yet (no scene_writer)")

    #: the key of :meth:`score`'s result that validation ranks checkpoints by (higher is better)
    primary_metric: str = ""

    def score(self, predictions: str | Path, labels: str | Path, *, scene_ids: Iterable[str] | None = None,
              **options: Any) -> dict[str, Any]:
        """The task's metric of a predictions CSV (what :func:`xtstream.predict` merged) against a
        labels file: ``{component: value}`` with :attr:`primary_metric` among them. ``scene_ids``:
        score only these scenes' labels (e.g. the held-out scenes of a labels file of all)."""
        raise NotImplementedError(f"task {self.name!r} has no metric")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, head={self.head!r})"


#: name -> task class; instances are made by :func:`get_task` (with the task's options)
#: name -> Task subclass; the built-in tasks' modules are imported on first lookup (keeps torch and
#: the task modules out of a plain ``import xtstream``)
TASKS: Registry[type[Task]] = Registry("task", TaskError, ["xtstream.tasks.xview3.task",
                                                          "xtstream.tasks.classification.task"])


def csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a labels CSV whose header (stripped of spaces) has every column of
    ``required``; a file that cannot be opened or lacks columns raises :class:`LabelError` naming it."""
    try:
        f = open(path, newline="")
    except OSError as err:
        raise LabelError(f"{path}: cannot open labels CSV: {err}") from err
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise LabelError(f"{path}: labels CSV lacks required column(s) {missing} (has {header})")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, row


def unmatched_ids(unlabelled: Iterable[str], others: Iterable[str], matched: int) -> str | None:
    """What is wrong with a labels file whose scene ids do not match the stores', or ``None``.

    ``unlabelled``: scenes being written that got no row; ``others``: ids of the file that match
    no such scene; ``matched``: how many scenes did get rows. A scene id of the file that differs
    from an unlabelled scene's only by case, or closely (``difflib``), is a mistake, never a
    coincidence: it is named with its near match. So is a file none of whose ids matches — every
    scene would be written with zero objects.
    """
    others = sorted(set(others))
    if not others:
        return None
    near = {}
    folded = {o.casefold(): o for o in others}
    for sid in sorted(unlabelled):
        close = ([folded[sid.casefold()]] if sid.casefold() in folded else []) + \
            difflib.get_close_matches(sid, others, n=2, cutoff=0.8)
        if close:
            near[sid] = list(dict.fromkeys(close))
    if near:
        pairs = "; ".join(f"{', '.join(repr(c) for c in cs)} for scene {sid!r}" for sid, cs in list(near.items())[:5])
        return (f"scene id(s) match no store but nearly match one: {pairs} (ids must match exactly, case "
                "included); fix the labels file or the stores' scene ids")
    if matched == 0:
        shown = ", ".join(repr(o) for o in others[:5]) + (", ..." if len(others) > 5 else "")
        wanted = ", ".join(repr(s) for s in sorted(unlabelled)[:5])
        return (f"none of its {len(others)} scene id(s) ({shown}) matches a store's scene id ({wanted}): "
                "every region would be written with zero objects")
    return None


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a :class:`Task` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise TaskError(f"register_task takes a Task subclass with a name, got {cls!r}")
    return TASKS.add(cls.name, cls)


def list_tasks() -> list[str]:
    """Names of the registered tasks (built-ins and plug-ins)."""
    return TASKS.names()


def get_task(task: str | Task, **options: Any) -> Task:
    """The task registered as ``task`` (an instance made with ``options``); an instance passes through."""
    if isinstance(task, Task):
        if options:
            raise TaskError(f"options {sorted(options)} given with an already-made task {task!r}")
        return task
    return TASKS.get(task)(**options)


def task_for_head(head: str) -> Task:
    """The task that trains the head registered as ``head`` (its default options)."""
    for name in TASKS.names():
        if TASKS.get(name).head == head:
            return TASKS.get(name)()
    raise TaskError(f"no registered task trains head {head!r} (tasks: "
                    f"{ {n: c.head for n, c in TASKS.entries.items()} }); pass loss_fn or register a task")
