"""xT models over every backbone family x available context kind: chunks, streaming, training,
checkpoints, registry and bad configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xtstream
from conftest import TINY_BACKBONES, TINY_REGION as R, scene_regions as scene, tiny_model as make_model
from xtstream.errors import ModelConfigError
from xtstream.models import (ChunkState, XTConfig, list_models, load_checkpoint, load_model, save_checkpoint,
                             token_positions)
from xtstream.engine import train_chunks
from xtstream.models.context import list_contexts
from xtstream.models.heads import list_heads

FAMILIES = TINY_BACKBONES
CONTEXTS = list_contexts()  # built-ins and the plug-in conftest.py registers
WITH_STATE = [k for k in CONTEXTS if k not in ("none", "full")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def projection_loss(outputs) -> torch.Tensor:
    """A random projection of every output (a plain sum is flat under LayerNorm)."""
    values = outputs.values() if isinstance(outputs, dict) else [outputs]
    g = torch.Generator().manual_seed(1)
    return sum((v * torch.randn(v.shape, generator=g)).sum() for v in values)


HEADS = list_heads()  # built-ins and the plug-in conftest.py registers (collected before other test modules)
OUT_SHAPES = {"xview3": (4, 1, R // 2, R // 2),  # the head's default output stride 2
              "classification": (2, 5), "toy_count": (4, 1)}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunk_shapes_finite_and_every_parameter_gets_a_gradient(family, context, head):
    model = make_model(family, context, head)
    pixels = torch.randn(2, 2, 2, R, R)  # two scenes in lock step, a chunk of two regions
    out, state = model(pixels, torch.tensor([[0, 0], [0, 1]]))
    values = out.values() if isinstance(out, dict) else [out]
    assert all(tuple(v.shape) == OUT_SHAPES[head] and torch.isfinite(v).all() for v in values)
    projection_loss(out).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert isinstance(state, ChunkState)


def test_token_positions_follow_the_scene_token_grid():
    pos = token_positions(torch.tensor([[0, 1], [2, 0]]), 2, 2)
    assert pos.tolist() == [[0, 2], [0, 3], [1, 2], [1, 3],
                            [4, 0], [4, 1], [5, 0], [5, 1]]


@pytest.mark.parametrize("context", WITH_STATE + ["none"])
def test_stream_matches_chunk_by_chunk_forward_and_resets_per_scene(context):
    model = make_model("convnext", context).eval()
    a, b = scene("a", 2, 3), scene("b", 2, 2, seed=1)
    with torch.no_grad():
        chunks = list(model.stream(iter(a + b)))
        assert [(c.scene_id, c.indices) for c in chunks] == [
            ("a", [0, 1]), ("a", [2, 3]), ("a", [4, 5]), ("b", [0, 1]), ("b", [2, 3])]
        state = None
        for k, c in enumerate(chunks):
            if k == 3:
                state = None  # the second scene starts from nothing
            expected, state = model(torch.from_numpy(c.pixels), torch.from_numpy(c.positions), state)
            for name in expected:
                torch.testing.assert_close(c.outputs[name], expected[name], rtol=1e-4, atol=1e-5)
        alone = list(model.stream(b))
    for c, d in zip(chunks[3:], alone):
        torch.testing.assert_close(c.outputs["centre"], d.outputs["centre"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("context", WITH_STATE)
def test_the_previous_chunk_reaches_the_next_through_the_context(context):
    model = make_model("convnext", context).eval()
    p1, p2 = torch.randn(2, 2, R, R), torch.randn(2, 2, R, R)
    pos1, pos2 = torch.tensor([[0, 0], [0, 1]]), torch.tensor([[1, 0], [1, 1]])
    with torch.no_grad():
        _, state = model(p1, pos1)
        with_memory, _ = model(p2, pos2, state)
        without, _ = model(p2, pos2)
    assert not torch.allclose(with_memory["centre"], without["centre"], atol=1e-5)


@pytest.mark.parametrize("head", ["xview3", "classification"])
@pytest.mark.parametrize("context", WITH_STATE + ["none"])
def test_gradient_flows_only_inside_a_chunk(context, head):
    model = make_model("convnext", context, head)
    p1 = torch.randn(1, 2, 2, R, R, requires_grad=True)
    p2 = torch.randn(1, 2, 2, R, R, requires_grad=True)
    _, state = model(p1, torch.tensor([[0, 0], [0, 1]]))
    out, _ = model(p2, torch.tensor([[1, 0], [1, 1]]), state)
    projection_loss(out).backward()
    assert p1.grad is None
    assert p2.grad is not None and p2.grad.abs().sum() > 0


def test_train_chunks_steps_once_per_chunk_and_changes_weights():
    model = make_model("convnext", CONTEXTS[-1])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    records = list(train_chunks(model, scene("a", 2, 2) + scene("b", 1, 3), opt))
    assert [(r["scene_id"], r["indices"]) for r in records] == [
        ("a", [0, 1]), ("a", [2, 3]), ("b", [0, 1]), ("b", [2])]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = make_model("convnext", CONTEXTS[-1]).eval()
    path = save_checkpoint(model, tmp_path / "m.pt", epoch=3)
    loaded = load_model(path).eval()
    assert loaded.config == model.config
    x, pos = torch.randn(2, 2, R, R), torch.tensor([[0, 0], [0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, pos)[0]["centre"], model(x, pos)[0]["centre"])
    load_checkpoint(make_model("convnext", CONTEXTS[-1], grad_ratio=0.5), path)  # runtime field only
    other = make_model("convnext", CONTEXTS[-1], in_chans=3, chunk=4)
    with pytest.raises(ModelConfigError) as err:
        load_checkpoint(other, path)
    assert "chunk: checkpoint 2 vs model 4" in str(err.value) and "in_chans: checkpoint 2 vs model 3" in str(err.value)


def test_checkpoints_that_are_not_ours_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelConfigError, match="not an xtstream model checkpoint"):
        load_model(tmp_path / "foreign.pt")
    torch.save({"format": "xtstream-model", "config": XTConfig("convnext_atto"), "state_dict": {}},
               tmp_path / "pickled.pt")  # a pickled object: weights_only loading must refuse it
    with pytest.raises(ModelConfigError, match="weights-only"):
        load_model(tmp_path / "pickled.pt")


def test_registry_presets_and_parameter_counts():
    names = list_models("xt_*")
    assert {"xt_convnext_atto_xl", "xt_swinv2_tiny_xl", "xt_swinv2_tiny_mamba", "xt_convnext_atto"} <= set(names)
    model = xtstream.create_model("xt_test_hiera_none")
    counts = model.num_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == counts["encoder"] + counts["projection"] + counts["context"] + counts["head"]
    assert f"params={counts['total']:,}" in repr(model)
    assert f"{counts['encoder']:,}" in model.summary()


def test_nominal_input_size_is_reported_and_does_not_bind_checkpoints(tmp_path):
    # the call: a timm name, a context kind, and the paper's knobs
    swin_kw = dict(FAMILIES["swinv2"][1], window_size=8)
    model = xtstream.create_model("swinv2_tiny_window8_256", context="xl", region=R, input=1000, chunk=8,
                                  depth=1, **swin_kw)
    assert "input 1000x1000: 16x16 = 256 regions, 32 chunks per image" in model.summary()
    path = save_checkpoint(model, tmp_path / "m.pt")
    other = xtstream.create_model("swinv2_tiny_window8_256", context="xl", region=R, input=4096, chunk=8,
                                  depth=1, **swin_kw)
    load_checkpoint(other, path)  # the same weights serve any input size
    with pytest.raises(ModelConfigError, match="input 32 px is smaller than one region of 64 px"):
        xtstream.create_model("convnext_atto", region=R, input=32)


def test_bad_configurations_name_both_sides():
    with pytest.raises(ModelConfigError, match="unknown backbone 'convnext_tyni'.*convnext_tiny"):
        xtstream.create_model("convnext_tyni")
    with pytest.raises(ModelConfigError, match="convnext_atto.*region size 200"):
        xtstream.create_model("convnext_atto", region=200)
    with pytest.raises(ModelConfigError, match=r"context 'lstm' is not a registered context encoder; known: \[.*'xl'"):
        xtstream.create_model("convnext_atto", context="lstm")
    with pytest.raises(ModelConfigError, match=r"head 'segment' is not a registered head; known: \[.*'xview3'"):
        xtstream.create_model("convnext_atto", head="segment")


@pytest.mark.parametrize("context", WITH_STATE)
def test_feature_dims_that_do_not_fit_the_context_are_named(context):
    from xtstream.models.context import create_context

    with pytest.raises(ModelConfigError, match=r"64-channel tokens.*dim=32"):
        make_model("convnext", context, project=False)
    with pytest.raises(ModelConfigError, match=r"dim=48.*64 channels.*dim=32"):
        from xtstream.models import XTModel
        from xtstream.models.config import config_from_kwargs

        XTModel(config_from_kwargs("convnext_atto", region=R, context=context, dim=32, depth=1, heads=2,
                                   **TINY_BACKBONES["convnext"][1]),
                context_encoder=create_context(kind=context, dim=48, depth=1, heads=2))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_and_runs_a_chunk(name):
    model = xtstream.create_model(name).eval()
    c = model.config
    with torch.no_grad():
        out, _ = model(torch.randn(2, c.in_chans, c.region, c.region), torch.tensor([[0, 0], [0, 1]]))
    values = out.values() if isinstance(out, dict) else [out]
    assert all(torch.isfinite(v).all() for v in values)


def test_xl_has_region_memory_by_default_and_older_saved_configs_keep_running_without(tmp_path):
    """New XL models remember one key per earlier region (``region_mem`` 128, the context task's
    winner); a checkpoint saved before region memory existed has no ``region_mem`` and must load
    as it ran, without one (no parameters tell the two apart)."""
    model = make_model("convnext", "xl").eval()
    assert model.config.context_kwargs["region_mem"] == 128 and model.context.config.region_mem == 128
    old = model.config.to_dict()
    del old["context_kwargs"]["region_mem"]
    assert XTConfig.from_dict(old).context_kwargs["region_mem"] == 0
    path = save_checkpoint(model, tmp_path / "m.pt")
    assert load_model(path).context.config.region_mem == 128  # saved now: the key is there
    assert make_model("convnext", "xl", region_mem=0).context.config.region_mem == 0
    assert "region_mem" not in make_model("convnext", "mamba").config.context_kwargs
