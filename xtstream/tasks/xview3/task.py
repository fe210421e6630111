"""The xView3 task: vessel labels → five target maps per region, trained by the ``xview3`` head.

In shards the two maps that cannot be redrawn cheaply are stored as crops — ``vessel`` (uint8)
and ``centre`` (float16, half the bytes, ~1e-3 off) — and the attribute maps (``length``,
``is_vessel``, ``is_fishing``) are redrawn at read time from the stored objects, inside and near
the region (the ``nearby`` list), in the same order as the direct path draws them: both paths give
the same targets. Torch loads only when :meth:`XView3Task.loss` is first called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from xtstream.data.grid import RegionGrid
from xtstream.errors import TaskError
from xtstream.tasks.base import Task, register_task
from xtstream.tasks.xview3.labels import TARGET_NAMES, SceneLabels, rasterise, read_labels

if TYPE_CHECKING:
    from torch import Tensor

    from xtstream.data.chunk import RegionChunk

#: the crops a shard stores, in the dtype it stores them in, and the dtype they are read back as
STORED = {"vessel": (np.uint8, np.uint8), "centre": (np.float16, np.float32)}
#: the maps redrawn from the stored objects when a shard is read
REDRAWN = ("length", "is_vessel", "is_fishing")


@register_task
class XView3Task(Task):
    """xView3 SAR vessel detection: labels CSV → ``vessel``, ``centre``, ``length``, ``is_vessel``,
    ``is_fishing`` maps ``(R, R)`` per region; the ``xview3`` head; :func:`xview3_chunk_loss`.

    ``weights``: the loss's term weights ``{name: weight}`` (names of the
    head's outputs, :data:`~xtstream.tasks.xview3.labels.TARGET_NAMES`; missing ones 1.0), e.g.
    ``get_task("xview3", weights={"length": 0.5})``. ``centre_loss``: ``"focal"`` (CenterNet's,
    the default) or ``"mse"`` (:func:`~xtstream.tasks.xview3.loss.centre_focal_loss`).
    """

    name = "xview3"
    head = "xview3"

    def __init__(self, weights: Mapping[str, float] | None = None, centre_loss: str = "focal") -> None:
        # checked here, not at the first loss, so a misspelt key fails when the task is made
        # (against the labels' map names, which are the head's outputs: no torch import)
        for key in weights or {}:
            if key not in TARGET_NAMES:
                raise TaskError(f"xview3 task: loss weight for {key!r}; expected one of {list(TARGET_NAMES)}")
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        if centre_loss not in ("focal", "mse"):
            raise TaskError(f"xview3 task: centre_loss {centre_loss!r}; expected 'focal' or 'mse'")
        self.centre_loss = centre_loss

    def read_labels(self, path: str | Path, *, scene_ids: Iterable[str] | None = None,
                    shapes: Mapping[str, tuple[int, int]] | None = None, spec: Any = None
                    ) -> dict[str, SceneLabels]:
        """See :func:`xtstream.tasks.xview3.labels.read_labels`."""
        return read_labels(path, scene_ids=scene_ids, shapes=shapes, spec=spec)

    def pack_targets(self, labels: SceneLabels, grid: RegionGrid, index: int,
                     targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The ``vessel`` / ``centre`` crops, and ``{radius, sigma, nearby}`` to redraw the rest."""
        stored = {name: targets[name].astype(dtype) for name, (dtype, _) in STORED.items()}
        nearby = labels.region_objects(grid, index)[1]
        return stored, {"radius": labels.radius, "sigma": labels.sigma, "nearby": nearby}

    def unpack_targets(self, stored: dict[str, np.ndarray], objects: list[dict[str, Any]],
                       extra: dict[str, Any], grid: RegionGrid, index: int) -> dict[str, np.ndarray]:
        """Stored crops in their training dtypes, plus the attribute maps drawn from the objects."""
        valid = grid.valid_window(index)
        targets = rasterise(list(objects) + list(extra.get("nearby") or []), grid.region,
                            (valid.height, valid.width), radius=int(extra["radius"]),
                            sigma=float(extra["sigma"]), names=REDRAWN)
        for name, (_, dtype) in STORED.items():
            if name not in stored:
                raise KeyError(f"labelled sample has no .{name}.npy")
            targets[name] = stored[name].astype(dtype)
        return {**stored, **targets}

    predictions_csv = "detections.csv"
    primary_metric = "aggregate"

    def score(self, predictions: str | Path, labels: str | Path, *, scene_ids: Iterable[str] | None = None,
              shoreline_dir: str | Path | None = None, **options: Any) -> dict[str, Any]:
        """The xView3 metric (:func:`xtstream.tasks.xview3.metric.score`; ``options`` go there) of a
        detections CSV against a labels CSV; shorelines from ``shoreline_dir`` when given (numpy
        ``.npy`` files, never unpickled here)."""
        from xtstream.tasks.xview3.metric import (check_scenes, read_ground_truth, read_predictions,
                                                  read_shorelines, score)

        gt, preds = read_ground_truth(labels), read_predictions(predictions)
        if scene_ids is not None:
            keep = set(scene_ids)
            gt = [g for g in gt if g["scene_id"] in keep]
        check_scenes(preds, gt, predictions)
        shorelines = None
        if shoreline_dir is not None:
            shorelines, _ = read_shorelines(shoreline_dir, {g["scene_id"] for g in gt})
        return score(preds, gt, shorelines, **options)

    def scene_writer(self, out_dir: Path, scene_id: str, grid: RegionGrid, georef: Any = None,
                     **options: Any) -> Any:
        """:class:`~xtstream.tasks.xview3.predict.XView3SceneWriter` (options: ``threshold``,
        ``min_distance``, ``vessel_threshold``, ``fishing_threshold``, ``geotiff``)."""
        from xtstream.tasks.xview3.predict import XView3SceneWriter

        return XView3SceneWriter(out_dir, scene_id, grid, georef, **options)

    def loss(self, chunk: "RegionChunk") -> tuple["Tensor", dict[str, float]]:
        """:func:`~xtstream.tasks.xview3.loss.xview3_chunk_loss` with the task's ``weights``."""
        from xtstream.tasks.xview3.loss import xview3_chunk_loss

        return xview3_chunk_loss(chunk, self.weights, self.centre_loss)
