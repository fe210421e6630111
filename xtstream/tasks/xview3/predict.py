"""Whole-scene xView3 prediction: dense maps to a georeferenced Zarr store, detections scene-wide.

Per scene, as its chunks stream through the model, each region's five maps (at the head's output
stride ``s``) are written to ``scenes/{scene_id}.zarr`` (:class:`~xtstream.data.prediction_store.
PredictionStore`) as probabilities (``vessel``, ``centre``, ``is_vessel``, ``is_fishing``) and
metres (``length``). When the scene's last chunk is written, peaks are found on the *stored scene
map*, tile by tile with a halo (:func:`~xtstream.tasks.xview3.decode.find_peaks_tiled`) — the
same peaks as on the whole map at once, so an object on a region seam or corner is reported once
— and read out as rows of the xView3 submission format, plus ``detect_lat``/``detect_lon`` (WGS 84,
from the scene's CRS; NaN without one) and ``score`` (the centre probability at the peak).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtstream._runtime.malloc import trim
from xtstream.data.georef import Georef
from xtstream.data.grid import RegionGrid, Window
from xtstream.data.prediction_store import PredictionStore
from xtstream.errors import ModelConfigError
from xtstream.tasks.xview3.decode import cell_to_pixel, find_peaks_tiled, peak_cells
from xtstream.tasks.xview3.head import LENGTH_REF_M, MAX_LOG_LENGTH
from xtstream.tasks.xview3.labels import TARGET_NAMES

if TYPE_CHECKING:
    from xtstream.data.chunk import RegionChunk

log = logging.getLogger(__name__)

#: the xView3 submission columns, then ours
COLUMNS = ["scene_id", "detect_scene_row", "detect_scene_column", "is_vessel", "is_fishing",
           "vessel_length_m", "detect_lat", "detect_lon", "score"]

VARIABLES = {
    "vessel": {"long_name": "vessel pixel probability", "units": "1"},
    "centre": {"long_name": "object centre heat-map (probability)", "units": "1"},
    "length": {"long_name": "vessel length", "units": "m"},
    "is_vessel": {"long_name": "probability that the object is a vessel", "units": "1"},
    "is_fishing": {"long_name": "probability that the vessel is fishing", "units": "1"},
}

#: decoding options and their defaults (``xtstream predict`` flags of the same names)
DEFAULTS = {"threshold": 0.5, "min_distance": 3, "vessel_threshold": 0.5, "fishing_threshold": 0.5,
            "geotiff": False}


class XView3SceneWriter:
    """Writes one scene's predictions (see the module docstring); :meth:`write` per chunk, in
    order, then :meth:`finish` once for the detection rows."""

    columns = COLUMNS

    def __init__(self, out_dir: Path, scene_id: str, grid: RegionGrid, georef: Georef | None = None,
                 **options: Any) -> None:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ModelConfigError(f"xview3 prediction: unknown option(s) {sorted(unknown)}; "
                                   f"expected {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **options}
        self.path = Path(out_dir) / f"{scene_id}.zarr"
        self.scene_id, self.grid, self.georef = scene_id, grid, georef or Georef()
        self.store: PredictionStore | None = None

    def write(self, chunk: "RegionChunk") -> None:
        """Write the chunk's maps (``chunk.outputs``: ``{name: (n, 1, R / s, R / s)}`` logits)."""
        out = chunk.outputs
        missing = [n for n in TARGET_NAMES if n not in out]
        if missing:
            raise ModelConfigError(f"model outputs {sorted(out)} lack the xView3 maps {missing}: "
                                   "is this an xview3-head checkpoint?")
        if self.store is None:
            cells = out["centre"].shape[-1]
            stride = self.grid.region // cells
            if stride * cells != self.grid.region:
                raise ModelConfigError(f"{cells}-cell output maps do not tile {self.grid.region}-px regions")
            self.store = PredictionStore.create(self.path, self.scene_id, self.grid, stride, VARIABLES,
                                                georef=self.georef)
        # numpy, not torch: this runs on the write-behind thread, and a torch op there starts a
        # second OpenMP team whose spinning threads took the model's cores (writes had cost a
        # fifth of prediction's time on 2 cores; with numpy they overlap with the model)
        maps = {name: _to_map(name, v) for name, v in out.items() if name in VARIABLES}
        for k, index in enumerate(chunk.indices):
            self.store.write_region(index, {name: m[k] for name, m in maps.items()})

    def finish(self) -> list[dict[str, Any]]:
        """Scene-level peaks → detection rows (sorted by decreasing score); marks the store complete
        and, with ``geotiff``, exports ``{scene_id}.tif`` beside it."""
        if self.store is None:
            raise ModelConfigError(f"scene {self.scene_id!r}: no region was written")
        store, o = self.store, self.options
        s = store.stride
        positions, scores = [], []
        # tiles of PEAK_TILE x PEAK_TILE stored chunks: with one chunk per tile the halo made every
        # chunk decode ~4 times (a third of the prediction time on CPU); memory stays one tile
        tiles = store.windows(PEAK_TILE * (store.grid.region // s))
        for pos, sc in find_peaks_tiled(lambda w: store.read("centre", w), store.shape, tiles,
                                        threshold=o["threshold"], min_distance=peak_cells(o["min_distance"], s)):
            positions.append(pos)
            scores.append(sc)
            trim()  # each tile's temporaries freed back to the system: RSS stays one tile's
        pos = np.concatenate(positions) if positions else np.zeros((0, 2), np.int64)
        score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        order = np.argsort(-score, kind="stable")
        pos, score = pos[order], score[order]
        attrs = {name: _read_at(store, name, pos) for name in ("length", "is_vessel", "is_fishing")}
        rows_px = cell_to_pixel(pos[:, 0], s, self.grid.height)
        cols_px = cell_to_pixel(pos[:, 1], s, self.grid.width)
        lon, lat = self.georef.lonlat(rows_px, cols_px)
        vessel = attrs["is_vessel"] >= o["vessel_threshold"]
        fishing = vessel & (attrs["is_fishing"] >= o["fishing_threshold"])
        rows = [{"scene_id": self.scene_id, "detect_scene_row": int(rows_px[k]),
                 "detect_scene_column": int(cols_px[k]), "is_vessel": bool(vessel[k]),
                 "is_fishing": bool(fishing[k]), "vessel_length_m": round(float(attrs["length"][k]), 3),
                 "detect_lat": float(lat[k]), "detect_lon": float(lon[k]), "score": round(float(score[k]), 5)}
                for k in range(len(score))]
        store.mark_complete(detections=len(rows), options=o)
        if o["geotiff"]:
            store.to_geotiff(self.path.with_suffix(".tif"))
        return rows

    def summary(self, rows: list[dict[str, Any]]) -> str:
        vessels = sum(r["is_vessel"] for r in rows)
        fishing = sum(r["is_fishing"] for r in rows)
        return f"{len(rows)} detections ({vessels} vessels, {fishing} fishing) -> {self.path}"


#: stored chunks per side of the tiles peaks are found in (8 x 8 chunks of 128² cells: 4 MiB of
#: map, ~50 MiB of temporaries, trimmed after each tile)
PEAK_TILE = 8


def _to_map(name: str, logits: Any) -> np.ndarray:
    """``(n, 1, h, w)`` raw outputs (host tensor or array) → ``(n, h, w)`` float32 of the stored map:
    metres for ``length`` (as :func:`~xtstream.tasks.xview3.head.length_to_metres`), else a
    probability."""
    x = np.asarray(logits[:, 0], dtype=np.float32)
    if name == "length":
        return (LENGTH_REF_M * np.exp(np.minimum(x, MAX_LOG_LENGTH))).astype(np.float32, copy=False)
    # 1 / (1 + e^-x) without overflow warnings: e^-|x| is at most 1
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32, copy=False)


def _read_at(store: PredictionStore, name: str, pos: np.ndarray) -> np.ndarray:
    """Values of map ``name`` at cells ``pos`` ``(K, 2)``, read one stored tile at a time."""
    out = np.zeros(len(pos), dtype=np.float32)
    if not len(pos):
        return out
    cell = store.grid.region // store.stride
    h, w = store.shape
    # grouped by tile with one sort: a mask per tile would cost tiles x detections
    tiles, inverse = np.unique(pos // cell, axis=0, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    bounds = np.searchsorted(inverse.reshape(-1)[order], np.arange(len(tiles) + 1))
    for k, (ty, tx) in enumerate(tiles.tolist()):
        sel = order[bounds[k]:bounds[k + 1]]
        win = Window(ty * cell, tx * cell, min((ty + 1) * cell, h), min((tx + 1) * cell, w))
        block = store.read(name, win)
        out[sel] = block[pos[sel, 0] - win.y0, pos[sel, 1] - win.x0]
    return out
