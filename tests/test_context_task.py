"""The context-dependent task (issue 12): near-shore vessels, scored with xView3's metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from xtstream.bench.context_task import (LAND, SQUARE, ShoreScene, evaluate, make_shore_scene, predict_scene,
                                         sight, summarise, truth_rows)
from xtstream.data.chunk import RegionChunk
from xtstream.tasks.xview3.metric import score


def _regions(scene: ShoreScene) -> dict[int, np.ndarray]:
    return {i: np.asarray(c.pixels[j]) for c in scene.chunks for j, i in enumerate(c.indices)}


@pytest.mark.parametrize("seed", range(6))
def test_near_shore_is_set_by_a_land_strip_in_another_region(seed):
    scene = make_shore_scene(np.random.default_rng(seed))
    grid, cols = scene.chunks[0].grid, scene.chunks[0].grid.cols
    axis, strip = scene.land
    pixels = _regions(scene)
    land = {i for i in range(len(grid)) if divmod(i, cols)[0 if axis == "row" else 1] == strip}
    assert all(pixels[i].mean() > LAND / 2 for i in land)
    for r, c, near in scene.vessels:
        index = grid.region_of_pixel(int(r), int(c))
        assert index not in land
        row, col = divmod(index, cols)
        assert near == (abs((row if axis == "row" else col) - strip) == 1)
        line = row if axis == "row" else col
        assert sight(scene, (r, c, near)) == f"{'row' if axis == 'row' else 'column'}_{'before' if strip < line else 'after'}"
        # what the region itself shows is noise and one square, near shore or not
        region = pixels[index][0]
        assert region.max() < 2.5 and (region > 0.75).sum() == SQUARE * SQUARE
    fishing = {i: c.targets["is_fishing"][j] for c in scene.chunks for j, i in enumerate(c.indices)}
    assert sum(int((~np.isnan(f)).sum()) for f in fishing.values()) == SQUARE * SQUARE * len(scene.vessels)


class Oracle:
    """Outputs the targets themselves as logits: what a model that knows the shore would."""

    def stream(self, chunks):
        for c in chunks:
            logit = {k: torch.logit(torch.from_numpy(np.nan_to_num(v)).clamp(1e-4, 1 - 1e-4))[:, None]
                     for k, v in c.targets.items()}
            out = RegionChunk(c.scene_id, c.grid, c.indices, c.pixels, c.targets)
            out.outputs = logit
            yield out

    def eval(self):
        return self


def test_an_oracle_scores_one_and_a_shore_blind_model_does_not():
    rng = np.random.default_rng(3)
    scenes = [make_shore_scene(rng, scene_id=f"s{k}") for k in range(6)]
    preds = [row for s in scenes for row in predict_scene(Oracle(), s)]
    truth = [row for s in scenes for row in truth_rows(s)]
    s = score(preds, truth)
    assert s["F1_loc"] == 1.0 and s["F1_fishing"] == 1.0
    blind = [{**row, "is_fishing": 1.0} for row in preds]  # every vessel called near shore
    near = sum(t["is_fishing"] for t in truth)
    assert 0 < near < len(truth)
    assert score(blind, truth)["F1_fishing"] == pytest.approx(2 * near / (near + len(truth)))
    assert math.isnan(truth[0]["vessel_length_m"])  # unknown lengths: no length score, no division by 0
    oracle = evaluate(Oracle(), scenes=8)
    assert oracle["shore_f1"] == 1.0 and all(v["right"] in (1.0, None) for v in oracle["by_sight"].values())
    assert sum(v["vessels"] for v in oracle["by_sight"].values()) == oracle["vessels"]


def test_summary_keys_and_the_cli(tmp_path):
    from xtstream.cli import main

    out = tmp_path / "context_task.json"
    assert main(["bench", "context", "--models", "region_only,xt_xl", "--seeds", "2", "--scenes", "4",
                 "--eval-scenes", "2", "--quiet", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["seeds"] == 2 and set(doc["runs"]) == {"region_only", "xt_xl"}
    for name in ("region_only", "xt_xl"):
        per = [r["shore_f1"] for r in doc["runs"][name]["per_seed"]]
        assert doc[f"shore_f1_{name}"] == round(float(np.mean(per)), 3)
        assert {f"f1_{name}", f"f1_{name}_std", f"shore_f1_{name}_std"} <= set(doc)
        assert set(doc["runs"][name]["by_sight"]) <= {"row_before", "column_before", "column_after", "row_after"}
    assert doc["shore_gain"] == round(100 * (doc["shore_f1_xt_xl"] - doc["shore_f1_region_only"]), 1)
    assert summarise(doc)["shore_gain"] == doc["shore_gain"]
    with pytest.raises(SystemExit, match="unknown model"):
        main(["bench", "context", "--models", "xt_hyper"])


def test_two_pass_reading_hands_the_whole_scene_to_its_first_chunk():
    """Read twice, the first pass only filling the state, a scene's first chunk already has the land
    in a later row in its context (a carried-state model at initialisation), a region-only model
    does not change; row-major reading of the first chunk cannot depend on later chunks."""
    from xtstream.bench.context_task import read_twice
    from xtstream.bench.probe import probe_model

    scene = make_shore_scene(np.random.default_rng(1))
    for context, differs in (("mamba", True), ("none", False)):
        model = probe_model(context, seed=0).eval()
        with torch.no_grad():
            once = next(iter(model.stream(scene.chunks))).outputs["is_fishing"]
            twice = read_twice(model, [scene])
        assert len(twice) == len(scene.chunks)
        gap = float((twice[0]["is_fishing"] - once).abs().max())
        assert (gap > 1e-5) == differs, (context, gap)


def test_two_pass_training_reaches_back_through_the_first_pass():
    """What a region needs from a later row is written into the state in the first pass: training
    must back-propagate through it (with the first pass cut off, two seeds of three of xT-XL and
    xT-Mamba did not learn the task)."""
    from xtstream.bench.context_task import read_twice
    from xtstream.bench.probe import probe_model

    scene = make_shore_scene(np.random.default_rng(2))
    grads = {}
    for through in (False, True):
        model = probe_model("mamba", seed=0)
        out = read_twice(model, [scene], through_first=through)
        out[0]["is_fishing"].sum().backward()
        grads[through] = torch.cat([p.grad.flatten() for p in model.context.parameters() if p.grad is not None])
    assert float((grads[True] - grads[False]).abs().max()) > 1e-6
    assert model.context.config.detach_state  # the model's own setting is back after reading


@pytest.mark.parametrize("order", ["column_major", "snake"])
def test_other_orders_read_every_region_once_and_change_only_context_models(order):
    """Every region is scored once whatever the order; a region-only model's maps do not depend on
    it, a context model's do (Mamba reads its tokens in that order)."""
    from xtstream.bench.context_task import read_ordered, scene_maps
    from xtstream.bench.probe import probe_model

    scene = make_shore_scene(np.random.default_rng(3))
    for context, differs in (("none", False), ("mamba", True)):
        model = probe_model(context, seed=0).eval()
        with torch.no_grad():
            seen = np.concatenate([idx for idx, _ in read_ordered(model, [scene], order)])
            rows = scene_maps(model, scene)[1]
            other = scene_maps(model, scene, order)[1]
        assert sorted(seen.tolist()) == list(range(16))
        assert (float((rows - other).abs().max()) > 1e-5) == differs, (context, order)
