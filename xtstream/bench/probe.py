"""Context probes: tasks that only context can solve, to see whether a trained xT uses its context.

Every probe scene holds bright 16 x 16 squares in some regions (in every scene); the vessel mask
marks them **only when the scene is marked** — by a bright disc in a region elsewhere. A model that
decodes each region from its own pixels cannot know; a model whose context reaches the outputs can.
The score is the object AUC: each square's mean vessel probability, marked scenes' squares against
unmarked scenes' (0.5: blind to the marker; 1.0: separates them perfectly).

Probes (regions of ``R`` px, chunks of ``C`` = one region row unless said):

* ``in_chunk`` — one row of ``C`` regions: the marker in region 0, squares in regions 1..C-1, the
  same chunk. Any context encoder can solve it, without memory.
* ``across_chunks`` — three rows: the marker in chunk 0 (region 0), squares in chunks 1 and 2.
  Transformer-XL reaches chunk 2 from chunk 0 only through two layers of memory (depth >= 2);
  Mamba through its carried state.
* ``vertical`` — two rows of ``2 C`` regions: the marker in row 0, squares in the region directly
  below it, which is two chunks later in row-major order.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from xtstream.data.chunk import RegionChunk
from xtstream.data.grid import RegionGrid

PROBES = ("in_chunk", "across_chunks", "vertical")
SQUARE = 16
MARKER_RADIUS = 8


@dataclass(frozen=True)
class ProbeLayout:
    """Where a probe puts things: grid ``rows x cols`` regions, chunk size, marker region (or
    ``None``: chosen per scene in row 0), object regions (``None``: the region below the marker)."""

    rows: int
    cols: int
    chunk: int
    marker: int | None
    objects: tuple[int, ...] | None


def scene_chunks(probe: str, chunk: int = 4) -> int:
    """Chunks in one scene of ``probe`` (``in_chunk`` 1, ``across_chunks`` 3, ``vertical`` 4)."""
    lay = probe_layout(probe, chunk)
    return -(-lay.rows * lay.cols // chunk)


def probe_layout(probe: str, chunk: int = 4) -> ProbeLayout:
    """The layout of ``probe`` with chunks of ``chunk`` regions (one region row, or half of one)."""
    if probe == "in_chunk":
        return ProbeLayout(1, chunk, chunk, 0, tuple(range(1, chunk)))
    if probe == "across_chunks":
        return ProbeLayout(3, chunk, chunk, 0, tuple(range(chunk, 3 * chunk)))
    if probe == "vertical":
        return ProbeLayout(2, 2 * chunk, chunk, None, None)
    raise ValueError(f"unknown probe {probe!r}; known: {PROBES}")


@dataclass
class ProbeScene:
    """One probe scene as chunks, plus where its squares are (for scoring)."""

    chunks: list[RegionChunk]
    marked: bool
    squares: list[tuple[int, int, int]] = field(default_factory=list)  # (region index, y, x)


def make_scene(probe: str, marked: bool, rng: np.random.Generator, *, region: int = 64, chunk: int = 4,
               scene_id: str = "probe") -> ProbeScene:
    """A probe scene of one band: noise (std 0.1), squares (+1.5) and, when ``marked``, the marker
    disc (+3). Targets: ``vessel`` (the squares when marked, else zeros)."""
    lay = probe_layout(probe, chunk)
    grid = RegionGrid(lay.rows * region, lay.cols * region, region)
    image = rng.normal(0.0, 0.1, (1, grid.height, grid.width)).astype(np.float32)
    vessel = np.zeros((grid.height, grid.width), np.float32)
    marker = lay.marker if lay.marker is not None else int(rng.integers(lay.cols))
    objects = lay.objects if lay.objects is not None else (marker + lay.cols,)
    if marked:
        y0, x0, _, _ = grid.window(marker)
        yy, xx = np.mgrid[:region, :region]
        disc = (yy - region / 2) ** 2 + (xx - region / 2) ** 2 <= MARKER_RADIUS**2
        image[0, y0:y0 + region, x0:x0 + region][disc] += 3.0
    squares = []
    for index in objects:
        y0, x0, _, _ = grid.window(index)
        dy, dx = (int(v) for v in rng.integers(4, region - SQUARE - 4, size=2))
        image[0, y0 + dy:y0 + dy + SQUARE, x0 + dx:x0 + dx + SQUARE] += 1.5
        if marked:
            vessel[y0 + dy:y0 + dy + SQUARE, x0 + dx:x0 + dx + SQUARE] = 1.0
        squares.append((index, dy, dx))
    chunks = []
    for start in range(0, len(grid), chunk):
        idx = list(range(start, min(start + chunk, len(grid))))
        pixels = np.stack([_crop(image, grid, i) for i in idx])
        target = np.stack([_crop(vessel[None], grid, i)[0] for i in idx])
        chunks.append(RegionChunk(scene_id, grid, idx, pixels, {"vessel": target}))
    return ProbeScene(chunks, marked, squares)


def _crop(image: np.ndarray, grid: RegionGrid, index: int) -> np.ndarray:
    y0, x0, y1, x1 = grid.window(index)
    return image[:, y0:y1, x0:x1]


def training_stream(probe: str, seed: int, *, region: int = 64, chunk: int = 4,
                    scenes_per_step: int = 1) -> Iterator[RegionChunk]:
    """An endless stream of fresh probe scenes, half marked, chunk by chunk — ``scenes_per_step``
    scenes at a time, interleaved (chunk 0 of each, then chunk 1 of each, ...), so that the
    training engine batches their chunks at the same grid positions into one step."""
    rng = np.random.default_rng(seed)
    k = 0
    while True:
        scenes = [make_scene(probe, bool(rng.integers(2)), rng, region=region, chunk=chunk,
                             scene_id=f"train{k + j}") for j in range(scenes_per_step)]
        k += scenes_per_step
        for i in range(len(scenes[0].chunks)):
            for scene in scenes:
                yield scene.chunks[i]


def object_auc(model: Any, probe: str, *, scenes: int = 32, seed: int = 10_000, region: int = 64,
               chunk: int = 4) -> float:
    """Object AUC of ``model`` on ``scenes`` held-out probe scenes (half marked)."""
    rng = np.random.default_rng(seed)
    scores = {True: [], False: []}
    model.eval()
    with torch.no_grad():
        for k in range(scenes):
            scene = make_scene(probe, k % 2 == 0, rng, region=region, chunk=chunk, scene_id=f"eval{k}")
            prob = {}
            for c in model.stream(scene.chunks):
                v = torch.sigmoid(c.outputs["vessel"][:, 0]).cpu().numpy()
                prob.update({i: v[j] for j, i in enumerate(c.indices)})
            for index, dy, dx in scene.squares:
                scores[scene.marked].append(float(prob[index][dy:dy + SQUARE, dx:dx + SQUARE].mean()))
    return auc(np.asarray(scores[True]), np.asarray(scores[False]))


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney U."""
    if not len(positive) or not len(negative):
        return math.nan
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def probe_model(context: str, *, chunk: int = 4, region: int = 64, depth: int = 2, seed: int = 0,
                **kw: Any):
    """The probes' model: a small ConvNeXt (4 stages, widths 16-128) over one band, ``context``
    of width 64, ``depth`` layers, the xView3 head."""
    import xtstream

    torch.manual_seed(seed)
    opts = dict(region=region, chunk=chunk, context=context, dim=64, depth=depth, heads=4, head="xview3",
                in_chans=1, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                # stride 1: the probes score the vessel map per pixel, and keep their numbers
                # comparable with the runs before the head had a stride
                head_kwargs={"decoder_channels": [64, 32, 16], "stride": 1})
    opts.update(kw)
    return xtstream.create_model("convnext_atto", **opts)


