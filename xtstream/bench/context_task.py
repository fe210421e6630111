"""The context-dependent task: vessels near a shore that lies in another region, told from those far out.

Every scene (``rows x cols`` regions of ``R`` px, one band, 10-m pixels) holds a strip of land —
one whole row or one whole column of regions, bright and textured — and ``objects`` vessels
(bright 12-px squares) in other regions, at most one a region. A vessel is **near shore** when its
region touches the strip (beside a land column, above or below a land row): the stand-in for
xView3's "within 2 km of the shoreline", with the shoreline always in another region. The task
labels near-shore vessels fishing (``is_fishing``), far ones not. Every vessel region looks alike
— noise and one square — so finding vessels is each region's own business, and only context can
say which are near shore; the land is beside the vessel in the row (horizontal) or a whole row of
regions away in row-major order (vertical).

Scores, with xView3's metric (:func:`xtstream.tasks.xview3.metric.score`, 200-m = 20-px match
tolerance): ``f1`` = F1_loc (vessels found: peaks of the centre map), ``shore_f1`` = F1_fishing,
the F1 of the near-shore class over the matched vessels — the context-dependent score. A model
blind to context scores about what a coin does on it.

What each model can see, by construction (chunks of one region row): Transformer-XL attends within
its chunk both ways and to the chunks before it (memory), so a land row *below* a vessel's row —
a later chunk — is out of its sight; Mamba reads row-major, so it also misses land to the right of
a vessel in the same row; ``full`` sees the whole scene. Those vessels are guesses for them.
"""

from __future__ import annotations

import datetime
import itertools
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from xtstream.bench.probe import _chunks, interleaved, probe_model, train_scenes
from xtstream.data.chunk import RegionChunk
from xtstream.data.grid import RegionGrid, region_order

#: the models compared, result name -> context kind; ``xt_xl_rows`` is xT-XL with a region memory
#: as long as a scene's row of regions (``region_mem = cols``: the region directly above in reach)
MODELS = {"region_only": "none", "xt_xl": "xl", "xt_mamba": "mamba", "xt_full": "full", "xt_xl_rows": "xl"}
#: what a sweep runs unless told otherwise
DEFAULT_MODELS = ("region_only", "xt_xl", "xt_mamba", "xt_full")
#: the default scene layout: 4 x 4 regions, chunks of one region row
LAYOUT = {"rows": 4, "cols": 4, "chunk": 4}
SQUARE = 12
LAND = 2.0
#: per-model defaults: training scenes, scenes per optimiser step, held-out scenes (256 vessels),
#: learning rate. Found on seed 0 (2026-12-04): xT-XL's shore F1 0.73 after 600 scenes, 0.87
#: after 2,000 at 1e-3; at the probes' 3e-4 no centre peak passed 0.3 within 1,000 scenes
SCENES, SCENES_PER_STEP, EVAL_SCENES, LR = 3000, 4, 64, 1e-3
#: peaks of the centre map at or above this probability are detections
PEAK_THRESHOLD = 0.3


@dataclass
class ShoreScene:
    """One scene as chunks; ``vessels``: ``(row, col, near)`` of each square's centre in pixels;
    ``land``: ``("row" | "col", index)`` of the land strip in regions."""

    chunks: list[RegionChunk]
    vessels: list[tuple[float, float, bool]]
    land: tuple[str, int]


