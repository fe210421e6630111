"""From centre heat-maps to detections, and from region to scene coordinates.

A peak is a pixel (an output cell, at the head's stride) whose score is at least ``threshold`` and is the largest within the
``(2d+1) x (2d+1)`` square around it (``d = min_distance``: max-pool NMS). Equal maxima closer
than that (plateaus) keep only the first in row-major order, so no two peaks are within
Chebyshev distance ``d`` of each other.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xtstream.data.grid import RegionGrid, Window


def find_peaks(heatmap: Tensor, *, threshold: float = 0.5, min_distance: int = 3
               ) -> list[tuple[Tensor, Tensor]]:
    """Peaks of ``(N, H, W)`` (or ``(N, 1, H, W)``, or ``(H, W)``) score maps.

    Returns, per map, ``(positions, scores)``: ``(K, 2)`` int64 ``(row, col)`` in map pixels and
    ``(K,)`` scores, sorted by decreasing score.

    >>> hm = torch.zeros(9, 9); hm[4, 4] = 0.9; hm[4, 6] = 0.8
    >>> find_peaks(hm, threshold=0.5, min_distance=1)[0][0].tolist()
    [[4, 4], [4, 6]]
    """
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    hm = heatmap.detach()
    if hm.ndim == 2:
        hm = hm[None]
    if hm.ndim == 4:
        if hm.shape[1] != 1:
            raise ValueError(f"expected one channel, got a {tuple(heatmap.shape)} heat-map")
        hm = hm[:, 0]
    if hm.ndim != 3:
        raise ValueError(f"expected (H, W), (N, H, W) or (N, 1, H, W), got {tuple(heatmap.shape)}")
    hm = hm.float()[:, None]
    h, w = hm.shape[-2:]
    index = torch.arange(h * w, device=hm.device, dtype=torch.float64).reshape(1, 1, h, w)
    keep = _peak_mask(hm, index, threshold, min_distance)
    out = []
    for i in range(hm.shape[0]):
        rows, cols = torch.nonzero(keep[i, 0], as_tuple=True)
        scores = hm[i, 0, rows, cols]
        idx = torch.argsort(scores, descending=True, stable=True)
        out.append((torch.stack([rows[idx], cols[idx]], dim=1).cpu(), scores[idx].cpu()))
    return out


def _peak_mask(hm: Tensor, index: Tensor, threshold: float, d: int) -> Tensor:
    """Peaks of ``hm`` ``(N, 1, H, W)``: at least ``threshold``, the maximum of their ``(2d+1)^2``
    window, and on a plateau the smallest ``index`` ``(1, 1, H, W)`` (float64: exact to 2^53
    cells, where float32 would merge neighbours past 2^24 cells — a 16k^2 map)."""
    k = 2 * d + 1
    pooled = F.max_pool2d(hm, k, stride=1, padding=d)
    candidate = (hm == pooled) & (hm >= threshold)
    neg_index = torch.where(candidate, -index, torch.full(hm.shape, -float("inf"), dtype=torch.float64,
                                                           device=hm.device))
    first = F.max_pool2d(neg_index, k, stride=1, padding=d)
    return candidate & (neg_index == first)


def find_peaks_tiled(read: Callable[[Window], np.ndarray], shape: tuple[int, int], tiles: Iterable[Window],
                     *, threshold: float = 0.5, min_distance: int = 3) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The peaks :func:`find_peaks` finds on a whole ``(H, W)`` map, found tile by tile.

    ``read(window)`` returns the map's ``(h, w)`` values in ``window`` (e.g. from a Zarr store);
    ``tiles`` must cover the map without overlap. Each tile is read with a halo of
    ``2 * min_distance`` cells — a peak depends on the values within ``d`` of it, and its plateau
    tie-break on the peaks within ``d``, hence on values within ``2d`` — so the result is exactly
    the whole map's, with memory of one tile. Yields, per tile, ``(positions (K, 2) int64 (row,
    col) in map cells, scores (K,))``.
    """
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    h, w = shape
    halo = 2 * min_distance
    for tile in tiles:
        big = Window(max(tile.y0 - halo, 0), max(tile.x0 - halo, 0), min(tile.y1 + halo, h), min(tile.x1 + halo, w))
        values = torch.from_numpy(np.ascontiguousarray(read(big), dtype=np.float32))[None, None]
        if not bool((values >= threshold).any()):
            # most of a scene is empty sea: no cell can be a peak, so the pooling is skipped
            yield np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
            continue
        rows = torch.arange(big.y0, big.y1, dtype=torch.float64).view(-1, 1)
        cols = torch.arange(big.x0, big.x1, dtype=torch.float64).view(1, -1)
        index = (rows * w + cols)[None, None]
        # NaN (cells never written) is no peak and suppresses none
        keep = _peak_mask(torch.nan_to_num(values, nan=-float("inf")), index, threshold, min_distance)[0, 0]
        core = keep[tile.y0 - big.y0:tile.y1 - big.y0, tile.x0 - big.x0:tile.x1 - big.x0]
        r, c = torch.nonzero(core, as_tuple=True)
        scores = values[0, 0, r + tile.y0 - big.y0, c + tile.x0 - big.x0]
        order = torch.argsort(scores, descending=True, stable=True)
        pos = torch.stack([r[order] + tile.y0, c[order] + tile.x0], dim=1)
        yield pos.numpy().astype(np.int64), scores[order].numpy()


