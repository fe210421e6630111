"""Synthetic xView3-like scenes, written window by window (the scene is never held in memory).

A scene is SAR-like speckled sea (VV, VH in dB), a land mass behind an irregular shoreline, a
nodata wedge in one corner (a swath edge), bright vessel blobs of varying length and heading
(some near shore, some far) plus a few fixed non-vessel objects, and a bathymetry band. Outputs,
in the layout of an xView3 scene directory::

    OUT_DIR/VV_dB.tif VH_dB.tif bathymetry.tif   tiled 512, compressed, float32, nodata -32768
    OUT_DIR/labels.csv                           the xView3 label schema
    OUT_DIR/{scene_id}_shoreline.npy             (N, 2) float row/col of shoreline pixels

Every pixel is a pure function of (seed, position): windows can be made in any order and the
same seed gives the same scene.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from tqdm import tqdm

NODATA = -32768.0
PIXEL_M = 10.0
TILE = 512
WINDOW = 2048
LABEL_COLUMNS = ["scene_id", "detect_scene_row", "detect_scene_column", "is_vessel", "is_fishing",
                 "vessel_length_m", "distance_from_shore_km", "confidence", "top", "left", "bottom", "right"]


@dataclass
class SynthScene:
    """What :func:`synth_scene` wrote."""

    directory: Path
    scene_id: str
    height: int
    width: int
    bands: dict[str, Path]
    labels: Path
    shoreline: Path
    objects: list[dict] = field(default_factory=list)


class _Field:
    """Smooth multi-octave value noise over the whole scene, evaluated on any window."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, cells: tuple[int, ...],
                 weights: tuple[float, ...]):
        self.octaves = [(c, w, rng.standard_normal((height // c + 3, width // c + 3)).astype(np.float32))
                        for c, w in zip(cells, weights)]

    def __call__(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Values at the grid ``ys (h,) x xs (w,)`` → ``(h, w)`` float32."""
        out = np.zeros((len(ys), len(xs)), dtype=np.float32)
        for cell, weight, grid in self.octaves:
            iy, fy = np.divmod(ys.astype(np.float32) / cell, 1.0)
            ix, fx = np.divmod(xs.astype(np.float32) / cell, 1.0)
            iy, ix = iy.astype(np.int64), ix.astype(np.int64)
            fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no grid creases
            g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
            g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
            top = g00 + (g01 - g00) * fx[None, :]
            bottom = g10 + (g11 - g10) * fx[None, :]
            out += weight * (top + (bottom - top) * fy[:, None])
        return out

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Values at scattered points."""
        return np.array([self(np.array([a]), np.array([b]))[0, 0] for a, b in zip(y, x)])


class _Scene:
    """The continuous description of a scene: land field, wind field, nodata wedge, objects."""

    def __init__(self, height: int, width: int, seed: int):
        self.height, self.width, self.seed = height, width, seed
        rng = np.random.default_rng([seed, 0])
        scale = max(height, width)
        big = max(64, scale // 6)
        self.land = _Field(rng, height, width, (big, max(32, big // 4), max(16, big // 16)), (0.55, 0.3, 0.12))
        self.wind = _Field(rng, height, width, (max(64, scale // 3),), (1.0,))
        self.land_side = int(rng.integers(4))  # which edge the land mass leans on
        self.wedge = 0.12 * (height + width)

    def land_value(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """> 0 on land. A ramp towards one edge plus noise gives an irregular coast."""
        v = self.land(ys, xs)
        ry = (ys.astype(np.float32) / self.height)[:, None]
        rx = (xs.astype(np.float32) / self.width)[None, :]
        ramp = {0: rx, 1: 1 - rx, 2: ry, 3: 1 - ry}[self.land_side]
        return v + 3.0 * (ramp - 0.72)

    def nodata(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The swath-edge wedge in the top-left corner."""
        return (ys[:, None] + xs[None, :]) < self.wedge


def _sample_objects(scene: _Scene, rng: np.random.Generator, per_mp: float | None = None) -> list[dict]:
    h, w = scene.height, scene.width
    n = max(4, int(round(h * w * (per_mp / 1e6 if per_mp else 1 / 6e6))))
    objects, tries = [], 0
    while len(objects) < n and tries < 200 * n:
        tries += 1
        y, x = int(rng.integers(8, max(9, h - 8))), int(rng.integers(8, max(9, w - 8)))
        if y + x < scene.wedge + 16:
            continue
        g = float(scene.land_value(np.array([y]), np.array([x]))[0, 0])
        near = len(objects) % 2 == 0
        if g > -0.02 or (near and g < -0.35) or (not near and g > -0.35 and tries < 100 * n):
            continue
        is_vessel = rng.random() > 0.15
        length = float(rng.uniform(12, 300)) if is_vessel else float(rng.uniform(15, 40))
        objects.append({
            "row": y, "col": x, "is_vessel": is_vessel,
            "is_fishing": (bool(rng.random() < 0.4) if rng.random() > 0.2 else None) if is_vessel else None,
            "length_m": length, "known_length": bool(rng.random() > 0.15) and is_vessel,
            "heading": float(rng.uniform(0, np.pi)),
            "confidence": ["HIGH", "MEDIUM", "LOW"][int(rng.choice(3, p=[0.6, 0.3, 0.1]))],
        })
    return objects


def _render_objects(img_vv: np.ndarray, img_vh: np.ndarray, y0: int, x0: int, objects: list[dict]) -> None:
    h, w = img_vv.shape
    for o in objects:
        half_len = o["length_m"] / PIXEL_M / 2 if o["is_vessel"] else 2.0
        half_wid = max(1.0, half_len / 5) if o["is_vessel"] else 2.0
        r = int(np.ceil(half_len + 3))
        ya, yb = max(o["row"] - r, y0), min(o["row"] + r + 1, y0 + h)
        xa, xb = max(o["col"] - r, x0), min(o["col"] + r + 1, x0 + w)
        if ya >= yb or xa >= xb:
            continue
        dy = np.arange(ya, yb)[:, None] - o["row"]
        dx = np.arange(xa, xb)[None, :] - o["col"]
        c, s = np.cos(o["heading"]), np.sin(o["heading"])
        u, v = dx * c + dy * s, -dx * s + dy * c
        blob = np.exp(-0.5 * ((u / (0.6 * half_len + 0.5)) ** 2 + (v / (0.6 * half_wid + 0.5)) ** 2))
        peak = 22.0 if o["is_vessel"] else 28.0
        region = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        img_vv[region] += (peak * blob).astype(np.float32)
        img_vh[region] += (0.8 * peak * blob).astype(np.float32)


def _profile(height: int, width: int, transform: Affine) -> dict:
    return dict(driver="GTiff", height=height, width=width, count=1, dtype="float32", nodata=NODATA,
                crs="EPSG:32631", transform=transform, tiled=True, blockxsize=TILE, blockysize=TILE,
                compress="zstd", zstd_level=1, bigtiff="IF_SAFER")


def synth_scene(out_dir: str | Path, height: int, width: int, seed: int = 0, scene_id: str | None = None,
                *, bathymetry_factor: int = 1, objects_per_mp: float | None = None,
                progress: bool = True) -> SynthScene:
    """Write one synthetic xView3-like scene of ``height x width`` pixels into ``out_dir``.

    ``bathymetry_factor`` > 1 writes bathymetry at that many times coarser resolution over the
    same bounds, as in real xView3 scenes (ingest resamples it onto the VV grid).
    ``objects_per_mp``: objects per million pixels (default about xView3's, 1 per 6 MP; at least 4).
    """
    if height < 16 or width < 16:
        raise ValueError(f"synth_scene: scene must be at least 16x16 pixels, got {height}x{width}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene_id = scene_id or out.name
    scene = _Scene(height, width, seed)
    objects = _sample_objects(scene, np.random.default_rng([seed, 1]), objects_per_mp)
    origin = Affine(PIXEL_M, 0, 500_000.0, 0, -PIXEL_M, 6_000_000.0)
    paths = {name: out / f"{name}.tif" for name in ("VV_dB", "VH_dB", "bathymetry")}
    bh, bw = max(1, height // bathymetry_factor), max(1, width // bathymetry_factor)
    bathy_transform = origin @ Affine.scale(width / bw, height / bh)
    shoreline: list[np.ndarray] = []
    windows = [(y, x) for y in range(0, height, WINDOW) for x in range(0, width, WINDOW)]
    with rasterio.Env(GDAL_CACHEMAX=128), \
            rasterio.open(paths["VV_dB"], "w", **_profile(height, width, origin)) as vv_ds, \
            rasterio.open(paths["VH_dB"], "w", **_profile(height, width, origin)) as vh_ds:
        for y0, x0 in tqdm(windows, desc=f"synth {scene_id}", unit="window", disable=not progress):
            y1, x1 = min(y0 + WINDOW, height), min(x0 + WINDOW, width)
            # one pixel of halo to find shoreline pixels on window edges
            ys, xs = np.arange(y0 - 1, y1 + 1), np.arange(x0 - 1, x1 + 1)
            land_halo = scene.land_value(ys, xs) > 0
            land = land_halo[1:-1, 1:-1]
            coast = land & ~(land_halo[:-2, 1:-1] & land_halo[2:, 1:-1] & land_halo[1:-1, :-2] & land_halo[1:-1, 2:])
            cy, cx = np.nonzero(coast)
            shoreline.append(np.stack([cy + y0, cx + x0], axis=1).astype(np.float64))
            rng = np.random.default_rng([seed, 2, y0, x0])
            wind = 2.0 * scene.wind(ys[1:-1], xs[1:-1])
            texture = 3.0 * scene.land(ys[1:-1] * 7 % height, xs[1:-1] * 7 % width)
            speckle = rng.standard_normal((2, y1 - y0, x1 - x0), dtype=np.float32)
            vv = np.where(land, -8.0 + texture, -19.0 + wind) + 1.6 * speckle[0]
            vh = np.where(land, -15.0 + texture, -27.0 + wind) + 1.6 * speckle[1]
            vv, vh = vv.astype(np.float32), vh.astype(np.float32)
            _render_objects(vv, vh, y0, x0, objects)
            nodata = scene.nodata(ys[1:-1], xs[1:-1])
            vv[nodata] = NODATA
            vh[nodata] = NODATA
            win = rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0)
            vv_ds.write(vv, 1, window=win)
            vh_ds.write(vh, 1, window=win)
    _write_bathymetry(paths["bathymetry"], scene, bh, bw, bathy_transform, progress)
    coast_pts = np.concatenate(shoreline) if shoreline else np.zeros((0, 2))
    shoreline_path = out / f"{scene_id}_shoreline.npy"
    np.save(shoreline_path, coast_pts, allow_pickle=False)
    labels_path = out / "labels.csv"
    _write_labels(labels_path, scene_id, objects, coast_pts)
    return SynthScene(out, scene_id, height, width, paths, labels_path, shoreline_path, objects)


def _write_bathymetry(path: Path, scene: _Scene, bh: int, bw: int, transform: Affine, progress: bool) -> None:
    sy, sx = scene.height / bh, scene.width / bw
    with rasterio.Env(GDAL_CACHEMAX=128), rasterio.open(path, "w", **_profile(bh, bw, transform)) as ds:
        for y0 in tqdm(range(0, bh, WINDOW), desc="bathymetry", unit="row", disable=not progress):
            for x0 in range(0, bw, WINDOW):
                y1, x1 = min(y0 + WINDOW, bh), min(x0 + WINDOW, bw)
                ys = ((np.arange(y0, y1) + 0.5) * sy).astype(np.int64)
                xs = ((np.arange(x0, x1) + 0.5) * sx).astype(np.int64)
                g = scene.land_value(ys, xs)
                depth = np.where(g > 0, 40.0 * g, -3000.0 * (1 - np.exp(4.0 * np.minimum(g, 0))))
                ds.write(depth.astype(np.float32), 1, window=rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0))


def _write_labels(path: Path, scene_id: str, objects: list[dict], coast: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        for o in objects:
            pts = np.array([[o["row"], o["col"]]], dtype=np.float64)
            dist_px = _min_distance(pts, coast)[0] if len(coast) else np.nan
            half = int(np.ceil(o["length_m"] / PIXEL_M / 2)) + 1 if o["is_vessel"] else 3
            writer.writerow({
                "scene_id": scene_id,
                "detect_scene_row": o["row"],
                "detect_scene_column": o["col"],
                "is_vessel": o["is_vessel"],
                "is_fishing": "" if o["is_fishing"] is None else o["is_fishing"],
                "vessel_length_m": f"{o['length_m']:.1f}" if o["known_length"] else "",
                "distance_from_shore_km": f"{dist_px * PIXEL_M / 1000:.3f}",
                "confidence": o["confidence"],
                "top": o["row"] - half, "left": o["col"] - half,
                "bottom": o["row"] + half, "right": o["col"] + half,
            })


def _min_distance(points: np.ndarray, coast: np.ndarray, block: int = 65536) -> np.ndarray:
    best = np.full(len(points), np.inf)
    for start in range(0, len(coast), block):
        c = coast[start: start + block]
        d = np.sqrt(((points[:, None, :] - c[None, :, :]) ** 2).sum(-1)).min(axis=1)
        best = np.minimum(best, d)
    return best