def make_shore_scene(rng: np.random.Generator, *, rows: int = 4, cols: int = 4, region: int = 64,
                     chunk: int = 4, objects: int = 4, scene_id: str = "shore") -> ShoreScene:
    """A scene of the task (see the module docstring). Targets per region: ``vessel`` (the squares),
    ``centre`` (unit Gaussians of sigma 2 at their centres), ``is_fishing`` (1 on near-shore
    squares, 0 on far ones, NaN elsewhere: only object pixels are labelled)."""
    from xtstream.tasks.xview3.head import gaussian_heatmap

    grid = RegionGrid(rows * region, cols * region, region)
    image = rng.normal(0.0, 0.1, (1, grid.height, grid.width)).astype(np.float32)
    axis = "row" if rng.integers(2) else "col"
    strip = int(rng.integers(rows if axis == "row" else cols))
    land = [i for i in range(len(grid)) if divmod(i, cols)[0 if axis == "row" else 1] == strip]
    for i in land:
        y0, x0, y1, x1 = grid.window(i)
        image[0, y0:y1, x0:x1] += LAND + rng.normal(0.0, 0.3, (region, region)).astype(np.float32)
    sea = [i for i in range(len(grid)) if i not in land]
    vessel = np.zeros((grid.height, grid.width), np.float32)
    fishing = np.full((grid.height, grid.width), np.nan, np.float32)
    vessels = []
    for i in sorted(int(k) for k in rng.choice(sea, min(objects, len(sea)), replace=False)):
        r, c = divmod(i, cols)
        near = abs((r if axis == "row" else c) - strip) == 1
        y0, x0, _, _ = grid.window(i)
        dy, dx = (int(v) for v in rng.integers(4, region - SQUARE - 4, size=2))
        ys, xs = slice(y0 + dy, y0 + dy + SQUARE), slice(x0 + dx, x0 + dx + SQUARE)
        image[0, ys, xs] += 1.5
        vessel[ys, xs] = 1.0
        fishing[ys, xs] = float(near)
        # a whole-pixel centre: the focal loss's positives are the cells where the map is exactly 1
        vessels.append((float(y0 + dy + SQUARE // 2), float(x0 + dx + SQUARE // 2), near))
    centre = gaussian_heatmap([(r, c) for r, c, _ in vessels], (grid.height, grid.width))
    maps = {"vessel": vessel, "centre": centre, "is_fishing": fishing}

    def targets(idx: list[int]) -> dict[str, np.ndarray]:
        out = {}
        for name, m in maps.items():
            out[name] = np.stack([m[y0:y1, x0:x1] for y0, x0, y1, x1 in (grid.window(i) for i in idx)])
        return out

    return ShoreScene(_chunks(image, grid, chunk, scene_id, targets), vessels, (axis, strip))


def training_stream(seed: int, *, scenes_per_step: int, **scene_kw: Any) -> Iterator[RegionChunk]:
    """Endless fresh scenes, ``scenes_per_step`` at a time, their chunks interleaved (chunk 0 of
    each, then chunk 1 of each, ...), as the training engine batches them."""
    rng = np.random.default_rng(seed)
    for k in itertools.count(0, scenes_per_step):
        yield from interleaved([make_shore_scene(rng, scene_id=f"train{k + j}", **scene_kw)
                                for j in range(scenes_per_step)])


#: where the land strip is, seen from a vessel, in row-major order with chunks of one region row
SIGHTS = ("row_before", "column_before", "column_after", "row_after")


def sight(scene: ShoreScene, vessel: tuple[float, float, bool]) -> str:
    """Where ``scene``'s land lies from ``vessel`` in reading order: a land ``row_before`` /
    ``row_after`` (an earlier / later chunk), or a land column ``column_before`` / ``column_after``
    (earlier / later in the vessel's own chunk)."""
    grid = scene.chunks[0].grid
    row, col = divmod(grid.region_of_pixel(int(vessel[0]), int(vessel[1])), grid.cols)
    axis, strip = scene.land
    return f"{axis.replace('col', 'column')}_{'before' if strip < (row if axis == 'row' else col) else 'after'}"


#: how a scene's regions are read: ``row_major`` (:meth:`XTModel.stream`, as stores and shards
#: hold them), ``column_major`` or ``snake`` (:func:`xtstream.data.grid.region_order`), or
#: ``two_pass``: row-major once without outputs to fill the context state, then again from that
#: state — the reference code's two-pass order: every region's context then holds the whole scene
#: as the state summarises it (Mamba: all of it; Transformer-XL: its last memory chunks)
ORDERS = ("row_major", "column_major", "snake", "two_pass")


def reading(grid: RegionGrid, order: str, chunk: int) -> tuple[list[np.ndarray], int]:
    """The chunks of region indices (row-major numbering) in reading ``order``, and how many
    state-filling passes precede the scored one (1 for ``two_pass``, else 0)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; known: {ORDERS}")
    seq = region_order(grid.rows, grid.cols, "row_major" if order == "two_pass" else order)
    return [seq[i:i + chunk] for i in range(0, len(seq), chunk)], int(order == "two_pass")


def scene_pixels(scene: ShoreScene) -> np.ndarray:
    """``scene``'s region pixels, row-major: ``(N, 1, R, R)``."""
    return np.concatenate([np.asarray(c.pixels) for c in scene.chunks])


def scene_targets(scene: ShoreScene) -> dict[str, np.ndarray]:
    """``scene``'s region targets, row-major: ``{name: (N, R, R)}``."""
    return {n: np.concatenate([c.targets[n] for c in scene.chunks]) for n in scene.chunks[0].targets}


def read_ordered(model: Any, scenes: list[ShoreScene], order: str, *, through: bool = False
                 ) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """The scored pass over ``scenes`` (same grid, read together: ``(B, C, ...)`` a chunk) in
    ``order``: per chunk its region indices and outputs ``{name: (B * C, 1, R, R)}``, scene-major.
    ``through``: keep the graph through the state handed between chunks, a ``two_pass`` first
    pass included (training: what a region needs from a region read earlier is written into the
    state, and only a gradient through it teaches that); otherwise a first pass runs without one."""
    import contextlib

    from xtstream.models.xt import ChunkState, carried_state

    grid = scenes[0].chunks[0].grid
    chunks, warm = reading(grid, order, model.config.chunk)
    pixels = [scene_pixels(s) for s in scenes]

    def one_pass(state: Any) -> tuple[list[Any], Any]:
        outs = []
        for idx in chunks:
            x = torch.from_numpy(np.stack([p[idx] for p in pixels]))
            out, state = model(x, torch.from_numpy(np.stack([idx // grid.cols, idx % grid.cols], axis=1)), state)
            outs.append((idx, out))
        return outs, state

    with carried_state(model) if through else contextlib.nullcontext():
        state = None
        for _ in range(warm):
            with torch.set_grad_enabled(through and torch.is_grad_enabled()):
                state = ChunkState(context=one_pass(state)[1].context)
        return one_pass(state)[0]


def read_twice(model: Any, scenes: list[ShoreScene], *, through_first: bool = False) -> list[dict[str, torch.Tensor]]:
    """The ``two_pass`` outputs of ``scenes``, per row-major chunk (:func:`read_ordered`)."""
    return [out for _, out in read_ordered(model, scenes, "two_pass", through=through_first)]


def scene_maps(model: Any, scene: ShoreScene, order: str = "row_major") -> tuple[torch.Tensor, torch.Tensor]:
    """The model's centre and ``is_fishing`` probability maps ``(H, W)`` over ``scene``, read in ``order``."""
    grid = scene.chunks[0].grid
    centre = torch.zeros(grid.height, grid.width)
    fishing = torch.zeros(grid.height, grid.width)
    with torch.no_grad():
        if order == "row_major":
            chunks = [(c.indices, c.outputs) for c in model.stream(scene.chunks)]
        else:
            chunks = read_ordered(model, [scene], order)
        for indices, outputs in chunks:
            for j, i in enumerate(indices):
                y0, x0, y1, x1 = grid.window(i)
                centre[y0:y1, x0:x1] = torch.sigmoid(outputs["centre"][j, 0].float())
                fishing[y0:y1, x0:x1] = torch.sigmoid(outputs["is_fishing"][j, 0].float())
    return centre, fishing


def train_ordered(model: Any, seed: int, *, order: str, scenes: int, scenes_per_step: int, lr: float,
                  desc: str | None = None, **scene_kw: Any) -> tuple[int, float]:
    """Train ``model`` on ``scenes`` fresh scenes read in ``order`` (:func:`read_ordered`),
    ``scenes_per_step`` a step: the same optimiser as :func:`~xtstream.bench.probe.train_scenes`
    (AdamW, weight decay 0.01, gradients clipped at 1), the loss the mean of the scored pass's
    chunk losses, back-propagated through the state carried across the scene (as the row-major
    runs back-propagate a whole scene), a ``two_pass`` first pass included (with it cut off, 2
    seeds of 3 did not learn the task). Returns (scenes done, mean loss of the last tenth)."""
    from xtstream.tasks.xview3.loss import xview3_loss

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    steps, losses = max(1, scenes // scenes_per_step), []
    bar = None
    if desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=steps * scenes_per_step, desc=desc, unit="scene")
    model.train()
    for step in range(steps):
        group = [make_shore_scene(rng, scene_id=f"train{step}_{j}", **scene_kw) for j in range(scenes_per_step)]
        outs = read_ordered(model, group, order, through=True)
        regions = [scene_targets(s) for s in group]
        loss = 0.0
        for idx, out in outs:
            targets = {name: torch.from_numpy(np.concatenate([r[name][idx] for r in regions])) for name in regions[0]}
            loss = loss + xview3_loss(out, targets)[0]
        loss = loss / len(outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(scenes_per_step)
    if bar is not None:
        bar.close()
    return steps * scenes_per_step, float(np.mean(losses[-max(1, len(losses) // 10):]))


def predict_scene(model: Any, scene: ShoreScene, *, threshold: float = PEAK_THRESHOLD,
                  min_distance: int = 3, maps: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> list[dict[str, Any]]:
    """The model's detections on ``scene`` as xView3 prediction rows: peaks of the centre map,
    ``is_fishing`` = its probability at the peak ≥ 0.5 (``maps``: :func:`scene_maps`, if made)."""
    from xtstream.tasks.xview3.decode import find_peaks

    centre, fishing = scene_maps(model, scene) if maps is None else maps
    positions, _ = find_peaks(centre, threshold=threshold, min_distance=min_distance)[0]
    return [{"scene_id": scene.chunks[0].scene_id, "detect_scene_row": float(r), "detect_scene_column": float(c),
             "is_vessel": 1.0, "is_fishing": float(fishing[r, c] >= 0.5), "vessel_length_m": 0.0}
            for r, c in positions.tolist()]


def truth_rows(scene: ShoreScene) -> list[dict[str, Any]]:
    """``scene``'s vessels as xView3 ground-truth rows (near shore: 1 km from it, fishing)."""
    return [{"scene_id": scene.chunks[0].scene_id, "detect_scene_row": r, "detect_scene_column": c,
             "is_vessel": 1.0, "is_fishing": float(near), "vessel_length_m": float("nan"),
             "distance_from_shore_km": 1.0 if near else 9.0, "confidence": "HIGH"} for r, c, near in scene.vessels]


def evaluate(model: Any, *, scenes: int = EVAL_SCENES, seed: int = 10_000, order: str = "row_major",
             **scene_kw: Any) -> dict[str, float]:
    """``f1`` (F1_loc) and ``shore_f1`` (F1_fishing: the near-shore class) of ``model`` on
    ``scenes`` held-out scenes, plus the xView3 metric's counts and ``by_sight``: per :data:`SIGHTS`
    case, the vessels and the share whose near/far call (``is_fishing`` at the true centre) is right."""
    from xtstream.tasks.xview3.metric import score

    rng = np.random.default_rng(seed)
    preds, truth = [], []
    calls: dict[str, list[bool]] = {k: [] for k in SIGHTS}
    model.eval()
    for k in range(scenes):
        scene = make_shore_scene(rng, scene_id=f"eval{k}", **scene_kw)
        maps = scene_maps(model, scene, order)
        preds += predict_scene(model, scene, maps=maps)
        truth += truth_rows(scene)
        for v in scene.vessels:
            calls[sight(scene, v)].append(bool(maps[1][int(v[0]), int(v[1])] >= 0.5) == v[2])
    s = score(preds, truth)
    return {"f1": float(s["F1_loc"]), "shore_f1": float(s["F1_fishing"]), "tp": int(s["tp"]), "fp": int(s["fp"]),
            "fn": int(s["fn"]), "vessels": len(truth),
            "by_sight": {k: {"vessels": len(v), "right": round(float(np.mean(v)), 3) if v else None}
                         for k, v in calls.items()}}


def run_model(name: str, *, seed: int = 0, scenes: int = SCENES, scenes_per_step: int = SCENES_PER_STEP,
              eval_scenes: int = EVAL_SCENES, lr: float = LR, depth: int = 2, progress: bool = False,
              order: str = "row_major", **scene_kw: Any) -> dict[str, Any]:
    """Train model ``name`` (:data:`MODELS`) from ``seed`` on ``scenes`` fresh scenes, its scenes
    read in ``order`` (:data:`ORDERS`), and score it."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; known: {ORDERS}")
    context = MODELS[name]
    for key, value in LAYOUT.items():
        scene_kw.setdefault(key, value)
    chunk, region = scene_kw["chunk"], scene_kw.setdefault("region", 64)
    per_scene = -(-scene_kw["rows"] * scene_kw["cols"] // chunk)
    extra = {"region_mem": scene_kw["cols"]} if name == "xt_xl_rows" else {}
    model = probe_model(context, chunk=chunk, region=region, depth=depth, seed=seed, **extra)
    start = time.perf_counter()
    desc = f"context task {name} {order} seed {seed}" if progress else None
    if order != "row_major":
        done, final_loss = train_ordered(model, seed, order=order, scenes=scenes, scenes_per_step=scenes_per_step,
                                         lr=lr, desc=desc, **scene_kw)
    else:
        chunks, final_loss = train_scenes(model, training_stream(seed, scenes_per_step=scenes_per_step, **scene_kw),
                                          total=scenes * per_scene, per_scene=per_scene,
                                          scenes_per_step=scenes_per_step, lr=lr, desc=desc)
        done = chunks // per_scene
    scores = evaluate(model, scenes=eval_scenes, order=order, **scene_kw)
    return {**scores, "seconds": time.perf_counter() - start, "final_loss": final_loss, "scenes": done}


def sweep(models: tuple[str, ...] = DEFAULT_MODELS, *, seeds: int = 3, progress: bool = True,
          **kw: Any) -> dict[str, Any]:
    """Every model of ``models`` from ``seeds`` seeds (keywords go to :func:`run_model`, ``order``
    among them); the results document: per run (:func:`run_key`) the per-seed scores, and the
    summary keys ``f1_<key>``, ``shore_f1_<key>`` (means over seeds) with ``_std``."""
    results: dict[str, Any] = {"seeds": seeds, "runs": {}}
    order = kw.get("order", "row_major")
    layout = {key: kw.get(key, value) for key, value in LAYOUT.items()}
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}")
        per_seed = [run_model(name, seed=s, progress=progress, **kw) for s in range(seeds)]
        results["runs"][run_key(name, order, layout)] = {
            "model": name, "order": order, "layout": layout,
            "context": MODELS[name], "per_seed": per_seed, "threads": torch.get_num_threads(),
            "scenes": per_seed[0]["scenes"], "scenes_per_step": kw.get("scenes_per_step", SCENES_PER_STEP),
            "eval_scenes": kw.get("eval_scenes", EVAL_SCENES), "date": datetime.date.today().isoformat()}
    return summarise(results)


def run_key(name: str, order: str = "row_major", layout: dict[str, int] | None = None) -> str:
    """A run's key in the results (and in its summary keys): the model's name, ``_<order>``
    appended for orders other than row-major, ``_<rows>x<cols>c<chunk>`` for scenes other than
    the default :data:`LAYOUT`."""
    key = name if order == "row_major" else f"{name}_{order}"
    if layout and layout != LAYOUT:
        key += f"_{layout['rows']}x{layout['cols']}c{layout['chunk']}"
    return key


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute ``f1_<name>``, ``shore_f1_<name>`` and their ``_std`` from ``results["runs"]``
    (and each run's ``by_sight``, means over seeds), and ``shore_gain``: the best xT's ``shore_f1`` on
    the default layout minus region-only's (points of F1 x 100)."""
    for name, run in results["runs"].items():
        seen = [r["by_sight"] for r in run["per_seed"] if "by_sight" in r]
        if seen:  # the near/far calls right, per case of where the land is, mean over seeds
            run["by_sight"] = {k: round(float(np.mean([b[k]["right"] for b in seen if b[k]["right"] is not None])), 3)
                               for k in SIGHTS if any(b[k]["right"] is not None for b in seen)}
        for key in ("f1", "shore_f1"):
            values = [r[key] for r in run["per_seed"]]
            results[f"{key}_{name}"] = round(float(np.mean(values)), 3)
            results[f"{key}_{name}_std"] = round(float(np.std(values)), 3)
    xt = [results[f"shore_f1_{n}"] for n, run in results["runs"].items()
          if n != "region_only" and run.get("layout", LAYOUT) == LAYOUT]
    if xt and "region_only" in results["runs"]:
        results["shore_gain"] = round(100 * (max(xt) - results["shore_f1_region_only"]), 1)
    return results


def table(results: dict[str, Any]) -> str:
    """Mean ± std over seeds per model."""
    lines = [f"{'model':<20}{'f1':>16}{'shore_f1':>16}{'seconds':>10}"]
    for name, run in results["runs"].items():
        secs = np.mean([r["seconds"] for r in run["per_seed"]])
        lines.append(f"{name:<20}{results[f'f1_{name}']:>9.3f} ± {results[f'f1_{name}_std']:.3f}"
                     f"{results[f'shore_f1_{name}']:>9.3f} ± {results[f'shore_f1_{name}_std']:.3f}{secs:>10.0f}")
    return "\n".join(lines)
