"""The xView3 metric, as the challenge's reference scorer (DIUx-xView ``xview3-reference``,
``metric.py``: ``compute_loc_performance``, ``get_shore_preds``, ``compute_vessel_class_performance``,
``compute_fishing_class_performance``, ``compute_length_performance``, ``calculate_p_r_f``,
``aggregate_f``, ``score``) defines it.

Formulas (``d(p, g)`` = Euclidean pixel distance × ``pixel_size_m``, 10 m for xView3 GRD scenes):

* **Matching**, per scene: Hungarian assignment (min total cost) over *all* prediction/ground-truth
  pairs, cost ``d(p, g)``, or a huge constant where ``d > tolerance`` (the reference's
  ``costly_dist`` option, used for the final leaderboard); a matched pair is a true positive only
  if ``d < tolerance`` (strictly; ``tolerance`` = 200 m). Unmatched predictions are false
  positives, unmatched ground truth false negatives.
* **F1** = ``2PR / (P + R)``, ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)``; a zero denominator
  gives 0 (``calculate_p_r_f``). ``F1_loc`` sums TP/FP/FN over every ground-truth scene.
* **F1_shore**: per scene, ground truth with ``distance_from_shore_km <= shore_tolerance`` (2 km)
  against predictions whose distance to the nearest point of ``{scene_id}_shoreline.npy`` is
  ``<= shore_tolerance + tolerance`` (2 km + 200 m; the reference widens the prediction side so that
  an object just inside 2 km detected a little farther out still counts). As in the reference, a
  scene adds counts only when it has both close-to-shore ground truth and close-to-shore
  predictions, and F1_shore is 0 when no scene that has predictions has close-to-shore ground truth.
  A scene without a shoreline file is left out of F1_shore (a warning names them, once).
* **F1_vessel**: over true-positive pairs whose ground-truth ``is_vessel`` is known (empty = NaN is
  skipped), positive class ``is_vessel = True``.
* **F1_fishing**: the same over true-positive pairs whose ground truth is a vessel and whose
  ground-truth ``is_fishing`` is known.
* **Length score** = ``1 − min(mean(|min(p, 500) − min(g, 500)| / min(g, 500)), 1)`` over
  true-positive pairs with a known ground-truth length (lengths capped at 500 m as the challenge's
  final scorer did); 0 when there is no such pair.
* **Aggregate** = ``F1_loc × (1 + length + F1_vessel + F1_fishing + F1_shore) / 5``.
* **Confidence**: ground truth is scored on HIGH and MEDIUM objects unless ``score_all``;
  ``drop_low`` first removes predictions that the matching above pairs (within tolerance) with a
  LOW-confidence object, so that finding a doubtful object costs nothing.

Two deliberate differences from the reference code, both at edges: a prediction exactly on a
shoreline point is close to shore (the reference's sparse distance matrix drops zero distances and
with them such a prediction), and assignment ties between equal-cost matchings may resolve
differently from ``scipy.optimize.linear_sum_assignment`` (same totals, possibly other pairs).

>>> gt = [dict(scene_id="s", detect_scene_row=10.0, detect_scene_column=10.0, is_vessel=1.0,
...            is_fishing=0.0, vessel_length_m=50.0, distance_from_shore_km=9.0, confidence="HIGH")]
>>> pred = [dict(scene_id="s", detect_scene_row=11.0, detect_scene_column=10.0, is_vessel=1.0,
...              is_fishing=0.0, vessel_length_m=50.0)]
>>> score(pred, gt)["F1_loc"]
1.0
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xtstream.errors import LabelError
from xtstream.tasks.base import csv_rows

PRED_COLUMNS = ["scene_id", "detect_scene_row", "detect_scene_column", "is_vessel", "is_fishing",
                "vessel_length_m"]
GT_COLUMNS = PRED_COLUMNS + ["distance_from_shore_km", "confidence"]
CONFIDENCES = ("HIGH", "MEDIUM", "LOW")
#: lengths are capped here before the length score (the challenge's final scorer)
LENGTH_CAP_M = 500.0

Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------- matching
def _hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of a ``(n, m)`` cost matrix: ``min(n, m)`` ``(row, col)`` pairs.

    The O(n² m) shortest-augmenting-path Hungarian algorithm with potentials (Kuhn–Munkres as in
    e-maxx / Jonker–Volgenant); here instead of scipy so the metric adds no dependency."""
    transposed = cost.shape[0] > cost.shape[1]
    a = cost.T if transposed else cost
    n, m = a.shape
    if n == 0:
        return []
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) assigned to column j; column 0 is a sentinel
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = a[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta  # p[used] includes p[0] == i
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:  # augment along the alternating path
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j] != 0]
    return sorted((c, r) for r, c in pairs) if transposed else sorted(pairs)


