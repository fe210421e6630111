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

The same probes for the **classification head** (``head="classification"``): every scene holds a
disc and a square in two regions placed as above (one chunk; two chunks; one above the other), and
its class is whether the disc comes first (:func:`make_order_scene`). The two classes hold the same
regions, so a region-only model's mean pool — a function of the regions' set — is blind by
construction; the score is the scene AUC of the class-1 probability after the scene's last chunk.
"""

from __future__ import annotations

import datetime
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from xtstream.data.chunk import RegionChunk
from xtstream.data.grid import RegionGrid

PROBES = ("in_chunk", "across_chunks", "vertical")
HEADS = ("xview3", "classification")
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
    chunks = _chunks(image, grid, chunk, scene_id, lambda idx: {"vessel": np.stack([_crop(vessel[None], grid, i)[0]
                                                                                     for i in idx])})
    return ProbeScene(chunks, marked, squares)


def make_order_scene(probe: str, disc_first: bool, rng: np.random.Generator, *, region: int = 64,
                     chunk: int = 4, scene_id: str = "probe") -> ProbeScene:
    """A probe scene for the classification head: noise (std 0.1), a disc (+3) in one region and a
    square (+1.5) in another; the scene's class (target ``label``, every region) is 1 when the
    disc comes first in row-major order. Every scene holds the same two things, so any function of
    the regions' *set* — a region-only model's mean pool — is blind to the class; only context,
    which sees where each is relative to the other, can tell.

    Where they go: ``in_chunk`` two of the row's ``C`` regions; ``across_chunks`` two different
    rows (chunks), any column each; ``vertical`` the same column, one in each row (two chunks
    apart). ``squares`` holds the square's ``(region, y, x)``."""
    lay = probe_layout(probe, chunk)
    grid = RegionGrid(lay.rows * region, lay.cols * region, region)
    image = rng.normal(0.0, 0.1, (1, grid.height, grid.width)).astype(np.float32)
    if probe == "in_chunk":
        first, second = sorted(int(c) for c in rng.choice(lay.cols, 2, replace=False))
    elif probe == "across_chunks":
        rows = sorted(int(r) for r in rng.choice(lay.rows, 2, replace=False))
        first, second = (r * lay.cols + int(rng.integers(lay.cols)) for r in rows)
    else:
        col = int(rng.integers(lay.cols))
        first, second = col, col + lay.cols
    disc, square = (first, second) if disc_first else (second, first)
    y0, x0, _, _ = grid.window(disc)
    yy, xx = np.mgrid[:region, :region]
    image[0, y0:y0 + region, x0:x0 + region][(yy - region / 2) ** 2 + (xx - region / 2) ** 2 <= MARKER_RADIUS**2] += 3.0
    y0, x0, _, _ = grid.window(square)
    dy, dx = (int(v) for v in rng.integers(4, region - SQUARE - 4, size=2))
    image[0, y0 + dy:y0 + dy + SQUARE, x0 + dx:x0 + dx + SQUARE] += 1.5
    chunks = _chunks(image, grid, chunk, scene_id, lambda idx: {"label": np.full(len(idx), int(disc_first), np.int64)})
    return ProbeScene(chunks, disc_first, [(square, dy, dx)])


def _chunks(image: np.ndarray, grid: RegionGrid, chunk: int, scene_id: str,
            targets: Callable[[list[int]], dict[str, np.ndarray]]) -> list[RegionChunk]:
    """``image (1, H, W)`` as chunks of ``chunk`` regions, each with ``targets(indices)``."""
    out = []
    for start in range(0, len(grid), chunk):
        idx = list(range(start, min(start + chunk, len(grid))))
        out.append(RegionChunk(scene_id, grid, idx, np.stack([_crop(image, grid, i) for i in idx]), targets(idx)))
    return out


def _crop(image: np.ndarray, grid: RegionGrid, index: int) -> np.ndarray:
    y0, x0, y1, x1 = grid.window(index)
    return image[:, y0:y1, x0:x1]


