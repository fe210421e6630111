"""Scene classification: one class per scene, trained on the ``classification`` head's running logits.

Labels are a CSV with columns ``scene_id,label``, or an image list (``path[,scene_id],label``, see
:mod:`xtstream.data.sources.images`: the scene id is the ``scene_id`` cell, else the file stem of
``path`` — the id the image's scene gets), so one file lists the images and their classes;
``label`` is a class index or, when the task is made with ``classes=[...]``, one of those names.
Every region of a scene carries the scene's class as a scalar target ``label`` (int64 ``()``; a
chunk stacks them to ``(n,)``), so the label travels
with the regions through any reader and any shard — 1 KiB of tar per region — and no reader needs
scene-level metadata. A chunk without that target may carry ``info["label"]`` instead.

The loss of a chunk is the cross-entropy of the scene's logits *so far* ``chunk.outputs`` ``(1, K)``
against its class: the head pools every chunk seen, so each chunk's step trains the scene mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from xtstream.data.grid import RegionGrid
from xtstream.errors import LabelError
from xtstream.tasks.base import Task, csv_rows, register_task, unmatched_ids

if TYPE_CHECKING:
    from torch import Tensor

    from xtstream.data.chunk import RegionChunk

#: the scalar target every region of a labelled scene carries
TARGET = "label"


@dataclass(frozen=True)
class SceneClass:
    """The class of one scene: ``index`` into the classes, ``name`` if classes are named."""

    scene_id: str
    index: int
    name: str | None = None

    def __len__(self) -> int:
        return 1  # one labelled thing per scene (the shard manifest's "objects")

    def region_targets(self, grid: RegionGrid, index: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """``({"label": int64 ()}, [])`` — the scene's class, the same in every region."""
        return {TARGET: np.array(self.index, dtype=np.int64)}, []


@register_task
class ClassificationTask(Task):
    """One class per scene from a ``scene_id,label`` CSV; the ``classification`` head; cross-entropy.

    ``classes``: class names in index order; a label may then be a name or an index.
    """

    name = "classification"
    head = "classification"

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        self.classes = list(classes) if classes is not None else None

    def read_labels(self, path: str | Path, *, scene_ids: Iterable[str] | None = None,
                    shapes: Mapping[str, tuple[int, int]] | None = None, spec: Any = None
                    ) -> dict[str, SceneClass]:
        """``{scene_id: SceneClass}`` from a ``scene_id,label`` CSV or an image list with a
        ``label`` column. Every scene of ``scene_ids`` must have exactly one row (a scene without a
        class cannot be trained on); other rows are ignored. Raises :class:`LabelError` naming the
        file and line."""
        path = Path(path)
        wanted = set(scene_ids) if scene_ids is not None else None
        found: dict[str, SceneClass] = {}
        others: set[str] = set()
        for line, sid, text in label_rows(path):
            if wanted is not None and sid not in wanted:
                others.add(sid)
                continue
            if sid in found:
                raise LabelError(f"{path} line {line}: a second label for scene {sid!r}")
            found[sid] = self._parse(sid, text, f"{path} line {line}")
        lacking = sorted((wanted or set()) - set(found))
        if lacking:
            problem = unmatched_ids(lacking, others, len(found))
            raise LabelError(f"{path}: no label for scene(s) {lacking}" + (f"; {problem}" if problem else ""))
        return found

    def _parse(self, scene_id: str, text: str, where: str) -> SceneClass:
        """A label cell → :class:`SceneClass`: a known class name, or an index in range."""
        if self.classes is not None and text in self.classes:
            return SceneClass(scene_id, self.classes.index(text), text)
        try:
            index = int(text)
        except ValueError:
            known = f"one of {self.classes} or " if self.classes else ""
            raise LabelError(f"{where}: label {text!r} is not {known}a class index") from None
        if index < 0 or (self.classes is not None and index >= len(self.classes)):
            raise LabelError(f"{where}: class index {index} is out of range"
                             + (f" (classes {self.classes})" if self.classes else ""))
        return SceneClass(scene_id, index, self.classes[index] if self.classes else None)

    primary_metric = "top1"

    def score(self, predictions: str | Path, labels: str | Path, *, scene_ids: Iterable[str] | None = None,
              **options: Any) -> dict[str, Any]:
        """Top-1/top-5 accuracy (:func:`xtstream.tasks.classification.metric.topk`)."""
        from xtstream.tasks.classification.metric import topk

        return topk(predictions, labels, scene_ids=scene_ids, **options)

    def scene_writer(self, out_dir: Path, scene_id: str, grid: RegionGrid, georef: Any = None,
                     top_k: int = 5) -> "ClassificationSceneWriter":
        """Writes a scene's ``top1..topK`` classes (names when the task has ``classes``) and their
        probabilities ``prob1..probK``, from the logits after the scene's last chunk."""
        return ClassificationSceneWriter(scene_id, top_k, self.classes)

    def loss(self, chunk: "RegionChunk") -> tuple["Tensor", dict[str, float]]:
        """Cross-entropy of ``chunk.outputs`` ``(1, K)`` against the scene's class."""
        import torch
        import torch.nn.functional as F

        logits = chunk.outputs
        label = chunk.targets.get(TARGET, chunk.info.get(TARGET))
        if label is None:
            raise LabelError(f"scene {chunk.scene_id!r}, regions {chunk.indices}: no {TARGET!r} target or "
                             f"info[{TARGET!r}] to train the classification head on")
        # every region carries the scene's class; the head's logits are one row per scene
        target = torch.as_tensor(label).reshape(-1)[:1].to(logits.device, torch.long)
        loss = F.cross_entropy(logits.float(), target.expand(logits.shape[0]))
        return loss, {"cross_entropy": float(loss.detach())}


