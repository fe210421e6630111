"""Effective receptive field (the paper's §7.1): which input pixels one output depends on.

The map is ``|d output / d input|`` summed over bands, for one scalar output at the centre of a
*target* region, with the gradient carried through the context state from chunk to chunk. A
region-only model's map is zero outside the target region (the region encoder and the xView3 head
work region by region); xT's reaches back as far as its context encoder carries information.

How far Transformer-XL reaches, stated exactly (:func:`xl_reach_formula`, measured equal by
:func:`reach_sweep` and ``tests/test_erf.py``): layer ``n`` of chunk ``c`` attends to its own chunk
and to its memory, layer ``n``'s *inputs* for the ``m`` chunks before (``mem_len=None``: ``m = 1``,
the previous chunk). Those inputs were computed by layers ``1..n-1`` of those chunks, so after
``depth`` layers a token of chunk ``c`` has seen chunks ``c - depth * m`` to ``c`` — every region of
each, from the first. A target at position ``p`` of its chunk therefore reaches ``depth * m * chunk
+ p`` regions back (capped at the scene's first region), and also the regions after it in its own
chunk (attention inside a chunk is not causal). Mamba's carried state reaches the scene's first
region at any depth; ``full`` sees the whole scene, after the target too.

The maps here are of models at random initialisation unless the caller brings trained ones: which
pixels *can* reach an output is fixed by the architecture; how much they do is learnt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from xtstream.data.grid import RegionGrid
from xtstream.models.xt import carried_state

#: the models :func:`compare` measures: label -> context kind
CONTEXTS = {"region_only": "none", "xl": "xl", "mamba": "mamba", "full": "full"}


# -- the measurement -----------------------------------------------------------------------------
def effective_receptive_field(model: Any, image: np.ndarray, *, target: int | None = None) -> np.ndarray:
    """``|d output / d image|`` summed over bands: ``image (bands, H, W)`` -> ``(H, W)`` float32.

    ``H`` and ``W`` must be multiples of ``model.config.region``. The scene is cut into regions
    (row-major, :class:`~xtstream.data.grid.RegionGrid`) and run chunk by chunk of
    ``model.config.chunk`` regions with the context state handed on *with* its gradient
    (``detach_state`` is set to ``False`` for the call and restored after, also on error). The
    output is, for the xView3 head, the ``vessel`` logit at the centre pixel of region ``target``
    (default: the scene's last region, so every other region is context); for a scene head (e.g.
    classification), the class-0 logit of the scene so far after the target's chunk — its pool
    carries the earlier chunks' tokens detached, so they reach it only through the context, and
    every region of the target's chunk is in it directly.

    Streaming models run only up to the target's chunk (later chunks cannot reach it); a
    whole-scene model (``context="full"``) sees the whole scene. The model runs in eval mode (no
    dropout; its mode is restored). Memory grows with the scene — every chunk's graph is kept for
    the one backward — so this is a measurement for small scenes, not a streaming tool.
    """
    grid = scene_grid(model, image)
    target = len(grid) - 1 if target is None else _check_target(grid, target)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), carried_state(model):
            pixels = torch.tensor(np.asarray(image), dtype=torch.float32, device=device, requires_grad=True)
            (grad,) = torch.autograd.grad(target_output(model, pixels, grid, target), pixels)
    finally:
        model.train(was_training)
    return grad.abs().sum(0).cpu().numpy()


def scene_grid(model: Any, image: np.ndarray) -> RegionGrid:
    """The region grid of ``image (bands, H, W)``; ``ValueError`` unless ``H``, ``W`` are whole
    regions and ``bands`` is the model's ``in_chans``."""
    c = model.config
    shape = tuple(np.shape(image))
    if len(shape) != 3:
        raise ValueError(f"effective_receptive_field: image must be (bands, H, W), got shape {shape}")
    bands, h, w = shape
    if h % c.region or w % c.region or not h or not w:
        raise ValueError(f"effective_receptive_field: image is {h} x {w} px, not a whole number of "
                         f"{c.region} x {c.region} regions (H and W must be multiples of {c.region})")
    if bands != c.in_chans:
        raise ValueError(f"effective_receptive_field: image has {bands} bands, the model takes {c.in_chans}")
    return RegionGrid(h, w, c.region)


def _check_target(grid: RegionGrid, target: int) -> int:
    if not 0 <= int(target) < len(grid):
        raise ValueError(f"effective_receptive_field: target region {target} outside the "
                         f"{grid.rows} x {grid.cols} grid (0..{len(grid) - 1})")
    return int(target)