def scene_maker(head: str):
    """The scene generator of ``head``'s probes: :func:`make_scene` (``xview3``) or
    :func:`make_order_scene` (``classification``)."""
    if head not in HEADS:
        raise ValueError(f"unknown probe head {head!r}; known: {HEADS}")
    return make_scene if head == "xview3" else make_order_scene


def training_stream(probe: str, seed: int, *, region: int = 64, chunk: int = 4,
                    scenes_per_step: int = 1, head: str = "xview3") -> Iterator[RegionChunk]:
    """An endless stream of fresh probe scenes, half marked (half of each class), chunk by chunk —
    ``scenes_per_step`` scenes at a time, interleaved (chunk 0 of each, then chunk 1 of each, ...),
    so that the training engine batches their chunks at the same grid positions into one step."""
    make = scene_maker(head)
    rng = np.random.default_rng(seed)
    for k in itertools.count(0, scenes_per_step):
        yield from interleaved([make(probe, bool(rng.integers(2)), rng, region=region, chunk=chunk,
                                     scene_id=f"train{k + j}") for j in range(scenes_per_step)])


def interleaved(scenes: list[Any]) -> Iterator[RegionChunk]:
    """The chunks of ``scenes`` (of one layout) chunk 0 of each, then chunk 1 of each, ...: how the
    training engine batches chunks at the same grid positions into one step."""
    for i in range(len(scenes[0].chunks)):
        for scene in scenes:
            yield scene.chunks[i]


def object_auc(model: Any, probe: str, *, scenes: int = 32, seed: int = 10_000, region: int = 64,
               chunk: int = 4) -> float:
    """Object AUC of ``model`` on ``scenes`` held-out probe scenes (half marked): each square's
    mean vessel probability."""
    return held_out_auc(model, probe, "xview3", scenes=scenes, seed=seed, region=region, chunk=chunk)


def scene_auc(model: Any, probe: str, *, scenes: int = 128, seed: int = 10_000, region: int = 64,
              chunk: int = 4) -> float:
    """Scene AUC of a classification ``model`` on ``scenes`` held-out order scenes (half of each
    class): the class-1 probability after each scene's last chunk."""
    return held_out_auc(model, probe, "classification", scenes=scenes, seed=seed, region=region, chunk=chunk)


def held_out_auc(model: Any, probe: str, head: str, *, scenes: int, seed: int = 10_000, region: int = 64,
                 chunk: int = 4) -> float:
    """AUC of ``model`` on ``scenes`` held-out scenes of ``head``'s probe (half of each kind)."""
    make = scene_maker(head)
    rng = np.random.default_rng(seed)
    scores: dict[bool, list[float]] = {True: [], False: []}
    model.eval()
    with torch.no_grad():
        for k in range(scenes):
            scene = make(probe, k % 2 == 0, rng, region=region, chunk=chunk, scene_id=f"eval{k}")
            out = list(model.stream(scene.chunks))
            scores[scene.marked] += _square_scores(out, scene) if head == "xview3" else [_class_1(out[-1])]
    return auc(np.asarray(scores[True]), np.asarray(scores[False]))


def _square_scores(chunks: list[RegionChunk], scene: ProbeScene) -> list[float]:
    prob = {}
    for c in chunks:
        v = torch.sigmoid(c.outputs["vessel"][:, 0]).cpu().numpy()
        prob.update({i: v[j] for j, i in enumerate(c.indices)})
    return [float(prob[i][dy:dy + SQUARE, dx:dx + SQUARE].mean()) for i, dy, dx in scene.squares]


