"""From centre heat-maps to detections, and from region to scene coordinates.

A peak is a pixel whose score is at least ``threshold`` and is the largest within the
``(2d+1) x (2d+1)`` square around it (``d = min_distance``: max-pool NMS). Equal maxima closer
than that (plateaus) keep only the first in row-major order, so no two peaks are within
Chebyshev distance ``d`` of each other.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from xtstream.data.grid import RegionGrid


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
    k = 2 * min_distance + 1
    pooled = F.max_pool2d(hm, k, stride=1, padding=min_distance)
    candidate = (hm == pooled) & (hm >= threshold)
    # plateau tie-break: among candidates in one window keep the smallest row-major index
    h, w = hm.shape[-2:]
    order = torch.arange(h * w, device=hm.device, dtype=torch.float32).reshape(1, 1, h, w)
    neg_index = torch.where(candidate, -order, torch.full_like(hm, -float("inf")))
    first = F.max_pool2d(neg_index, k, stride=1, padding=min_distance)
    keep = candidate & (neg_index == first)
    out = []
    for i in range(hm.shape[0]):
        rows, cols = torch.nonzero(keep[i, 0], as_tuple=True)
        scores = hm[i, 0, rows, cols]
        idx = torch.argsort(scores, descending=True, stable=True)
        out.append((torch.stack([rows[idx], cols[idx]], dim=1).cpu(), scores[idx].cpu()))
    return out


def decode_xview3(outputs: Mapping[str, Tensor], *, threshold: float = 0.5, min_distance: int = 3
                  ) -> list[list[dict[str, Any]]]:
    """Detections per region from :class:`~xtstream.tasks.xview3.head.XView3Head` outputs ``(N, 1, R, R)``.

    Each detection: ``row``, ``col`` (region pixels), ``score`` (sigmoid of the centre logit),
    ``length_m``, ``is_vessel``, ``is_fishing`` (probabilities), read at the peak.
    """
    centre = torch.sigmoid(outputs["centre"].detach().float())
    peaks = find_peaks(centre, threshold=threshold, min_distance=min_distance)
    result = []
    for i, (pos, scores) in enumerate(peaks):
        r, c = pos[:, 0], pos[:, 1]

        def at(name: str, prob: bool) -> list[float]:
            v = outputs[name].detach().float()[i, 0].cpu()[r, c]
            return (torch.sigmoid(v) if prob else v).tolist()

        length, vessel, fishing = at("length", False), at("is_vessel", True), at("is_fishing", True)
        result.append([
            {"row": int(r[k]), "col": int(c[k]), "score": float(scores[k]), "length_m": length[k],
             "is_vessel": vessel[k], "is_fishing": fishing[k]}
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