def match_scene(pred_rc: np.ndarray, gt_rc: np.ndarray, *, tolerance_m: float = 200.0,
                pixel_size_m: float = 10.0) -> list[tuple[int, int, float]]:
    """True-positive pairs ``(pred index, gt index, distance m)`` of one scene.

    ``pred_rc`` ``(P, 2)`` and ``gt_rc`` ``(G, 2)``: row/column pixels. Hungarian assignment over all
    pairs (beyond-tolerance pairs cost more than all in-tolerance pairs together), then a pair
    counts only if its distance is ``< tolerance_m``. The assignment is solved per connected
    component of the within-tolerance pair graph: a far pair costs the same whichever it is, so
    components are independent and the optimum is the reference's, at a fraction of the cost on a
    whole scene."""
    pred_rc = np.asarray(pred_rc, dtype=np.float64).reshape(-1, 2)
    gt_rc = np.asarray(gt_rc, dtype=np.float64).reshape(-1, 2)
    if len(pred_rc) == 0 or len(gt_rc) == 0:
        return []
    dist = np.sqrt(((pred_rc[:, None, :] - gt_rc[None, :, :]) ** 2).sum(-1)) * pixel_size_m  # (P, G)
    near = dist <= tolerance_m  # the reference makes only d > tolerance costly
    n_p = len(pred_rc)
    # connected components over P + G nodes by union-find on the near pairs
    parent = list(range(n_p + len(gt_rc)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(*np.nonzero(near)):
        parent[find(int(i))] = find(n_p + int(j))
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(n_p):
        if near[i].any():
            groups.setdefault(find(i), ([], []))[0].append(i)
    for j in range(len(gt_rc)):
        if near[:, j].any():
            groups.setdefault(find(n_p + j), ([], []))[1].append(j)
    out = []
    for ps, gs in groups.values():
        sub = dist[np.ix_(ps, gs)]
        # far pairs cost more than any matching of near ones, yet stay small enough that the
        # potentials keep the distances' precision (the reference's 9999999 × 10 would not here)
        far = tolerance_m * (min(sub.shape) + 1) + 1.0
        cost = np.where(sub <= tolerance_m, sub, far)
        for r, c in _hungarian(cost):
            if sub[r, c] < tolerance_m:
                out.append((ps[r], gs[c], float(sub[r, c])))
    return sorted(out)


def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """``(precision, recall, F1)``; a zero denominator gives 0, as ``calculate_p_r_f``."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f


def length_score(pred_m: Iterable[float], gt_m: Iterable[float], cap_m: float = LENGTH_CAP_M) -> float:
    """``1 − min(mean(|min(p, cap) − min(g, cap)| / min(g, cap)), 1)`` over pairs with a known
    (non-NaN) ground-truth length; 0 without any."""
    errors = [abs(min(p, cap_m) - min(g, cap_m)) / min(g, cap_m)
              for p, g in zip(pred_m, gt_m) if not math.isnan(g)]
    return 1.0 - min(sum(errors) / len(errors), 1.0) if errors else 0.0


def _class_f1(pairs: Iterable[tuple[float, float]]) -> tuple[float, float, float]:
    """F1 of binary ``(prediction, ground truth)`` pairs, positive = 1; NaN ground truth skipped."""
    tp = fp = fn = 0
    for p, g in pairs:
        if math.isnan(g):
            continue
        tp += int(p == 1 and g == 1)
        fp += int(p == 1 and g == 0)
        fn += int(p != 1 and g == 1)
    return f1(tp, fp, fn)


def shore_distance_m(points_rc: np.ndarray, shoreline_rc: np.ndarray, pixel_size_m: float = 10.0,
                     block: int = 1 << 20) -> np.ndarray:
    """``(P,)`` distance in metres from each ``(P, 2)`` row/col point to the nearest of ``(N, 2)``
    shoreline points (inf without any); blocks bound the ``P × N`` memory."""
    points_rc = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    best = np.full(len(points_rc), np.inf)
    if len(points_rc) == 0:
        return best
    step = max(1, block // len(points_rc))
    for s in range(0, len(shoreline_rc), step):
        c = shoreline_rc[s: s + step]
        best = np.minimum(best, np.sqrt(((points_rc[:, None, :] - c[None]) ** 2).sum(-1)).min(axis=1))
    return best * pixel_size_m


# ------------------------------------------------------------------------------------------- score
def _rc(rows: Sequence[Row]) -> np.ndarray:
    return np.array([[r["detect_scene_row"], r["detect_scene_column"]] for r in rows],
                    dtype=np.float64).reshape(-1, 2)


def _by_scene(rows: Sequence[Row]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault(r["scene_id"], []).append(i)
    return out


def drop_low_matched(preds: Sequence[Row], gt: Sequence[Row], *, tolerance_m: float = 200.0,
                     pixel_size_m: float = 10.0) -> list[Row]:
    """``preds`` less those matched (within tolerance, against all ground truth of their scene) to a
    LOW-confidence object (the reference's ``drop_low_confidence_preds``)."""
    drop: set[int] = set()
    gt_scenes = _by_scene(gt)
    for scene, pi in _by_scene(preds).items():
        gi = gt_scenes.get(scene, [])
        for a, b, _ in match_scene(_rc([preds[i] for i in pi]), _rc([gt[j] for j in gi]),
                                   tolerance_m=tolerance_m, pixel_size_m=pixel_size_m):
            if gt[gi[b]]["confidence"] == "LOW":
                drop.add(pi[a])
    return [r for i, r in enumerate(preds) if i not in drop]


def score(preds: Sequence[Row], gt: Sequence[Row], shorelines: Mapping[str, np.ndarray] | None = None, *,
          tolerance_m: float = 200.0, shore_tolerance_km: float = 2.0, pixel_size_m: float = 10.0,
          score_all: bool = False, drop_low: bool = False) -> dict[str, Any]:
    """Every component of the xView3 metric (formulas in the module docstring).

    Parameters
    ----------
    preds, gt
        Rows as :func:`read_predictions` / :func:`read_ground_truth` give them: ``is_vessel`` and
        ``is_fishing`` as 1.0/0.0 (NaN = unknown, ground truth only), lengths in metres.
    shorelines
        ``{scene_id: (N, 2) row/col shoreline points}``; a ground-truth scene missing here is left
        out of F1_shore and listed under ``shore_skipped_scenes``. ``None``: no shore score (0).

    Returns
    -------
    ``{"aggregate", "F1_loc", "F1_shore", "F1_vessel", "F1_fishing", "length_score",
    "precision_loc", "recall_loc", "precision_shore", "recall_shore", "tp", "fp", "fn",
    "shore_skipped_scenes"}``
    """
    if not score_all:
        if drop_low:
            preds = drop_low_matched(preds, gt, tolerance_m=tolerance_m, pixel_size_m=pixel_size_m)
        gt = [g for g in gt if g["confidence"] in ("HIGH", "MEDIUM")]
    gt_scenes, pred_scenes = _by_scene(gt), _by_scene(preds)
    pairs: list[tuple[int, int]] = []
    fp = fn = 0
    for scene, gi in gt_scenes.items():
        pi = pred_scenes.get(scene, [])
        m = match_scene(_rc([preds[i] for i in pi]), _rc([gt[j] for j in gi]),
                        tolerance_m=tolerance_m, pixel_size_m=pixel_size_m)
        pairs += [(pi[a], gi[b]) for a, b, _ in m]
        fp += len(pi) - len(m)
        fn += len(gi) - len(m)
    p_loc, r_loc, f_loc = f1(len(pairs), fp, fn)

    skipped: list[str] = []
    p_sh = r_sh = f_sh = 0.0
    if shorelines is not None:
        tp_s = fp_s = fn_s = 0
        any_shore_gt = False
        for scene, gi in gt_scenes.items():
            if scene not in shorelines:
                skipped.append(scene)
                continue
            gs = [j for j in gi if gt[j]["distance_from_shore_km"] <= shore_tolerance_km]
            pi = pred_scenes.get(scene, [])
            near = shore_distance_m(_rc([preds[i] for i in pi]), shorelines[scene], pixel_size_m)
            ps = [i for i, d in zip(pi, near) if d <= shore_tolerance_km * 1000 + tolerance_m]
            any_shore_gt |= bool(gs) and bool(pi)
            if gs and ps:  # the reference counts a scene only when both sides are non-empty
                m = match_scene(_rc([preds[i] for i in ps]), _rc([gt[j] for j in gs]),
                                tolerance_m=tolerance_m, pixel_size_m=pixel_size_m)
                tp_s, fp_s, fn_s = tp_s + len(m), fp_s + len(ps) - len(m), fn_s + len(gs) - len(m)
        if any_shore_gt:
            p_sh, r_sh, f_sh = f1(tp_s, fp_s, fn_s)

    _, _, f_vessel = _class_f1((preds[i]["is_vessel"], gt[j]["is_vessel"]) for i, j in pairs)
    _, _, f_fishing = _class_f1((preds[i]["is_fishing"], gt[j]["is_fishing"])
                                for i, j in pairs if gt[j]["is_vessel"] == 1)
    length = length_score([preds[i]["vessel_length_m"] for i, _ in pairs],
                          [gt[j]["vessel_length_m"] for _, j in pairs])
    aggregate = f_loc * (1 + length + f_vessel + f_fishing + f_sh) / 5
    return {"aggregate": aggregate, "F1_loc": f_loc, "F1_shore": f_sh, "F1_vessel": f_vessel,
            "F1_fishing": f_fishing, "length_score": length, "precision_loc": p_loc, "recall_loc": r_loc,
            "precision_shore": p_sh, "recall_shore": r_sh, "tp": len(pairs), "fp": fp, "fn": fn,
            "shore_skipped_scenes": sorted(skipped)}


# ---------------------------------------------------------------------------------------- reading
_TRUE, _FALSE = {"true", "1", "1.0", "t", "yes"}, {"false", "0", "0.0", "f", "no"}


def _flag(path: Path, line: int, col: str, text: str | None, *, optional: bool) -> float:
    s = (text or "").strip().lower()
    if s in _TRUE:
        return 1.0
    if s in _FALSE:
        return 0.0
    if optional and s in ("", "nan"):
        return math.nan
    raise LabelError(f"{path} line {line}: {col} must be True or False"
                     f"{' (or empty)' if optional else ''}, got {text!r}")


def _number(path: Path, line: int, col: str, text: str | None, *, optional: bool) -> float:
    s = (text or "").strip()
    try:
        x = float(s) if s else math.nan
    except ValueError:
        raise LabelError(f"{path} line {line}: {col} must be a number, got {text!r}") from None
    if math.isnan(x) and not optional or math.isinf(x):
        raise LabelError(f"{path} line {line}: {col} must be a finite number, got {text!r}")
    return x


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an xView3 submission CSV (:data:`PRED_COLUMNS`; extra columns ignored). Every value
    must be given: a missing column, a non-numeric or NaN value raises :class:`LabelError` naming
    the file and row."""
    path = Path(path)
    rows = []
    for line, r in csv_rows(path, PRED_COLUMNS):
        if not (r["scene_id"] or "").strip():
            raise LabelError(f"{path} line {line}: empty scene_id")
        rows.append({"scene_id": r["scene_id"].strip(),
                     **{c: _number(path, line, c, r[c], optional=False)
                        for c in ("detect_scene_row", "detect_scene_column", "vessel_length_m")},
                     **{c: _flag(path, line, c, r[c], optional=False) for c in ("is_vessel", "is_fishing")},
                     "line": line})
    return rows


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an xView3 labels CSV (:data:`GT_COLUMNS`). ``is_vessel``, ``is_fishing``,
    ``vessel_length_m`` and ``distance_from_shore_km`` may be empty (unknown, NaN); ``confidence``
    must be HIGH, MEDIUM or LOW."""
    path = Path(path)
    rows = []
    for line, r in csv_rows(path, GT_COLUMNS):
        conf = (r["confidence"] or "").strip().upper()
        if conf not in CONFIDENCES:
            raise LabelError(f"{path} line {line}: confidence must be one of {CONFIDENCES}, "
                             f"got {r['confidence']!r}")
        row = {"scene_id": (r["scene_id"] or "").strip(), "confidence": conf, "line": line,
               **{c: _number(path, line, c, r[c], optional=False)
                  for c in ("detect_scene_row", "detect_scene_column")},
               **{c: _number(path, line, c, r[c], optional=True)
                  for c in ("vessel_length_m", "distance_from_shore_km")},
               **{c: _flag(path, line, c, r[c], optional=True) for c in ("is_vessel", "is_fishing")}}
        if not row["scene_id"]:
            raise LabelError(f"{path} line {line}: empty scene_id")
        if row["vessel_length_m"] <= 0:  # NaN compares False: unknown lengths pass
            raise LabelError(f"{path} line {line}: vessel_length_m must be > 0, got {r['vessel_length_m']!r}")
        rows.append(row)
    return rows


def check_scenes(preds: Sequence[Row], gt: Sequence[Row], pred_path: str | Path) -> None:
    """Raise :class:`LabelError` naming the first prediction row whose scene has no ground truth
    (the reference scores ground-truth scenes only, so such rows, a scene-id typo say, would
    otherwise vanish from the score without a word)."""
    known = {g["scene_id"] for g in gt}
    for r in preds:
        if r["scene_id"] not in known:
            raise LabelError(f"{pred_path} line {r.get('line', '?')}: scene {r['scene_id']!r} is not in "
                             f"the ground truth ({len(known)} scenes)")


def read_shorelines(directory: str | Path, scene_ids: Iterable[str], *, allow_pickle: bool = False
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({scene_id: (N, 2) row/col points}, scenes without a file)`` from ``{scene_id}_shoreline.npy``.

    A plain ``(N, 2)`` array (what :func:`xtstream.tasks.xview3.synth.synth_scene` writes) loads
    without pickle; the official files are object arrays of contours, which need pickle: those are
    loaded with it (trust the directory as you would the reference scorer) and stacked. Missing files
    warn once, listing the scenes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LabelError(f"{directory}: shoreline directory does not exist")
    out, missing = {}, []
    for scene in sorted(set(scene_ids)):
        f = directory / f"{scene}_shoreline.npy"
        if not f.is_file():
            missing.append(scene)
            continue
        try:
            try:
                arr = np.load(f, allow_pickle=False)
            except ValueError:  # object array of contours (the official layout)
                if not allow_pickle:
                    raise LabelError(f"{f}: a pickled array (the official xView3 contour layout); "
                                     "loading it runs pickle, so it needs allow_pickle=True "
                                     "(--allow-pickle) for a directory you trust") from None
                contours = np.load(f, allow_pickle=True)
                arr = np.vstack([np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in contours]) \
                    if len(contours) else np.zeros((0, 2))
        except (OSError, ValueError) as err:
            raise LabelError(f"{f}: cannot read shoreline points: {err}") from err
        arr = np.asarray(arr, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise LabelError(f"{f}: shoreline must be (N, 2) row/col points, got shape {arr.shape}")
        out[scene] = arr
    if missing:
        warnings.warn(f"{len(missing)} scene(s) have no shoreline file in {directory}, left out of "
                      f"F1_shore: {missing}", stacklevel=2)
    return out, missing
