"""Effective receptive field (xtstream.bench.erf): what one output's gradient reaches, on tiny
models at random initialisation — which pixels *can* reach an output is the architecture's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_model
from xtstream.bench.erf import (effective_receptive_field, reach_in_regions, region_mass, share_outside,
                                xl_reach_formula)
from xtstream.data.grid import RegionGrid

R = 64


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def scene(cols: int, rows: int = 1, bands: int = 2) -> tuple[np.ndarray, RegionGrid]:
    image = np.random.default_rng(0).standard_normal((bands, rows * R, cols * R)).astype(np.float32)
    return image, RegionGrid(rows * R, cols * R, R)


def test_region_only_map_is_the_target_region_alone():
    model = tiny_model(context="none")
    image, grid = scene(4)
    for target in (3, 1):
        erf = effective_receptive_field(model, image, target=target)
        assert erf.shape == (R, 4 * R)
        mass = region_mass(erf, grid)
        assert mass[target] > 0
        assert np.all(np.delete(mass, target) == 0)  # exactly zero, not small
        assert reach_in_regions(erf, grid, target) == 0 and share_outside(erf, grid, target) == 0.0


def test_xl_map_is_non_zero_far_outside_the_target_where_the_backbone_is_zero():
    image, grid = scene(6)
    bare = effective_receptive_field(tiny_model(context="none"), image)
    xl = effective_receptive_field(tiny_model(context="xl"), image)
    bare_mass, xl_mass = region_mass(bare, grid), region_mass(xl, grid)
    assert np.all(bare_mass[:5] == 0)
    assert np.all(xl_mass[2:5] > 0)  # region 2 is a whole chunk (of 2) before the target's
    assert share_outside(xl, grid, 5) > 0


@pytest.mark.parametrize("depth, chunk, cols, target, mem_chunks", [
    (1, 2, 8, None, 1),
    (2, 2, 8, None, 1),
    (1, 3, 9, None, 1),
    (1, 2, 8, 4, 1),   # the first position of its chunk: the chunk before it, and the region after it
    (1, 2, 8, None, 2),  # mem_len = two chunks of tokens
])
def test_xl_reach_is_the_formula_and_nothing_beyond_it(depth, chunk, cols, target, mem_chunks):
    kw = {}
    if mem_chunks > 1:
        h, w = tiny_model().token_grid
        kw["context_kwargs"] = {"mem_len": mem_chunks * chunk * h * w}
    model = tiny_model(context="xl", depth=depth, chunk=chunk, region_mem=0, **kw)  # token memory alone
    image, grid = scene(cols)
    target = cols - 1 if target is None else target
    erf = effective_receptive_field(model, image, target=target)
    reach = xl_reach_formula(depth, chunk, mem_chunks, target=target)
    assert reach < target  # not capped at the first region: the test can see a limit
    assert reach_in_regions(erf, grid, target) == reach
    mass = region_mass(erf, grid)
    assert np.all(mass[:target - reach] == 0)
    assert np.all(mass[target - reach:target + 1] > 0)
    chunk_end = (target // chunk + 1) * chunk
    assert np.all(mass[target + 1:chunk_end] > 0)  # inside a chunk attention is not causal
    assert np.all(mass[chunk_end:] == 0)  # later chunks are never run


def test_xl_memory_of_one_region_row_reaches_the_region_above():
    # row-major order puts the region above a whole row back: out of reach of one chunk of memory,
    # in reach when each layer remembers a row of regions (memory grows with the width, not the
    # area): as tokens, or as the default region memory's one key per region
    rows, cols, chunk = 3, 6, 2
    image, grid = scene(cols, rows)
    target = grid.index(2, 3)
    above = grid.index(1, 3)
    h, w = tiny_model().token_grid
    tokens_only = tiny_model(context="xl", chunk=chunk, region_mem=0)
    row_memory = tiny_model(context="xl", chunk=chunk, region_mem=0, context_kwargs={"mem_len": cols * h * w})
    assert region_mass(effective_receptive_field(tokens_only, image, target=target), grid)[above] == 0
    erf = effective_receptive_field(row_memory, image, target=target)
    assert region_mass(erf, grid)[above] > 0
    assert reach_in_regions(erf, grid, target) == xl_reach_formula(1, chunk, cols // chunk, target=target)
    default = tiny_model(context="xl", chunk=chunk)
    assert default.context.config.region_mem == 128
    mass = region_mass(effective_receptive_field(default, image, target=target), grid)
    assert mass[above] > 0 and np.all(mass[:target + 1] > 0)  # every region before it, in one layer


def test_xl_reach_formula_caps_at_the_first_region():
    assert xl_reach_formula(2, 4) == 11
    assert xl_reach_formula(2, 4, target=5) == 5
    assert xl_reach_formula(1, 4, target=9) == 5


def test_mamba_reaches_the_scene_first_region():
    image, grid = scene(6)
    erf = effective_receptive_field(tiny_model(context="mamba"), image)
    assert reach_in_regions(erf, grid, 5) == 5
    assert np.all(region_mass(erf, grid) > 0)


def test_full_attention_sees_the_whole_scene_after_the_target_too():
    image, grid = scene(4)
    erf = effective_receptive_field(tiny_model(context="full"), image, target=1)
    assert np.all(region_mass(erf, grid) > 0)


def test_classification_head_reaches_earlier_chunks_only_through_context():
    image, grid = scene(6)
    bare = region_mass(effective_receptive_field(tiny_model(context="none", head="classification"), image), grid)
    xl = region_mass(effective_receptive_field(tiny_model(context="xl", head="classification", region_mem=0), image),
                     grid)
    assert np.all(bare[:4] == 0) and np.all(bare[4:] > 0)  # the pool of earlier chunks is detached
    assert np.all(xl[:2] == 0) and np.all(xl[2:] > 0)


def test_detach_state_and_mode_are_restored_also_on_error(monkeypatch):
    model = tiny_model(context="xl")
    model.train()
    image, _ = scene(4)
    seen = []
    forward = model.context.forward

    def spy(*a, **kw):
        seen.append(model.context.config.detach_state)
        return forward(*a, **kw)

    monkeypatch.setattr(model.context, "forward", spy)
    effective_receptive_field(model, image)
    assert seen == [False, False]
    assert model.context.config.detach_state is True and model.training

    def boom(*a, **kw):
        raise RuntimeError("head failed")

    monkeypatch.setattr(model.head, "forward", boom)
    with pytest.raises(RuntimeError, match="head failed"):
        effective_receptive_field(model, image)
    assert model.context.config.detach_state is True and model.training


def test_bad_image_size_names_the_sizes():
    model = tiny_model(context="xl")
    with pytest.raises(ValueError, match=r"100 x 128 px.*multiples of 64"):
        effective_receptive_field(model, np.zeros((2, 100, 128), np.float32))
    with pytest.raises(ValueError, match="3 bands, the model takes 2"):
        effective_receptive_field(model, np.zeros((3, 64, 128), np.float32))
    with pytest.raises(ValueError, match="target region 2 outside"):
        effective_receptive_field(model, np.zeros((2, 64, 128), np.float32), target=2)


def test_cli_writes_json_and_png(tmp_path, capsys):
    from xtstream.cli import main

    out = tmp_path / "erf"
    assert main(["bench", "erf", "--rows", "1", "--cols", "6", "--chunk", "2", "--depth", "1",
                 "--out", str(out)]) == 0
    results = json.loads((out / "erf.json").read_text())
    models = results["models"]
    assert set(models) == {"region_only", "xl", "mamba", "full"}
    assert models["region_only"]["reach_regions"] == 0 and models["region_only"]["share_outside"] == 0
    assert models["xl"]["reach_regions"] == models["xl"]["reach_formula"] == 3  # of 5: capped by memory
    assert models["mamba"]["reach_regions"] == 5
    assert (out / "erf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reach (regions)" in capsys.readouterr().out


def test_reach_command_measures_xl_against_its_formula(tmp_path, capsys):
    from xtstream.cli import main

    out = tmp_path / "reach.json"
    assert main(["bench", "reach", "--depths", "1", "2", "--chunks", "2", "--cols", "8", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["reach"]
    assert [(r["depth"], r["chunk"], r["measured"], r["formula"]) for r in rows] == [(1, 2, 3, 3), (2, 2, 5, 5)]
    assert "measured" in capsys.readouterr().out