@dataclass
class ProbeResult:
    probe: str
    context: str
    seed: int
    steps: int  # chunk forwards trained
    auc: float
    seconds: float
    final_loss: float
    scenes_per_step: int = 1
    context_lr_scale: float = 1.0


#: the context encoder's learning rate over the rest's in the probes, per context kind (others: 1).
#: Mamba: at 1x one seed of three had not learnt the across-chunk probe after 6,000 scenes (4 a
#: step); at 3x it had, and so had the other two (2026-12-04; see the README's probe section)
CONTEXT_LR_SCALE = {"mamba": 3.0}

#: scenes per optimiser step, per probe: with one scene a step (each step marked or not) xT-Mamba
#: had not learnt the across-chunk probe after 4,000 scenes in any of 3 seeds, and xT-XL learnt it
#: after ~1,200 scenes in one run and not in 4,000 in another of the same seed; ``in_chunk`` is
#: learnt within 1,500 one-scene steps by every encoder
SCENES_PER_STEP = {"in_chunk": 1, "across_chunks": 4, "vertical": 4}

#: training scenes per model by default: as many as fit the ten CPU minutes (one core) per model
#: the probes allow, at the probe's scenes per step
DEFAULT_SCENES = {"in_chunk": 1500, "across_chunks": 6000, "vertical": 6000}