def peak_cells(min_distance: int, stride: int) -> int:
    """The NMS half-window in output cells for ``min_distance`` scene pixels at ``stride``: the
    largest cell distance whose peaks are still within ``min_distance`` pixels; at a stride at
    least the adjacent cells, since max-pooling the centre Gaussians into the grid leaves the
    neighbours of a peak cell above threshold too (0.61 at stride 4, σ = 2 px)."""
    if min_distance < 0:
        return min_distance
    cells = -(-(min_distance + 1) // stride) - 1
    return max(cells, 1) if stride > 1 and min_distance > 0 else cells


def cell_to_pixel(cell: np.ndarray | int, stride: int, size: int) -> np.ndarray | int:
    """Scene pixel of an output cell: its centre ``cell * s + s // 2``, at most ``size - 1`` (an
    edge cell may reach past the scene)."""
    return np.minimum(np.asarray(cell) * stride + stride // 2, size - 1)


def decode_xview3(outputs: Mapping[str, Tensor], *, threshold: float = 0.5, min_distance: int = 3,
                  region: int | None = None, vessel_threshold: float = 0.5, fishing_threshold: float = 0.5
                  ) -> list[list[dict[str, Any]]]:
    """Detections per region from :class:`~xtstream.tasks.xview3.head.XView3Head` outputs
    ``(N, 1, R / s, R / s)``.

    ``region``: ``R``, the region size in pixels (``grid.region``), from which the output stride
    ``s`` follows; ``None``: the maps are at full resolution (``s = 1``). ``min_distance`` is in
    region pixels (at stride ``s`` peaks are kept at least ``min_distance + 1`` pixels, and at least
    two cells, apart).

    Each detection: ``row``, ``col`` (full-resolution region pixels: the peak cell's centre,
    ``cell * s + s // 2``, at most ``s / 2`` px from the true centre — a tenth of xView3's 20 px
    match tolerance even at ``s = 4``; no sub-pixel refinement, since the centre targets are
    max-pooled to the grid and do not encode where in the cell the centre lies), ``score`` (sigmoid
    of the centre logit), ``length_m`` (``>= 0``, from the log-length), ``is_vessel_prob``,
    ``is_fishing_prob`` (probabilities), and the xView3 CSV's booleans ``is_vessel`` (probability
    ``>= vessel_threshold``) and ``is_fishing`` (a vessel whose fishing probability is ``>=
    fishing_threshold``: a non-vessel cannot fish), all read at the peak.
    """
    from xtstream.tasks.xview3.head import length_to_metres

    centre = torch.sigmoid(outputs["centre"].detach().float())
    h = centre.shape[-2]
    if region is None:
        region = h
    stride = region // h
    if stride < 1 or stride * h != region:
        raise ValueError(f"region {region} is not a whole multiple of the {h}-cell output maps")
    peaks = find_peaks(centre, threshold=threshold, min_distance=peak_cells(min_distance, stride))
    result = []
    for i, (pos, scores) in enumerate(peaks):
        r, c = pos[:, 0], pos[:, 1]

        def at(name: str) -> Tensor:
            return outputs[name].detach().float()[i, 0].cpu()[r, c]

        length = length_to_metres(at("length")).tolist()
        vessel, fishing = torch.sigmoid(at("is_vessel")).tolist(), torch.sigmoid(at("is_fishing")).tolist()
        result.append([
            {"row": int(r[k]) * stride + stride // 2, "col": int(c[k]) * stride + stride // 2,
             "score": float(scores[k]), "length_m": length[k], "is_vessel_prob": vessel[k],
             "is_fishing_prob": fishing[k], "is_vessel": vessel[k] >= vessel_threshold,
             "is_fishing": vessel[k] >= vessel_threshold and fishing[k] >= fishing_threshold}
            for k in range(len(scores))])
    return result


def to_scene(detections: list[dict[str, Any]], grid: RegionGrid, index: int) -> list[dict[str, Any]]:
    """Detections of region ``index`` moved to scene pixels; those in the zero padding dropped.

    Adds ``scene_row``/``scene_col`` (``detect_scene_row``/``_column`` in xView3 terms) and keeps
    the other fields.
    """
    y0, x0, _, _ = grid.window(index)
    out = []
    for d in detections:
        y, x = y0 + int(d["row"]), x0 + int(d["col"])
        if y < grid.height and x < grid.width:
            out.append({**d, "scene_row": y, "scene_col": x})
    return out