def _class_1(last: RegionChunk) -> float:
    return float(torch.softmax(last.outputs.float(), -1)[0, 1])


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney U."""
    if not len(positive) or not len(negative):
        return math.nan
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def probe_model(context: str, *, chunk: int = 4, region: int = 64, depth: int = 2, seed: int = 0,
                head: str = "xview3", backbone: str | None = None, **kw: Any):
    """The probes' model: a small ConvNeXt (4 stages, widths 16-128; or ``backbone``, a timm name,
    at its own size) over one band, ``context`` of width 64, ``depth`` layers, the xView3 head or a
    two-class classification head. Transformer-XL without region memory unless ``region_mem=``
    is given (what the recorded probe, context-task and receptive-field results measured)."""
    import xtstream

    scene_maker(head)  # a clear error for an unknown head
    torch.manual_seed(seed)
    opts = dict(region=region, chunk=chunk, context=context, dim=64, depth=depth, heads=4, head=head, in_chans=1)
    if backbone is None:
        opts.update(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))
    if head == "xview3":
        # stride 1: the probes score the vessel map per pixel, and keep their numbers comparable
        # with the runs before the head had a stride
        opts["head_kwargs"] = {"decoder_channels": [64, 32, 16], "stride": 1}
    else:
        opts["num_classes"] = 2
    if context == "xl":  # the measurements recorded are of token memory alone
        opts["region_mem"] = 0
    opts.update(kw)
    return xtstream.create_model(backbone or "convnext_atto", **opts)


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
    head: str = "xview3"


#: the context encoder's learning rate over the rest's in the probes, per head and context kind
#: (others: 1). xView3, Mamba: at 1x one seed of three had not learnt the across-chunk probe after
#: 6,000 scenes (4 a step); at 3x it had, and so had the other two (2026-12-04; see the README's
#: probe section)
CONTEXT_LR_SCALE = {"xview3": {"mamba": 3.0}, "classification": {}}

#: scenes per optimiser step, per head and probe. xView3: with one scene a step (each step marked or
#: not) xT-Mamba had not learnt the across-chunk probe after 4,000 scenes in any of 3 seeds, and
#: xT-XL learnt it after ~1,200 scenes in one run and not in 4,000 in another of the same seed;
#: ``in_chunk`` is learnt within 1,500 one-scene steps by every encoder. Classification: a step of
#: one scene is one class, and with one a step no encoder left AUC 0.5 in 1,600 scenes (the loss
#: above ln 2: each step swings the output); with 8 a step xT-XL and xT-Mamba reach 1.0 by 4,000
SCENES_PER_STEP = {"xview3": {"in_chunk": 1, "across_chunks": 4, "vertical": 4},
                   "classification": {"in_chunk": 8, "across_chunks": 8, "vertical": 8}}

#: training scenes per model by default: as many as fit the ten CPU minutes (one core) per model
#: the probes allow, at the probe's scenes per step (a classification scene trains ~3x faster: no
#: decoder)
DEFAULT_SCENES = {"xview3": {"in_chunk": 1500, "across_chunks": 6000, "vertical": 6000},
                  "classification": {"in_chunk": 6000, "across_chunks": 16000, "vertical": 16000}}

#: held-out scenes scored per model: an xView3 scene gives several squares, a classification
#: scene one score (128 scenes: a blind model's AUC within about ±0.05 of 0.5)
EVAL_SCENES = {"xview3": 32, "classification": 128}


def run_probe(probe: str, context: str, *, steps: int | None = None, scenes: int | None = None, seed: int = 0,
              lr: float = 3e-4, chunk: int = 4, region: int = 64, depth: int = 2, eval_scenes: int | None = None,
              progress: bool = False, bptt_chunks: int | None = None, context_lr_scale: float | None = None,
              scenes_per_step: int | None = None, head: str = "xview3",
              **model_kw: Any) -> ProbeResult:
    """Train a fresh probe model on ``probe``'s scenes, then score it on held-out scenes.

    ``head``: ``"xview3"`` (the vessel probes, object AUC) or ``"classification"`` (the order
    probes, scene AUC). Budget: ``scenes`` training scenes (``None``: :data:`DEFAULT_SCENES`;
    ``steps``, when given, counts chunk forwards instead); ``eval_scenes`` held-out scenes
    (``None``: :data:`EVAL_SCENES`).
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
    scene_maker(head)  # a clear error for an unknown head, before any training
    per_scene = scene_chunks(probe, chunk)
    scenes = DEFAULT_SCENES[head][probe] if scenes is None else scenes
    scenes_per_step = SCENES_PER_STEP[head][probe] if scenes_per_step is None else scenes_per_step
    eval_scenes = EVAL_SCENES[head] if eval_scenes is None else eval_scenes
    total = steps if steps is not None else scenes * per_scene
    model = probe_model(context, chunk=chunk, region=region, depth=depth, seed=seed, head=head, **model_kw)
    if context_lr_scale is None:
        context_lr_scale = CONTEXT_LR_SCALE[head].get(context, 1.0)
    start = time.perf_counter()
    stream = training_stream(probe, seed, region=region, chunk=chunk, scenes_per_step=scenes_per_step, head=head)
    done, final_loss = train_scenes(model, stream, total=total, per_scene=per_scene, scenes_per_step=scenes_per_step,
                                    lr=lr, context_lr_scale=context_lr_scale, bptt_chunks=bptt_chunks,
                                    desc=f"{probe}/{context}/{head}/seed {seed}" if progress else None)
    score = (object_auc if head == "xview3" else scene_auc)(model, probe, scenes=eval_scenes, region=region,
                                                          chunk=chunk)
    return ProbeResult(probe, context, seed, done, score, time.perf_counter() - start,
                       final_loss, scenes_per_step, context_lr_scale, head)


