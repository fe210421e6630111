"""Heads: xView3 decoder shapes and loss, peak decoding of known heat-maps, streaming pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtstream.errors import ModelConfigError
from xtstream.models.heads import ClassificationHead
from xtstream.tasks.xview3 import XView3Head, decode_xview3, find_peaks, gaussian_heatmap, to_scene, xview3_loss
from xtstream.data.grid import RegionGrid

R = 64


def test_known_gaussians_decode_to_their_centres():
    # two near each other (5 px apart), one on the region's left edge, one in a corner
    points = [(20, 30), (20, 35), (40, 0), (63, 63)]
    hm = torch.from_numpy(gaussian_heatmap(points, (R, R), sigma=1.5))
    hm[20, 35] *= 0.9  # the pair gets distinct heights, so the order by score is known
    (pos, scores), = find_peaks(hm, threshold=0.5, min_distance=2)
    assert sorted(map(tuple, pos.tolist())) == sorted(points)
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    assert tuple(pos[-1].tolist()) == (20, 35)


def test_peaks_closer_than_min_distance_keep_the_higher_one():
    hm = torch.from_numpy(np.maximum(gaussian_heatmap([(30, 30)], (R, R)),
                                    0.8 * gaussian_heatmap([(30, 33)], (R, R))))
    (pos, _), = find_peaks(hm, threshold=0.3, min_distance=3)
    assert pos.tolist() == [[30, 30]]
    (pos, _), = find_peaks(hm, threshold=0.3, min_distance=1)
    assert sorted(pos.tolist()) == [[30, 30], [30, 33]]


def test_threshold_and_plateaus():
    hm = torch.zeros(1, 1, 16, 16)
    hm[0, 0, 5, 5:8] = 0.9   # a plateau of three equal maxima: one detection, the first
    hm[0, 0, 12, 12] = 0.4   # below the threshold
    (pos, scores), = find_peaks(hm, threshold=0.5, min_distance=2)
    assert pos.tolist() == [[5, 5]]
    assert scores.tolist() == pytest.approx([0.9])
    assert len(find_peaks(torch.zeros(2, 16, 16), threshold=0.1)) == 2


def test_decode_reads_the_maps_at_the_peaks_and_to_scene_drops_padding():
    grid = RegionGrid(100, 90, R)  # region 3 is (1, 1): valid rows 64..99, cols 64..89
    centre = torch.full((1, 1, R, R), -10.0)
    centre[0, 0, 10, 10] = 5.0    # inside the image
    centre[0, 0, 50, 10] = 5.0    # scene row 114 >= 100: padding
    centre[0, 0, 10, 40] = 5.0    # scene col 104 >= 90: padding
    length = torch.zeros(1, 1, R, R)
    length[0, 0, 10, 10] = float(np.log(123.0 / 100.0))  # the head regresses log(length / 100 m)
    outputs = {"centre": centre, "length": length, "vessel": torch.zeros(1, 1, R, R),
               "is_vessel": torch.full((1, 1, R, R), 2.0), "is_fishing": torch.full((1, 1, R, R), -2.0)}
    (dets,) = decode_xview3(outputs, threshold=0.5, min_distance=2)
    assert len(dets) == 3
    scene = to_scene(dets, grid, 3)
    assert len(scene) == 1
    d = scene[0]
    assert (d["scene_row"], d["scene_col"]) == (74, 74) and d["length_m"] == pytest.approx(123.0)
    assert d["is_vessel_prob"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert d["is_fishing_prob"] == pytest.approx(1 / (1 + np.exp(2.0)))
    assert d["is_vessel"] is True and d["is_fishing"] is False


def test_xview3_head_gives_full_resolution_maps_and_grads_everywhere():
    channels, reductions = [8, 16, 32, 64], [4, 8, 16, 32]
    head = XView3Head(channels, reductions, decoder_channels=(16, 8, 8), stride=1)
    feats = [torch.randn(3, c, R // r, R // r) for c, r in zip(channels, reductions)]
    out, _ = head(feats)
    assert set(out) == {"vessel", "centre", "length", "is_vessel", "is_fishing"}
    assert all(tuple(v.shape) == (3, 1, R, R) for v in out.values())
    targets = {"vessel": torch.zeros(3, R, R), "centre": torch.zeros(3, R, R),
               "length": torch.full((3, R, R), float("nan")), "fishing": torch.zeros(3, R, R)}
    targets["vessel"][:, 30:34, 30:34] = 1
    targets["length"][:, 30:34, 30:34] = 80.0
    loss, parts = xview3_loss(out, targets)
    assert set(parts) == {"vessel", "centre", "length", "is_fishing"}  # alias "fishing" understood
    assert torch.isfinite(loss)  # NaN lengths are ignored, not propagated
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_xview3_head_refuses_features_it_was_not_built_for():
    with pytest.raises(ModelConfigError, match="reductions doubling"):
        XView3Head([8, 16], [4, 16])
    head = XView3Head([8, 16], [4, 8])
    with pytest.raises(ModelConfigError, match=r"channels \[8, 16\], got \[8, 32\]"):
        head([torch.randn(1, 8, 16, 16), torch.randn(1, 32, 8, 8)])


def test_classification_pool_over_chunks_equals_the_whole_scene_mean():
    torch.manual_seed(0)
    head = ClassificationHead(12, 4)
    maps = torch.randn(2, 10, 12, 5, 5)  # two scenes of 10 regions, 5x5 tokens each

    def feats(m):  # (B, C, D, h, w) -> the head's [(B * C, D, h, w)]
        return [m.flatten(0, 1)]

    whole, _ = head(feats(maps), 2)
    state = None
    for part in torch.split(maps, [2, 3, 5], dim=1):
        logits, state = head(feats(part), 2, state)
    torch.testing.assert_close(logits, whole)
    assert state.count == 250 and not state.total.requires_grad