def target_output(model: Any, pixels: Tensor, grid: RegionGrid, target: int) -> Tensor:
    """The scalar :func:`effective_receptive_field` differentiates, from ``pixels (bands, H, W)``."""
    size = model.config.chunk
    stop = len(grid) if model.whole_scene else min(len(grid), (target // size + 1) * size)
    features, positions = [], []
    for start in range(0, stop, size):
        idx = range(start, min(start + size, stop))
        regions = torch.stack([pixels[(slice(None), *grid.window(i).slices())] for i in idx])  # (C, bands, R, R)
        # the encoder itself, not model.forward: a config.grad_ratio < 1 would cut some regions' gradient
        features.append(model.encoder(regions))
        positions.append(torch.tensor([grid.position(i) for i in idx], device=pixels.device))
    if model.whole_scene:
        outs = model.forward_scene(features, positions)
    else:
        outs, state = [], None
        for f, p in zip(features, positions):
            out, state = model.forward_features(f, p, state)
            outs.append(out)
    return _centre_scalar(outs[target // size], target % size, model.head.per_region)


def _centre_scalar(out: Any, k: int, per_region: bool) -> Tensor:
    if isinstance(out, dict):
        if "vessel" not in out:
            raise ValueError(f"effective_receptive_field: a dict head's outputs need a 'vessel' map, got {sorted(out)}")
        vessel = out["vessel"][k, 0]  # (R / s, R / s): the head's stride s is in the map's size
        return vessel[vessel.shape[0] // 2, vessel.shape[1] // 2]
    row = out[k] if per_region else out[0]  # a scene head: (B, classes), the scene so far
    return row.flatten()[0]


# -- reading a map -------------------------------------------------------------------------------
def region_mass(erf_map: np.ndarray, grid: RegionGrid) -> np.ndarray:
    """``(H, W)`` map -> ``(regions,)`` sum of ``|grad|`` in each region, row-major."""
    if tuple(erf_map.shape) != grid.padded_shape:
        raise ValueError(f"region_mass: map is {tuple(erf_map.shape)}, the grid covers {grid.padded_shape}")
    r = grid.region
    return erf_map.reshape(grid.rows, r, grid.cols, r).sum(axis=(1, 3)).reshape(-1)


def reach_in_regions(erf_map: np.ndarray, grid: RegionGrid, target: int) -> int:
    """How many regions back (row-major) from ``target`` the farthest region with any non-zero
    gradient is: ``0`` = only the target region itself (regions after it do not count)."""
    mass = region_mass(erf_map, grid)[: target + 1]
    reached = np.flatnonzero(mass > 0)
    return int(target - reached[0]) if len(reached) else 0


def share_outside(erf_map: np.ndarray, grid: RegionGrid, target: int) -> float:
    """The share of the map's gradient mass outside region ``target`` (0 = all inside it)."""
    mass = region_mass(erf_map, grid)
    total = float(mass.sum())
    return 0.0 if total == 0 else float(1.0 - mass[target] / total)


def xl_reach_formula(depth: int, chunk: int, mem_chunks: int = 1, *, target: int | None = None) -> int:
    """Regions back that a Transformer-XL xT reaches from region ``target`` (row-major index):
    ``depth * mem_chunks * chunk + target % chunk``, capped at ``target`` (the scene's first region).

    ``mem_chunks``: chunks of memory per layer (``mem_len=None``: 1; ``mem_len`` a multiple ``m``
    of a chunk's tokens: ``m``). ``target=None``: a target at the last position of its chunk, far
    enough into the scene not to be capped: ``(depth * mem_chunks + 1) * chunk - 1``. See the
    module docstring for why (each layer reaches one memory span further, from its first region).

    >>> xl_reach_formula(2, 4)            # the last region of a chunk: two chunks back, to their start
    11
    >>> xl_reach_formula(1, 4, target=9)  # position 1 of chunk 2: chunk 1 from its start
    5
    """
    position = chunk - 1 if target is None else target % chunk
    reach = depth * mem_chunks * chunk + position
    return reach if target is None else min(reach, int(target))


# -- the comparison behind ``xtstream bench erf`` and benchmarks/erf.py ---------------------------
def erf_model(context: str, *, backbone: str | None = None, chunk: int = 4, region: int = 64, depth: int = 2,
              seed: int = 0, **kw: Any) -> Any:
    """A random-init model to measure: :func:`xtstream.bench.probe.probe_model` with the xView3 head
    (the probes' tiny ConvNeXt, or ``backbone``, a timm name)."""
    from xtstream.bench.probe import probe_model

    return probe_model(context, chunk=chunk, region=region, depth=depth, seed=seed, backbone=backbone, **kw)


def noise_scene(rows: int, cols: int, region: int, seed: int = 0) -> np.ndarray:
    """``(1, rows * R, cols * R)`` float32 unit Gaussian noise: an input with no structure."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, rows * region, cols * region)).astype(np.float32)


def compare(contexts: Sequence[str] = tuple(CONTEXTS), *, rows: int = 3, cols: int = 4, region: int = 64,
            chunk: int = 4, depth: int = 2, backbone: str | None = None, seed: int = 0
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ERF of the last region of a ``rows x cols`` noise scene for each model of ``contexts``
    (labels of :data:`CONTEXTS`), all at random init from ``seed``. Returns the results
    (``scene``; per model ``reach_regions``, ``share_outside``, and for ``xl`` ``reach_formula``)
    and the maps."""
    unknown = [c for c in contexts if c not in CONTEXTS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {list(CONTEXTS)}")
    image = noise_scene(rows, cols, region, seed)
    grid = RegionGrid(image.shape[1], image.shape[2], region)
    target = len(grid) - 1
    results: dict[str, Any] = {"scene": {"rows": rows, "cols": cols, "region": region, "chunk": chunk,
                                         "depth": depth, "target": target, "backbone": backbone or "probe_model",
                                         "weights": f"random init, seed {seed}"},
                               "models": {}}
    maps = {}
    for label in contexts:
        model = erf_model(CONTEXTS[label], backbone=backbone, chunk=chunk, region=region, depth=depth, seed=seed)
        maps[label] = erf = effective_receptive_field(model, image, target=target)
        row = {"context": CONTEXTS[label], "reach_regions": reach_in_regions(erf, grid, target),
               "share_outside": share_outside(erf, grid, target)}
        if label == "xl":
            row["reach_formula"] = xl_reach_formula(depth, chunk, target=target)
        results["models"][label] = row
    return results, maps


def reach_sweep(depths: Sequence[int] = (1, 2, 3), chunks: Sequence[int] = (2, 4), *, rows: int = 1,
                cols: int = 24, region: int = 64, seed: int = 0) -> list[dict[str, int]]:
    """XL's measured reach from the last region of a ``rows x cols`` scene against
    :func:`xl_reach_formula`, for every ``(depth, chunk)``: rows ``{depth, chunk, measured, formula}``.
    Pick the scene longer than the deepest reach, or every row is capped at the first region."""
    image = noise_scene(rows, cols, region, seed)
    grid = RegionGrid(image.shape[1], image.shape[2], region)
    target = len(grid) - 1
    rows_out = []
    for depth in depths:
        for chunk in chunks:
            model = erf_model("xl", chunk=chunk, region=region, depth=depth, seed=seed)
            erf = effective_receptive_field(model, image, target=target)
            rows_out.append({"depth": depth, "chunk": chunk, "measured": reach_in_regions(erf, grid, target),
                             "formula": xl_reach_formula(depth, chunk, target=target)})
    return rows_out


def table(results: dict[str, Any]) -> str:
    """The comparison as text: one line per model."""
    lines = [f"{'model':<12} {'reach (regions)':>16} {'XL formula':>11} {'|grad| outside target':>22}"]
    for label, r in results["models"].items():
        formula = str(r["reach_formula"]) if "reach_formula" in r else "-"
        lines.append(f"{label:<12} {r['reach_regions']:>16} {formula:>11} {r['share_outside']:>22.3f}")
    return "\n".join(lines)


def compare_figure(results: dict[str, Any], maps: dict[str, np.ndarray], path: str | Path) -> Path:
    """:func:`erf_figure` of a :func:`compare`: one panel per model, titled with its reach."""
    scene = results["scene"]
    grid = RegionGrid(scene["rows"] * scene["region"], scene["cols"] * scene["region"], scene["region"])
    titled = {f"{k} (reach {results['models'][k]['reach_regions']})": m for k, m in maps.items()}
    return erf_figure(titled, grid, scene["target"], path)


def erf_figure(maps: dict[str, np.ndarray], grid: RegionGrid, target: int, path: str | Path) -> Path:
    """One panel per model: ``log10 |grad|`` (each panel its own scale, six decades; exact zeros in
    grey), region grid lines, the target region outlined in red. Writes a PNG at ``path``."""
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend
    from matplotlib.patches import Rectangle

    path = Path(path)
    n = len(maps)
    aspect = grid.padded_shape[0] / grid.padded_shape[1]
    fig = Figure(figsize=(4.2 * n, 4.2 * aspect + 0.9))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    y0, x0, _, _ = grid.window(target)
    for i, (label, erf) in enumerate(maps.items()):
        ax = fig.add_subplot(1, n, i + 1)
        top = float(erf.max()) or 1.0
        im = ax.imshow(np.ma.masked_less_equal(erf, 0.0), cmap=cmap, norm=LogNorm(top * 1e-6, top),
                       interpolation="nearest")
        for k in range(1, grid.rows):
            ax.axhline(k * grid.region - 0.5, color="white", lw=0.6)
        for k in range(1, grid.cols):
            ax.axvline(k * grid.region - 0.5, color="white", lw=0.6)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), grid.region, grid.region, fill=False, ec="red", lw=1.5))
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046 * aspect, pad=0.02)
    fig.suptitle("effective receptive field, |d output / d input| (grey: exactly 0)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