def train_scenes(model: Any, stream: Iterator[RegionChunk], *, total: int, per_scene: int, scenes_per_step: int,
                 lr: float, context_lr_scale: float = 1.0, bptt_chunks: int | None = None,
                 desc: str | None = None) -> tuple[int, float]:
    """Train ``model`` on ``stream`` (scenes of ``per_scene`` chunks, ``scenes_per_step`` at a time
    interleaved) for ``total`` chunk forwards: AdamW (weight decay 0.01; the context at
    ``context_lr_scale`` x ``lr``), gradients clipped at 1, one ``per_scene`` step per group of
    scenes. Returns (chunk forwards done, mean loss of the last tenth of the steps); ``desc``:
    show a progress bar so named."""
    from xtstream.engine import train_chunks
    from xtstream.engine.optim import context_param_groups

    opt = torch.optim.AdamW(context_param_groups(model, lr, context_lr_scale), lr=lr, weight_decay=0.01)
    # per_scene: one step per scenes_per_step scenes for every kind (a whole-scene encoder
    # yields each scene alone, so per_chunk would step it once per scene)
    records = train_chunks(model, stream, opt, clip_grad_norm=1.0,
                           bptt_chunks=per_scene if bptt_chunks is None else bptt_chunks,
                           policy="per_scene", scenes_per_step=scenes_per_step)
    bar = None
    if desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="chunk")
    done, losses = 0, []
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
    return done, float(np.mean(losses[-max(1, len(losses) // 10):]))


_STREAMING_RUNS = (("in_chunk", "none"), ("in_chunk", "xl"), ("in_chunk", "mamba"), ("in_chunk", "full"),
                   ("across_chunks", "none"), ("across_chunks", "xl"), ("across_chunks", "mamba"))
#: what ``xtstream bench probe`` runs by default, ``(probe, context, head)``: the in-chunk and
#: across-chunk probes for the streaming encoders and the region-only baseline, in_chunk for the
#: whole-scene encoder too; for the xView3 head and the classification head
DEFAULT_RUNS = tuple((p, c, h) for h in HEADS for p, c in _STREAMING_RUNS)
#: the vertical probe (the region above, two chunks back in row-major order): region orders'
#: business (``--runs vertical:xl,...``)
VERTICAL_RUNS = (("vertical", "none", "xview3"), ("vertical", "xl", "xview3"), ("vertical", "mamba", "xview3"))


def run_name(probe: str, context: str, head: str = "xview3") -> str:
    """A run's key in the results: ``<context>_<probe>``, ``_classification`` appended for that
    head (the summary keys are ``auc_`` + it, ``region_only`` for ``none``)."""
    return f"{context}_{probe}" + ("" if head == "xview3" else f"_{head}")


def sweep(runs: tuple[tuple[str, ...], ...] = DEFAULT_RUNS, seeds: int = 3, steps: int | None = None,
          scenes: int | None = None, progress: bool = True, **kw: Any) -> dict[str, Any]:
    """Every ``(probe, context[, head])`` of ``runs`` trained from ``seeds`` seeds (``scenes``
    training scenes each — ``None``: :data:`DEFAULT_SCENES` — or ``steps`` chunk forwards; other
    keywords go to :func:`run_probe`); returns the results document: per run mean/std/per-seed AUC
    and seconds, plus the summary keys ``auc_<context>_<probe>[_classification]`` (means),
    ``auc_region_only`` (the worst region-only mean, i.e. the one closest to solving a probe) and
    ``seeds``. Each run records its own budget (``scenes``, ``scenes_per_step``)."""
    bptt = kw.get("bptt_chunks")
    budget = None if steps is not None else (DEFAULT_SCENES if scenes is None else scenes)
    results: dict[str, Any] = {"seeds": seeds, "scenes": budget, "steps": steps,
                               "bptt_chunks": "scene" if bptt is None else bptt, "runs": {}}
    for probe, context, *rest in runs:
        head = rest[0] if rest else "xview3"
        per_seed = [run_probe(probe, context, steps=steps, scenes=scenes, seed=s, progress=progress, head=head,
                              **kw) for s in range(seeds)]
        aucs = [r.auc for r in per_seed]
        results["runs"][run_name(probe, context, head)] = {
            "probe": probe, "context": context, "head": head, "auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
            "auc_per_seed": aucs, "seconds_per_model": float(np.mean([r.seconds for r in per_seed])),
            "scenes": per_seed[0].steps // scene_chunks(probe, kw.get("chunk", 4)), "chunk_forwards": per_seed[0].steps,
            "final_loss": float(np.mean([r.final_loss for r in per_seed])),
            "scenes_per_step": per_seed[0].scenes_per_step,
            "context_lr_scale": per_seed[0].context_lr_scale if context != "none" else None,
            "threads": torch.get_num_threads(),
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
        name = run_name(run["probe"], "region_only" if run["context"] == "none" else run["context"],
                        run.get("head", "xview3"))
        results[f"auc_{name}"] = round(run["auc_mean"], 3)
        results[f"auc_{name}_std"] = round(run["auc_std"], 3)
    only = [r["auc_mean"] for r in results["runs"].values() if r["context"] == "none"]
    if only:
        results["auc_region_only"] = round(max(only), 3)
    return results


def parse_runs(text: str) -> tuple[tuple[str, str, str], ...]:
    """``"in_chunk:xl,across_chunks:none:classification"`` -> ``(("in_chunk", "xl", "xview3"),
    ("across_chunks", "none", "classification"))`` (the head defaults to ``xview3``);
    ``ValueError`` naming the bad ones."""
    runs = [tuple(r.split(":")) for r in text.split(",")]
    bad = [r for r in runs if len(r) not in (2, 3) or r[0] not in PROBES or (len(r) == 3 and r[2] not in HEADS)]
    if bad:
        raise ValueError(f"--runs wants probe:context[:head] with probes {PROBES} and heads {HEADS}, got {bad}")
    return tuple((r[0], r[1], r[2] if len(r) == 3 else "xview3") for r in runs)


def table(results: dict[str, Any]) -> str:
    """The sweep as a text table: (probe, head) x context, mean ± std over seeds."""
    rows = list(dict.fromkeys((r["probe"], r.get("head", "xview3")) for r in results["runs"].values()))
    contexts = list(dict.fromkeys(r["context"] for r in results["runs"].values()))
    lines = ["probe".ljust(30) + "".join(c.rjust(16) for c in contexts)]
    for p, h in rows:
        cells = []
        for c in contexts:
            r = results["runs"].get(run_name(p, c, h))
            cells.append(("-" if r is None else f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}").rjust(16))
        lines.append(f"{p} ({h})".ljust(30) + "".join(cells))
    return "\n".join(lines)