def label_rows(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """``(line, scene_id, label)`` of a ``scene_id,label`` CSV or an image list
    (``path[,scene_id],label``: the id is the ``scene_id`` cell, else the file stem of ``path``,
    as :func:`xtstream.data.sources.images.list_images` names the image's scene). Cells are
    stripped; a row without an id raises :class:`LabelError` naming the file and line."""
    from xtstream.data.sources.images import listing_scene_id

    path = Path(path)
    for line, row in csv_rows(path, [TARGET]):
        if "scene_id" not in row and "path" not in row:
            raise LabelError(f"{path}: labels CSV needs a scene_id or a path column beside {TARGET!r} "
                             f"(has {list(row)})")
        sid = listing_scene_id(row)
        if not sid:
            raise LabelError(f"{path} line {line}: empty scene_id (and no path to name the scene by)")
        yield line, sid, (row[TARGET] or "").strip()


class ClassificationSceneWriter:
    """One CSV row per scene: the softmax of the head's pooled logits after the last chunk (the head
    pools every chunk seen, so the last chunk's ``(1, K)`` outputs are the whole scene's)."""

    def __init__(self, scene_id: str, top_k: int = 5, classes: Sequence[str] | None = None) -> None:
        if top_k < 1:
            raise LabelError(f"top_k must be at least 1, got {top_k}")
        self.scene_id, self.top_k, self.classes = scene_id, top_k, classes
        self.columns: list[str] = []  # set by finish(): top1..topK with K = min(top_k, classes)
        self.logits = None

    def write(self, chunk: "RegionChunk") -> None:
        self.logits = chunk.outputs.detach().float().reshape(-1).cpu()

    def finish(self) -> list[dict[str, Any]]:
        import torch

        probs = torch.softmax(self.logits, dim=0)
        k = min(self.top_k, probs.numel())
        p, idx = torch.topk(probs, k)
        self.columns = ["scene_id"] + [f"top{i}" for i in range(1, k + 1)] + [f"prob{i}" for i in range(1, k + 1)]
        row: dict[str, Any] = {"scene_id": self.scene_id}
        for i in range(k):
            row[f"top{i + 1}"] = self.classes[int(idx[i])] if self.classes else int(idx[i])
            row[f"prob{i + 1}"] = round(float(p[i]), 6)
        return [row]

    def summary(self, rows: list[dict[str, Any]]) -> str:
        return f"top1 {rows[0]['top1']} ({rows[0]['prob1']:.3f})"
