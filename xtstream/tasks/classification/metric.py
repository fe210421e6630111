"""Top-k accuracy of scene classification.

Predictions: a CSV ``scene_id,top1,top2,...,topK`` — each scene's classes, best first (names or
indices, as the labels CSV writes them); ``K >= 1`` columns, named ``top1`` to ``topK`` in order.
Ground truth: the task's ``scene_id,label`` CSV, or an image list with a ``label`` column
(``path[,scene_id],label``; scene id = ``scene_id``, else the file stem of ``path``).

``top-k = |{scenes whose label is among top1..topk}| / |scenes|`` over the ground-truth scenes;
with fewer than ``k`` columns, top-k uses all of them (and says so in ``columns``). Every
ground-truth scene needs exactly one prediction row and every prediction a ground-truth scene:
anything else is a :class:`LabelError` naming the file and line, since a silently unscored scene
changes the score.

>>> topk_from_rows({"a": ["cat", "dog"]}, {"a": "dog"})   # doctest: +NORMALIZE_WHITESPACE
{'top1': 0.0, 'top5': 1.0, 'scenes': 1, 'columns': 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from xtstream.errors import LabelError
from xtstream.tasks.base import csv_rows


def _norm(label: str) -> str:
    """``"3.0"`` and ``"3"`` name the same class index; names pass through stripped."""
    s = label.strip()
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else s


def topk_from_rows(preds: Mapping[str, Sequence[str]], gt: Mapping[str, str],
                   ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """``{"top1", "top5", "scenes", "columns"}`` from ``{scene: [best, second, ...]}`` and
    ``{scene: label}`` (every ground-truth scene must be predicted)."""
    missing = sorted(set(gt) - set(preds))
    if missing:
        raise LabelError(f"no prediction for ground-truth scene(s) {missing}")
    columns = min((len(v) for v in preds.values()), default=0)
    out: dict[str, Any] = {}
    for k in ks:
        hits = sum(_norm(gt[s]) in {_norm(c) for c in preds[s][:k]} for s in gt)
        out[f"top{k}"] = hits / len(gt) if gt else 0.0
    out.update(scenes=len(gt), columns=columns)
    return out


def topk(pred_csv: str | Path, gt_csv: str | Path, ks: Sequence[int] = (1, 5), *,
         scene_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Top-k accuracies of a ``scene_id,top1..topK`` predictions CSV against ``scene_id,label`` (or
    an image list with labels); ``scene_ids``: only these ground-truth scenes are scored."""
    from xtstream.tasks.classification.task import label_rows

    pred_csv, gt_csv = Path(pred_csv), Path(gt_csv)
    gt: dict[str, str] = {}
    keep = set(scene_ids) if scene_ids is not None else None
    for line, sid, label in label_rows(gt_csv):
        if keep is not None and sid not in keep:
            continue
        if not sid or not label:
            raise LabelError(f"{gt_csv} line {line}: empty scene_id or label")
        if sid in gt:
            raise LabelError(f"{gt_csv} line {line}: a second label for scene {sid!r}")
        gt[sid] = label
    preds: dict[str, list[str]] = {}
    cols: list[str] | None = None
    for line, row in csv_rows(pred_csv, ["scene_id", "top1"]):
        if cols is None:  # top1..topK, contiguous: a gap would make "top-5" mean something else
            cols = []
            while f"top{len(cols) + 1}" in row:
                cols.append(f"top{len(cols) + 1}")
        sid = (row["scene_id"] or "").strip()
        if sid not in gt:
            raise LabelError(f"{pred_csv} line {line}: scene {sid!r} is not in the ground truth {gt_csv}")
        if sid in preds:
            raise LabelError(f"{pred_csv} line {line}: a second prediction for scene {sid!r}")
        ranked = [(row[c] or "").strip() for c in cols]
        if not all(ranked):
            raise LabelError(f"{pred_csv} line {line}: empty class in {cols}")
        preds[sid] = ranked
    missing = sorted(set(gt) - set(preds))
    if missing:
        raise LabelError(f"{pred_csv}: no prediction for ground-truth scene(s) {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''} of {gt_csv}")
    return topk_from_rows(preds, gt, ks)
