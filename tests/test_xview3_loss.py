"""xView3 head and loss: terms of comparable scale, configurable weights reported per step,
non-negative decoded lengths and thresholded flags, and the output stride."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import scene_regions, tiny_model
from xtstream.data.grid import RegionGrid
from xtstream.engine import train_chunks
from xtstream.errors import ModelConfigError, TaskError
from xtstream.tasks import get_task
from xtstream.tasks.xview3 import XView3Head, decode_xview3, rasterise, to_scene, xview3_loss

R = 64
CHANNELS, REDUCTIONS = [8, 16, 32, 64], [4, 8, 16, 32]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def realistic_targets(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """``(n, R, R)`` target maps of a few vessels 20–300 m long, some of unknown length or class."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        objects = [{"row": float(rng.uniform(4, R - 4)), "col": float(rng.uniform(4, R - 4)),
                    "is_vessel": bool(rng.random() > 0.2), "is_fishing": bool(rng.random() > 0.5),
                    "length_m": float(rng.uniform(20, 300)) if rng.random() > 0.2 else None}
                   for _ in range(4)]
        maps.append(rasterise(objects, R))
    return {k: torch.from_numpy(np.stack([m[k] for m in maps]).astype(np.float32)) for k in maps[0]}


def head_outputs(**kw) -> dict[str, torch.Tensor]:
    head = XView3Head(CHANNELS, REDUCTIONS, decoder_channels=(16, 8, 8), **kw)
    feats = [torch.randn(3, c, R // r, R // r) for c, r in zip(CHANNELS, REDUCTIONS)]
    return head(feats)[0]


# -- 1. the terms' scales and weights ---------------------------------------------------------------
def test_no_term_swamps_the_loss_at_initialisation():
    _, parts = xview3_loss(head_outputs(), realistic_targets())
    assert set(parts) == {"vessel", "centre", "length", "is_vessel", "is_fishing"}
    median = float(np.median(list(parts.values())))
    assert max(parts.values()) <= 5 * median, parts  # the length in metres was ~100x the rest


def test_term_weights_come_from_the_task_and_scale_their_parts():
    outputs, targets = head_outputs(), realistic_targets()
    _, plain = xview3_loss(outputs, targets)
    _, weighted = xview3_loss(outputs, targets, {"length": 0.0, "centre": 2.0})
    assert weighted["length"] == 0.0 and weighted["centre"] == pytest.approx(2 * plain["centre"])
    assert weighted["vessel"] == pytest.approx(plain["vessel"])
    task = get_task("xview3", weights={"length": 0.25})
    assert task.weights == {"length": 0.25}
    with pytest.raises(TaskError, match="'lenght'"):
        get_task("xview3", weights={"lenght": 1.0})


def test_training_records_carry_each_term_averaged_over_the_group():
    model = tiny_model(context="xl")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    records = list(train_chunks(model, scene_regions("a", 2, 2), opt))
    assert all(set(r["parts"]) == {"vessel", "centre"} for r in records)
    assert all(sum(r["parts"].values()) == pytest.approx(r["loss"], rel=1e-5) for r in records)
    seen = []

    def loss_fn(chunk):  # two chunks per group: the record holds their mean
        value = torch.tensor(float(len(seen)), requires_grad=True)
        seen.append(float(value.detach()))
        return value + 0.0 * sum(o.sum() for o in chunk.outputs.values()), {"x": float(value.detach())}

    a, b = scene_regions("a", 1, 2), scene_regions("b", 1, 2, seed=1)
    (rec,) = train_chunks(model, a + b, opt, loss_fn, scenes_per_step=2)
    assert rec["parts"] == {"x": pytest.approx(np.mean(seen))}


# -- 2. decoded lengths and flags ------------------------------------------------------------------
def _decodable(length: float, vessel_logit: float, fishing_logit: float, h: int = R):
    centre = torch.full((1, 1, h, h), -10.0)
    centre[0, 0, 10, 12] = 5.0
    return {"centre": centre, "vessel": torch.zeros(1, 1, h, h),
            "length": torch.full((1, 1, h, h), length),
            "is_vessel": torch.full((1, 1, h, h), vessel_logit),
            "is_fishing": torch.full((1, 1, h, h), fishing_logit)}


@pytest.mark.parametrize("raw", [-5.0, -1e4, 0.0, 1e4])
def test_raw_length_outputs_decode_to_non_negative_finite_metres(raw):
    (dets,) = decode_xview3(_decodable(raw, 0.0, 0.0))
    assert len(dets) == 1
    assert dets[0]["length_m"] >= 0 and np.isfinite(dets[0]["length_m"])


def test_log_length_round_trips_and_flags_follow_the_thresholds():
    (d,), = decode_xview3(_decodable(float(np.log(123.0 / 100.0)), 0.4, 0.4))  # probabilities ~0.6
    assert d["length_m"] == pytest.approx(123.0, rel=1e-5)
    assert d["is_vessel_prob"] == pytest.approx(1 / (1 + np.exp(-0.4)))
    assert d["is_vessel"] is True and d["is_fishing"] is True
    (d,), = decode_xview3(_decodable(0.0, 0.4, 0.4), vessel_threshold=0.7)
    assert d["is_vessel"] is False and d["is_fishing"] is False  # a non-vessel does not fish
    (d,), = decode_xview3(_decodable(0.0, 0.4, 0.4), fishing_threshold=0.7)
    assert d["is_vessel"] is True and d["is_fishing"] is False


# -- 3. the output stride --------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_head_outputs_at_its_stride_without_decoding_finer_than_the_shallowest_map(stride):
    head = XView3Head(CHANNELS, REDUCTIONS, decoder_channels=(16, 8, 8), stride=stride)
    # the same decoder at every stride: below reduction 4 only the output conv runs
    assert len(head.blocks) == 3 and head.upscale == 4 // stride
    feats = [torch.randn(2, c, R // r, R // r) for c, r in zip(CHANNELS, REDUCTIONS)]
    out, _ = head(feats)
    assert all(tuple(v.shape) == (2, 1, R // stride, R // stride) for v in out.values())
    loss, _ = xview3_loss(out, realistic_targets(2))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_default_stride_is_2_and_bad_strides_are_named():
    assert XView3Head(CHANNELS, REDUCTIONS).stride == 2
    for bad in (3, 8, 0):
        with pytest.raises(ModelConfigError, match="stride"):
            XView3Head(CHANNELS, REDUCTIONS, stride=bad)


def test_downsampled_targets_keep_peaks_and_object_values():
    from xtstream.tasks.xview3.loss import downsample_targets

    t = {"vessel": torch.zeros(1, 8, 8), "centre": torch.zeros(1, 8, 8),
         "length": torch.zeros(1, 8, 8), "is_fishing": torch.zeros(1, 8, 8)}
    t["centre"][0, 3, 5] = 1.0
    t["vessel"][0, 2:4, 4:6] = 1
    t["length"][0, 3, 5] = 80.0
    t["length"][0, 2, 4] = float("nan")   # unknown pixels do not count
    t["is_fishing"][0, 3, 4:6] = 1.0
    down = downsample_targets(t, 2)
    assert down["centre"][0, 1, 2] == 1.0 and down["vessel"][0, 1, 2] == 1.0
    assert down["length"][0, 1, 2] == 80.0  # the mean over known object pixels, not diluted by 0s
    assert down["is_fishing"][0, 1, 2] == 0.5
    assert torch.isnan(down["length"][0, 0, 0]) and torch.isnan(down["is_fishing"][0, 0, 0])


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_peaks_at_a_stride_come_back_in_full_resolution_scene_pixels(stride):
    from xtstream.tasks.xview3.loss import downsample_targets

    grid = RegionGrid(100, 90, R)  # region 3 starts at scene pixel (64, 64)
    true = (21.0, 19.0)
    targets = {k: torch.from_numpy(v)[None] for k, v in rasterise([{"row": true[0], "col": true[1]}], R).items()}
    centre = downsample_targets(targets, stride)["centre"]
    outputs = _decodable(0.0, 0.0, 0.0, R // stride)
    outputs["centre"] = torch.logit(centre.clamp(1e-4, 1 - 1e-4))[:, None]
    (dets,) = decode_xview3(outputs, region=R)
    assert len(dets) == 1
    (d,) = to_scene(dets, grid, 3)
    assert abs(d["scene_row"] - 64 - true[0]) <= stride / 2 and abs(d["scene_col"] - 64 - true[1]) <= stride / 2
    with pytest.raises(ValueError, match="multiple"):
        decode_xview3(outputs, region=R + 1)


# -- centre heat-map loss ------------------------------------------------------------------------
def _centre_case(n: int = 2, h: int = 16):
    target = torch.zeros(n, h, h)
    target[0, 5, 7] = 1.0  # one centre, in the first region only
    target[0, 4:7, 6:9] = torch.maximum(target[0, 4:7, 6:9], torch.tensor(0.6))
    target[0, 5, 7] = 1.0
    return target, torch.ones(n, h, h, dtype=torch.bool)


def test_centre_focal_loss_rewards_the_peak_and_is_normalised_per_region_at_least():
    from xtstream.tasks.xview3.loss import centre_focal_loss

    target, valid = _centre_case()
    right = torch.full_like(target, -12.0)
    right[0, 5, 7] = 12.0
    wrong = torch.full_like(target, -12.0)
    wrong[1, 5, 7] = 12.0  # the peak in the other region: a miss and a false centre
    assert float(centre_focal_loss(right, target, valid)) < 1e-4
    assert float(centre_focal_loss(wrong, target, valid)) > 5.0
    # the near-centre cells (0.6 of the Gaussian) are penalised less than far background
    near, far = torch.full_like(target, -12.0), torch.full_like(target, -12.0)
    near[0, 5, 7] = far[0, 5, 7] = 12.0
    near[0, 4, 6], far[1, 12, 12] = 0.0, 0.0
    assert float(centre_focal_loss(near, target, valid)) < float(centre_focal_loss(far, target, valid)) / 5
    # an empty chunk: normalised by its region count, not by one centre
    empty = torch.zeros(4, 16, 16)
    logits = torch.full_like(empty, -4.6)
    per_region = float(centre_focal_loss(logits[:1], empty[:1], valid[:1]))
    assert float(centre_focal_loss(logits, empty, torch.ones(4, 16, 16, dtype=torch.bool))) == pytest.approx(per_region)


def test_centre_loss_starts_of_the_other_terms_scale_and_mse_stays_available():
    head = XView3Head(CHANNELS, REDUCTIONS, decoder_channels=(16, 8, 8), stride=1)
    feats = [torch.randn(2, c, R // r, R // r) for c, r in zip(CHANNELS, REDUCTIONS)]
    out, _ = head(feats)
    assert torch.sigmoid(out["centre"]).mean() < 0.05  # CenterNet's prior: p ~ 0.01 at the start
    target, _ = _centre_case(2, R)
    targets = {"centre": target, "vessel": (target > 0.5).float()}
    _, focal = xview3_loss(out, targets)
    _, mse = xview3_loss(out, targets, centre_loss="mse")
    assert 0.1 < focal["centre"] < 20 and mse["centre"] < 0.05
    with pytest.raises(ModelConfigError, match="centre_loss"):
        xview3_loss(out, targets, centre_loss="l1")
