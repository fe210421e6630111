"""xView3 labels → per-region targets, rasterised one region at a time.

A labels CSV (the xView3 schema: ``scene_id, detect_scene_row, detect_scene_column, is_vessel,
is_fishing, vessel_length_m, distance_from_shore_km, confidence``; the last five may be empty =
unknown — column names, types and which are required come from the dataset spec's ``labels:``
block, by default that of ``data_specs/xview3.yaml``) is read once into small per-scene tables
sorted by row. For a region, only the objects *near* it (centre within ``margin`` pixels of its
window) are looked up — a binary search on the row, then a filter on the column — and drawn into
``R x R`` maps. A full-scene mask never exists.

Targets of one region (all ``(R, R)``, zero in the padding past the scene's edge):

* ``vessel`` (uint8): 1 within ``radius`` px of any object's centre (the object footprint);
* ``centre`` (float32): the max over objects of unit Gaussians of ``sigma`` px at their centres;
* ``length`` (float32): vessel length in metres on the footprint, NaN where unknown, 0 elsewhere;
* ``is_vessel``, ``is_fishing`` (float32): 1/0 on the footprint, NaN where unknown, 0 elsewhere.

Where footprints overlap, the attribute maps take the last object drawn: objects centred outside
the region are drawn after those inside it, each group in CSV order (readers of shards redraw the
attribute maps from the stored objects in the same order, so both paths agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from xtstream.data.grid import RegionGrid, Window
from xtstream.data.specs import LabelSpec, load_spec
from xtstream.errors import LabelError
from xtstream.tasks.base import csv_rows, unmatched_ids

TARGET_NAMES = ("vessel", "centre", "length", "is_vessel", "is_fishing")
DEFAULT_RADIUS = 4
DEFAULT_SIGMA = 2.0

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclass
class SceneLabels:
    """The labelled objects of one scene, sorted by row; rasterises regions on demand.

    ``rows``/``cols``: ``(N,)`` float64 scene pixel coordinates; ``is_vessel``/``is_fishing``:
    ``(N,)`` float32 1/0/NaN; ``length_m``/``shore_km``: ``(N,)`` float32, NaN = unknown;
    ``confidence``: N strings (``""`` = unknown); ``lines``: the CSV line of each object.
    """

    scene_id: str
    rows: np.ndarray
    cols: np.ndarray
    is_vessel: np.ndarray
    is_fishing: np.ndarray
    length_m: np.ndarray
    shore_km: np.ndarray
    confidence: list[str] = field(default_factory=list)
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    radius: int = DEFAULT_RADIUS
    sigma: float = DEFAULT_SIGMA

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def margin(self) -> int:
        """How far outside a region an object's footprint or Gaussian can still reach into it."""
        return int(max(self.radius, math.ceil(4 * self.sigma))) + 1

    def check_inside(self, height: int, width: int, source: str = "labels") -> None:
        """Raise :class:`LabelError` naming the first CSV line whose object lies outside the scene."""
        bad = (self.rows < 0) | (self.rows >= height) | (self.cols < 0) | (self.cols >= width)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LabelError(
                f"{source} line {int(self.lines[i])}: object of scene {self.scene_id!r} at row "
                f"{self.rows[i]:g}, column {self.cols[i]:g} is outside the scene ({height} x {width} px); "
                f"{int(bad.sum())} such row(s) in all")

    def near(self, window: Window, margin: int | None = None) -> np.ndarray:
        """Indices of objects whose centre lies within ``margin`` px of ``window`` (sorted by row)."""
        m = self.margin if margin is None else margin
        lo = np.searchsorted(self.rows, window.y0 - m, side="left")
        hi = np.searchsorted(self.rows, window.y1 + m, side="left")
        idx = np.arange(lo, hi)
        keep = (self.cols[idx] >= window.x0 - m) & (self.cols[idx] < window.x1 + m)
        idx = idx[keep]
        # CSV order, so that "the later object wins" means the same in every region
        return idx[np.argsort(self.lines[idx], kind="stable")]

    def _record(self, i: int, win: Window) -> dict[str, Any]:
        """Object ``i`` as a JSON-ready dict; ``row``/``col`` relative to ``win``'s corner,
        ``class`` one of ``fishing``, ``non_fishing``, ``vessel`` (fishing unknown), ``non_vessel``,
        ``unknown``."""
        return {
            "row": float(self.rows[i] - win.y0), "col": float(self.cols[i] - win.x0),
            "scene_row": float(self.rows[i]), "scene_col": float(self.cols[i]),
            "class": _class_name(self.is_vessel[i], self.is_fishing[i]),
            "is_vessel": _opt_bool(self.is_vessel[i]), "is_fishing": _opt_bool(self.is_fishing[i]),
            "length_m": _opt_float(self.length_m[i]),
            "distance_from_shore_km": _opt_float(self.shore_km[i]),
            "confidence": self.confidence[i] or None,
        }

    def region_objects(self, grid: RegionGrid, index: int) -> tuple[list[dict], list[dict]]:
        """``(inside, nearby)``: objects centred inside region ``index``, and those outside it whose
        footprint or Gaussian still reaches in — both as :meth:`_record` dicts, CSV order."""
        win = grid.valid_window(index)
        near = [self._record(int(i), win) for i in self.near(win)]
        inside = [o for o in near if 0 <= o["row"] < win.height and 0 <= o["col"] < win.width]
        return inside, [o for o in near if not (0 <= o["row"] < win.height and 0 <= o["col"] < win.width)]

    def region_targets(self, grid: RegionGrid, index: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        """``({name: (R, R)}, objects inside)`` for region ``index`` — see the module docstring."""
        win = grid.valid_window(index)
        inside, nearby = self.region_objects(grid, index)
        targets = rasterise(inside + nearby, grid.region, (win.height, win.width),
                            radius=self.radius, sigma=self.sigma)
        return targets, inside


def rasterise(objects: Iterable[Mapping[str, Any]], region: int, valid: tuple[int, int] | None = None,
              *, radius: int = DEFAULT_RADIUS, sigma: float = DEFAULT_SIGMA,
              names: Iterable[str] = TARGET_NAMES) -> dict[str, np.ndarray]:
    """Draw objects (dicts with region-relative ``row``/``col`` and optional ``is_vessel``,
    ``is_fishing``, ``length_m``) into ``(R, R)`` target maps; pixels past ``valid`` = ``(h, w)``
    (the part of the region inside the scene) stay zero. Each object touches only a small patch.
    """
    names = tuple(names)
    h, w = valid if valid is not None else (region, region)
    out: dict[str, np.ndarray] = {}
    for name in names:
        out[name] = np.zeros((region, region), np.uint8 if name == "vessel" else np.float32)
    reach = int(max(radius, math.ceil(4 * sigma)))
    for o in objects:
        r, c = float(o["row"]), float(o["col"])
        y0, y1 = max(int(math.floor(r)) - reach, 0), min(int(math.ceil(r)) + reach + 1, h)
        x0, x1 = max(int(math.floor(c)) - reach, 0), min(int(math.ceil(c)) + reach + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy2 = (np.arange(y0, y1, dtype=np.float32)[:, None] - r) ** 2
        dx2 = (np.arange(x0, x1, dtype=np.float32)[None, :] - c) ** 2
        d2 = dy2 + dx2
        patch = (slice(y0, y1), slice(x0, x1))
        if "centre" in out:
            np.maximum(out["centre"][patch], np.exp(-d2 / (2 * sigma**2)), out=out["centre"][patch])
        disk = d2 <= radius**2
        if "vessel" in out:
            out["vessel"][patch][disk] = 1
        for name, key in (("length", "length_m"), ("is_vessel", "is_vessel"), ("is_fishing", "is_fishing")):
            if name in out:
                value = o.get(key)
                out[name][patch][disk] = np.nan if value is None else float(value)
    return out


def label_spec(spec: Any = None) -> LabelSpec:
    """The labels schema to parse with: a :class:`LabelSpec`, the ``labels:`` block of a
    :class:`DatasetSpec` (or of the spec with that name or path), or — by default — that of the
    shipped ``xview3`` spec."""
    if isinstance(spec, LabelSpec):
        return spec
    dataset = load_spec("xview3" if spec is None else spec)
    if dataset.labels is None:
        raise LabelError(f"{dataset.source}: spec {dataset.name!r} has no labels: block to parse labels with")
    return dataset.labels


def read_labels(path: str | Path, *, scene_ids: Iterable[str] | None = None,
                shapes: Mapping[str, tuple[int, int]] | None = None, spec: Any = None,
                radius: int = DEFAULT_RADIUS, sigma: float = DEFAULT_SIGMA) -> dict[str, SceneLabels]:
    """Read an xView3 labels CSV into ``{scene_id: SceneLabels}``.

    The spec's ``labels:`` block (see :func:`label_spec`; default: the shipped ``xview3`` spec)
    names the scene/row/column columns, the type of each column (``str``, ``int``, ``float``,
    ``bool``) and which must be present and non-empty; columns it does not list are ignored, listed
    optional ones may be missing or empty (= unknown). ``scene_ids`` keeps only those scenes (an
    xView3 CSV covers many); every one of them gets an entry, empty if it has no rows — unless an id
    of the file nearly matches such a scene's (case, a close spelling) or none of the file's ids
    matches any of them: that is a :class:`LabelError` naming the ids, never zero-object
    scenes. ``shapes``
    (``{scene_id: (H, W)}``) checks that every object lies inside its scene. Raises
    :class:`LabelError` naming the file and line on missing columns, unparsable values or objects
    outside their scene.
    """
    path = Path(path)
    schema = label_spec(spec)
    where = (schema.scene_column, schema.row_column, schema.col_column)
    required = list(dict.fromkeys([*where, *schema.required]))  # a labelled object needs all three
    types = {schema.scene_column: "str", schema.row_column: "float", schema.col_column: "float", **schema.columns}
    kinds = {schema.row_column: ("int", "float"), schema.col_column: ("int", "float"), **_KINDS}
    wrong = {c: types[c] for c, ok in kinds.items() if c in types and types[c] not in ok}
    if wrong:
        raise LabelError(f"{path}: the labels spec types columns {wrong}; xView3 reads them as "
                         f"{ {c: kinds[c] for c in wrong} }")
    wanted = set(scene_ids) if scene_ids is not None else None
    cols: dict[str, dict[str, list]] = {}
    others: set[str] = set()  # ids of the file that match no wanted scene
    for line, row in csv_rows(path, required):
        sid = (row.get(schema.scene_column) or "").strip()
        if wanted is not None and sid not in wanted:
            others.add(sid)
            continue
        values = {c: _value(row, c, t, path, line, c in required) for c, t in types.items()}
        acc = cols.setdefault(sid, {k: [] for k in _FIELDS})
        acc["rows"].append(values[schema.row_column])
        acc["cols"].append(values[schema.col_column])
        for key, column in _FIELDS.items():
            if column is not None:  # the xView3 attributes, unknown when the spec omits them
                acc[key].append(values.get(column, "" if column == "confidence" else math.nan))
        acc["line"].append(line)
    if wanted:
        problem = unmatched_ids(wanted - set(cols), others, len(set(cols) & wanted))
        if problem is not None:
            raise LabelError(f"{path}: {problem}")
    result = {}
    for sid in sorted(set(cols) | (wanted or set())):
        acc = cols.get(sid) or {k: [] for k in _FIELDS}
        order = np.argsort(np.asarray(acc["rows"], np.float64), kind="stable")
        labels = SceneLabels(
            sid, np.asarray(acc["rows"], np.float64)[order], np.asarray(acc["cols"], np.float64)[order],
            np.asarray(acc["v"], np.float32)[order], np.asarray(acc["f"], np.float32)[order],
            np.asarray(acc["len"], np.float32)[order], np.asarray(acc["shore"], np.float32)[order],
            [str(acc["conf"][i]) for i in order], np.asarray(acc["line"], np.int64)[order],
            radius=radius, sigma=sigma)
        if shapes is not None and sid in shapes:
            labels.check_inside(*shapes[sid], source=str(path))
        result[sid] = labels
    return result


# the types the xView3 attribute columns may have in a spec
_KINDS = {"is_vessel": ("bool",), "is_fishing": ("bool",), "vessel_length_m": ("int", "float"),
          "distance_from_shore_km": ("int", "float"), "confidence": ("str",)}
# per-object lists read_labels collects -> the xView3 column each comes from (None: by the spec)
_FIELDS = {"rows": None, "cols": None, "v": "is_vessel", "f": "is_fishing", "len": "vessel_length_m",
           "shore": "distance_from_shore_km", "conf": "confidence", "line": None}


def _value(row: dict, column: str, kind: str, path: Path, line: int, required: bool) -> Any:
    """One cell parsed as the spec's column type; unknown (NaN / ``""``) when empty and optional."""
    if kind == "bool":
        if required and not (row.get(column) or "").strip():
            raise LabelError(f"{path} line {line}: empty {column}")
        return _flag(row, column, path, line)
    if kind == "str":
        text = (row.get(column) or "").strip()
        if required and not text:
            raise LabelError(f"{path} line {line}: empty {column}")
        return text
    value = _number(row, column, path, line, required=required)
    if kind == "int" and math.isfinite(value) and not value.is_integer():
        raise LabelError(f"{path} line {line}: {column} {row.get(column)!r} is not an integer")
    return value


def _number(row: dict, column: str, path: Path, line: int, required: bool = False) -> float:
    text = (row.get(column) or "").strip()
    if not text:
        if required:
            raise LabelError(f"{path} line {line}: empty {column}")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise LabelError(f"{path} line {line}: {column} {text!r} is not a number") from None
    if required and not math.isfinite(value):
        raise LabelError(f"{path} line {line}: {column} {text!r} is not a finite number")
    return value


def _flag(row: dict, column: str, path: Path, line: int) -> float:
    text = (row.get(column) or "").strip().lower()
    if not text or text in ("nan", "none", "null"):
        return math.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise LabelError(f"{path} line {line}: {column} {row.get(column)!r} is not a boolean (True/False/empty)")


def _opt_bool(v: float) -> bool | None:
    return None if np.isnan(v) else bool(v)


def _opt_float(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v), 4)


def _class_name(is_vessel: float, is_fishing: float) -> str:
    if np.isnan(is_vessel):
        return "unknown"
    if not is_vessel:
        return "non_vessel"
    if np.isnan(is_fishing):
        return "vessel"
    return "fishing" if is_fishing else "non_fishing"