def run_probe(probe: str, context: str, *, steps: int | None = None, scenes: int | None = None, seed: int = 0,
              lr: float = 3e-4, chunk: int = 4, region: int = 64, depth: int = 2, eval_scenes: int = 32,
              progress: bool = False, bptt_chunks: int | None = None, context_lr_scale: float | None = None,
              scenes_per_step: int | None = None,
              **model_kw: Any) -> ProbeResult:
    """Train a fresh probe model on ``probe``'s scenes, then score it on held-out scenes.

    Budget: ``scenes`` training scenes (``None``: :data:`DEFAULT_SCENES`; ``steps``, when given,
    counts chunk forwards instead).
    ``bptt_chunks``: chunks back-propagated together through the carried context state, one
    optimiser step per window (``None``: one whole probe scene per window — what lets a chunk learn
    to *write* into the memory what a later chunk needs; ``1``: stop-gradient memory, a step per
    chunk). The compute per chunk is the same either way.
    ``context_lr_scale``: the context encoder's learning rate over ``lr`` (see
    :func:`xtstream.engine.optim.context_param_groups`; ``None``: :data:`CONTEXT_LR_SCALE`).
    ``scenes_per_step``: scenes per optimiser step, their chunks batched. One probe scene is
    either marked or not, so a step on one scene pushes its squares towards vessel or not-vessel
    as a whole; only a step over several carries the *difference* the marker makes (``None``:
    :data:`SCENES_PER_STEP`).
    """
    from xtstream.engine import train_chunks
    from xtstream.engine.optim import context_param_groups

    per_scene = scene_chunks(probe, chunk)
    bptt_chunks = per_scene if bptt_chunks is None else bptt_chunks
    scenes = DEFAULT_SCENES[probe] if scenes is None else scenes
    scenes_per_step = SCENES_PER_STEP[probe] if scenes_per_step is None else scenes_per_step
    total = steps if steps is not None else scenes * per_scene
    model = probe_model(context, chunk=chunk, region=region, depth=depth, seed=seed, **model_kw)
    if context_lr_scale is None:
        context_lr_scale = CONTEXT_LR_SCALE.get(context, 1.0)
    opt = torch.optim.AdamW(context_param_groups(model, lr, context_lr_scale), lr=lr, weight_decay=0.01)
    start = time.perf_counter()
    stream = training_stream(probe, seed, region=region, chunk=chunk, scenes_per_step=scenes_per_step)
    losses = []
    # per_scene: one step per scenes_per_step scenes for every kind (a whole-scene encoder
    # yields each scene alone, so per_chunk would step it once per scene)
    records = train_chunks(model, stream, opt, clip_grad_norm=1.0, bptt_chunks=bptt_chunks,
                           policy="per_scene", scenes_per_step=scenes_per_step)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"{probe}/{context}/seed {seed}", unit="chunk")
    done = 0
    for record in records:
        losses.append(record["loss"])
        n = per_scene * len(record["scenes"])
        done += n
        if bar is not None:
            bar.update(n)
        if done >= total:
            break
    if bar is not None:
        bar.close()
    score = object_auc(model, probe, scenes=eval_scenes, region=region, chunk=chunk)
    tail = losses[-max(1, len(losses) // 10):]
    return ProbeResult(probe, context, seed, done, score, time.perf_counter() - start,
                       float(np.mean(tail)), scenes_per_step, context_lr_scale)


#: what ``xtstream bench probe`` runs by default: the in-chunk and across-chunk probes for the
#: streaming encoders and the region-only baseline, in_chunk for the whole-scene encoder too
DEFAULT_RUNS = (("in_chunk", "none"), ("in_chunk", "xl"), ("in_chunk", "mamba"), ("in_chunk", "full"),
                ("across_chunks", "none"), ("across_chunks", "xl"), ("across_chunks", "mamba"))
#: the vertical probe (the region above, two chunks back in row-major order): region orders'
#: business (``--runs vertical:xl,...``)
VERTICAL_RUNS = (("vertical", "none"), ("vertical", "xl"), ("vertical", "mamba"))


def sweep(runs: tuple[tuple[str, str], ...] = DEFAULT_RUNS, seeds: int = 3, steps: int | None = None,
          scenes: int | None = None, progress: bool = True, **kw: Any) -> dict[str, Any]:
    """Every ``(probe, context)`` of ``runs`` trained from ``seeds`` seeds (``scenes`` training
    scenes each — ``None``: :data:`DEFAULT_SCENES` — or ``steps`` chunk forwards; other keywords
    go to :func:`run_probe`); returns the results document: per run mean/std/per-seed AUC and
    seconds, plus the summary keys
    ``auc_<context>_<probe>`` (means), ``auc_region_only`` (the worst region-only mean, i.e. the
    one closest to solving a probe) and ``seeds``."""
    bptt = kw.get("bptt_chunks")
    budget = None if steps is not None else (DEFAULT_SCENES if scenes is None else scenes)
    results: dict[str, Any] = {"seeds": seeds, "scenes": budget, "steps": steps,
                               "bptt_chunks": "scene" if bptt is None else bptt, "runs": {}}
    for probe, context in runs:
        per_seed = [run_probe(probe, context, steps=steps, scenes=scenes, seed=s, progress=progress, **kw)
                    for s in range(seeds)]
        aucs = [r.auc for r in per_seed]
        results["runs"][f"{context}_{probe}"] = {
            "probe": probe, "context": context, "auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
            "auc_per_seed": aucs, "seconds_per_model": float(np.mean([r.seconds for r in per_seed])),
            "scenes": per_seed[0].steps // scene_chunks(probe, kw.get("chunk", 4)), "chunk_forwards": per_seed[0].steps,
            "final_loss": float(np.mean([r.final_loss for r in per_seed])),
            "scenes_per_step": per_seed[0].scenes_per_step,
            "context_lr_scale": per_seed[0].context_lr_scale if context != "none" else None,
            "date": datetime.date.today().isoformat()}
    return summarise(results)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute the summary keys of a results document from its ``runs`` — after :func:`sweep`,
    or after some runs were rerun and merged in: ``auc_<context>_<probe>`` (and ``_std``), with
    ``region_only`` for ``none``, and ``auc_region_only`` (the worst region-only mean, i.e. the one
    closest to solving a probe)."""
    for key in [k for k in results if k.startswith("auc_")]:
        del results[key]
    for run in results["runs"].values():
        name = "region_only" if run["context"] == "none" else run["context"]
        results[f"auc_{name}_{run['probe']}"] = round(run["auc_mean"], 3)
        results[f"auc_{name}_{run['probe']}_std"] = round(run["auc_std"], 3)
    only = [r["auc_mean"] for r in results["runs"].values() if r["context"] == "none"]
    if only:
        results["auc_region_only"] = round(max(only), 3)
    return results


def parse_runs(text: str) -> tuple[tuple[str, str], ...]:
    """``"in_chunk:xl,across_chunks:none"`` -> ``(("in_chunk", "xl"), ("across_chunks", "none"))``;
    ``ValueError`` naming the bad pairs."""
    runs = tuple(tuple(r.split(":", 1)) for r in text.split(","))
    bad = [r for r in runs if len(r) != 2 or r[0] not in PROBES]
    if bad:
        raise ValueError(f"--runs wants probe:context pairs with probes {PROBES}, got {bad}")
    return runs  # type: ignore[return-value]


def table(results: dict[str, Any]) -> str:
    """The sweep as a text table: probe x context, mean ± std over seeds."""
    probes = list(dict.fromkeys(r["probe"] for r in results["runs"].values()))
    contexts = list(dict.fromkeys(r["context"] for r in results["runs"].values()))
    lines = ["probe".ljust(15) + "".join(c.rjust(16) for c in contexts)]
    for p in probes:
        cells = []
        for c in contexts:
            r = results["runs"].get(f"{c}_{p}")
            cells.append(("-" if r is None else f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}").rjust(16))
        lines.append(p.ljust(15) + "".join(cells))
    return "\n".join(lines)
