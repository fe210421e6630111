"""The streaming engine: one context state per scene whatever the interleaving, order checked,
the whole scene for context="full", backbone batches by memory, plug-in contexts and heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xtstream
from conftest import RunningMeanContext, scene_chunks, tiny_model
from xtstream.data.chunk import RegionChunk
from xtstream.engine import SceneStates, stack_states, select_state
from xtstream.errors import ModelConfigError, StreamOrderError
from xtstream.models.context import register_context
from xtstream.models.heads import register_head

STREAMING = ["xl", "mamba"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def outputs_by_chunk(chunks) -> dict[tuple[str, int], torch.Tensor]:
    out = {}
    for c in chunks:
        value = c.outputs["centre"] if isinstance(c.outputs, dict) else c.outputs
        out[(c.scene_id, c.start)] = value.detach().clone()
    return out


def interleave(*scenes):
    """Round-robin over the scenes' chunk lists, as DataLoader workers hand them out."""
    out, its = [], [iter(s) for s in scenes]
    while its:
        for it in list(its):
            try:
                out.append(next(it))
            except StopIteration:
                its.remove(it)
    return out


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"chunk {key}")


@pytest.mark.parametrize("head", ["xview3", "classification"])
@pytest.mark.parametrize("context", STREAMING)
def test_interleaved_scenes_keep_their_context_memory(context, head):
    model = tiny_model(context=context, head=head, depth=2).eval()
    a, b, c = scene_chunks("a", 3, 3), scene_chunks("b", 2, 3, seed=1), scene_chunks("c", 3, 2, seed=2)
    with torch.no_grad():
        alone = {}
        for s in (a, b, c):
            alone.update(outputs_by_chunk(model.stream(s)))
        mixed = outputs_by_chunk(model.stream(interleave(a, b, c)))
        # the old engine reset the memory at every scene change: the memory must matter here
        cut = outputs_by_chunk(model.stream([ch for ch in interleave(a, b, c) if ch.scene_id == "a"][1:2],
                                            states=_opened(model, a[0])))
    assert_same_outputs(mixed, alone)
    assert not torch.allclose(cut[("a", 2)], _fresh(model, a[1]), atol=1e-5)


def _opened(model, first: RegionChunk) -> SceneStates:
    states = SceneStates()
    list(model.stream([first], states=states))
    return states


def _fresh(model, chunk: RegionChunk) -> torch.Tensor:
    pixels, pos = torch.from_numpy(chunk.pixels), torch.from_numpy(chunk.positions)
    out, _ = model(pixels, pos)
    return out["centre"] if isinstance(out, dict) else out


def test_same_position_chunks_of_several_scenes_share_one_context_batch():
    model = tiny_model(context="xl").eval()
    a, b = scene_chunks("a", 2, 2), scene_chunks("b", 2, 2, seed=1)
    with torch.no_grad():
        groups = list(model.stream_groups(interleave(a, b)))
        alone = {**outputs_by_chunk(model.stream(a)), **outputs_by_chunk(model.stream(b))}
    assert [[(c.scene_id, c.start) for c in g] for g in groups] == [[("a", 0), ("b", 0)], [("a", 2), ("b", 2)]]
    assert_same_outputs(outputs_by_chunk(c for g in groups for c in g), alone)


@pytest.mark.parametrize("make_bad, message", [
    (lambda a: [a[0], a[2]], r"scene 'a': chunk of regions 4\.\.5 arrived, expected region 2 next: a gap"),
    (lambda a: [a[0], a[1], a[1]], r"scene 'a': chunk of regions 2\.\.3 arrived, expected region 4 next: out of order"),
    (lambda a: [a[1]], r"scene 'a': chunk of regions 2\.\.3 arrived, but the scene has not started"),
])
def test_out_of_order_or_missing_chunks_are_errors_naming_the_scene(make_bad, message):
    model = tiny_model(context="xl").eval()
    a = scene_chunks("a", 3, 3)
    with torch.no_grad(), pytest.raises(StreamOrderError, match=message):
        list(model.stream(make_bad(a)))


def test_open_scenes_are_bounded_with_a_clear_error():
    model = tiny_model(context="xl").eval()
    firsts = [scene_chunks(f"s{k}", 2, 2)[0] for k in range(3)]
    with torch.no_grad(), pytest.raises(StreamOrderError, match=r"would make 3 open scenes \(max_open=2\)"):
        list(model.stream(firsts, states=SceneStates(max_open=2)))
    states = SceneStates(max_open=2)
    with torch.no_grad():
        for k in range(3):  # finished scenes free their place
            list(model.stream(scene_chunks(f"s{k}", 2, 2), states=states))
    assert len(states) == 0


def test_a_chunk_size_other_than_the_models_is_named():
    model = tiny_model(context="xl").eval()
    with torch.no_grad(), pytest.raises(ModelConfigError, match=r"chunk of 4 regions.*context chunk is 2.*chunk=2"):
        list(model.stream(scene_chunks("a", 3, 3, chunk=4)))


@pytest.mark.parametrize("head", ["xview3", "classification"])
def test_full_context_sees_the_whole_scene(head):
    model = tiny_model(context="full", head=head).eval()
    a = scene_chunks("a", 3, 3)  # 5 chunks
    changed = scene_chunks("a", 3, 3)
    changed[0].pixels = changed[0].pixels + 3.0  # only the first chunk's pixels differ
    with torch.no_grad():
        base = outputs_by_chunk(model.stream(a))
        after = outputs_by_chunk(model.stream(changed))
        groups = list(model.stream_groups(scene_chunks("a", 3, 3)))
    assert [len(g) for g in groups] == [5]  # the scene comes out at once
    if head == "xview3":  # chunk 4's regions never saw chunk 0's pixels but its outputs moved
        assert not torch.allclose(base[("a", 8)], after[("a", 8)], atol=1e-5)
    last_changed = scene_chunks("a", 3, 3)
    last_changed[-1].pixels = last_changed[-1].pixels + 3.0
    with torch.no_grad():
        later = outputs_by_chunk(model.stream(last_changed))
    if head == "xview3":  # and the first chunk's outputs depend on the last chunk
        assert not torch.allclose(base[("a", 0)], later[("a", 0)], atol=1e-5)
    else:  # the scene's logits (after its last chunk) depend on every chunk
        assert not torch.allclose(base[("a", 8)], after[("a", 8)], atol=1e-5)
    assert "whole scene at once" in model.summary()


def test_full_context_equals_one_pass_over_the_scene_tokens():
    model = tiny_model(context="full", head="xview3").eval()
    a = scene_chunks("a", 2, 3)
    with torch.no_grad():
        streamed = torch.cat([c.outputs["centre"] for c in model.stream(a)])
        pixels = torch.from_numpy(np.concatenate([c.pixels for c in a]))
        positions = torch.from_numpy(np.concatenate([c.positions for c in a]))
        whole = model.forward_features(model.encoder(pixels), positions)[0]["centre"]
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-5)


def test_backbone_batches_span_several_chunks_under_the_memory_budget():
    model = tiny_model(context="xl", chunk=2).eval()
    sizes = []
    model.encoder.register_forward_hook(lambda _m, inputs, _o: sizes.append(len(inputs[0])))
    with torch.no_grad():
        out = list(model.stream(scene_chunks("a", 3, 3), batch_size=6))
    assert [len(c) for c in out] == [2, 2, 2, 2, 1]
    assert sizes == [6, 3]  # three chunks per backbone batch, not one chunk per batch
    from xtstream.models.encoders import region_cost

    cost = region_cost(model.encoder)
    sizes.clear()
    with torch.no_grad():
        list(model.stream(scene_chunks("a", 3, 3), memory_budget=4 * cost))
    assert sizes[-3:] == [4, 4, 1]


def test_training_steps_once_per_scene_group_when_asked():
    model = tiny_model(context="xl")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    a, b = scene_chunks("a", 2, 2), scene_chunks("b", 2, 2, seed=1)
    one = list(xtstream.train_chunks(model, interleave(a, b), opt))
    two = list(xtstream.train_chunks(model, interleave(a, b), opt, scenes_per_step=2))
    assert [r["scenes"] for r in one] == [["a"], ["b"], ["a"], ["b"]]
    assert [r["scenes"] for r in two] == [["a", "b"], ["a", "b"]]


def test_states_stack_and_split_back():
    from xtstream.models.context import XLState
    from xtstream.models.heads import PoolState
    from xtstream.models import ChunkState

    s = [ChunkState(XLState((torch.full((1, 3, 4), float(k)), None)), PoolState(torch.full((1, 4), k), 12))
         for k in range(3)]
    batch = stack_states(s)
    assert batch.context.mems[0].shape == (3, 3, 4) and batch.head.count == 12
    for k in range(3):
        back = select_state(batch, k, 3)
        assert torch.equal(back.context.mems[0], s[k].context.mems[0]) and back.context.mems[1] is None
        assert torch.equal(back.head.total, s[k].head.total)


# -- plug-ins (registered in conftest.py, from outside the package) ------------------------------
def test_plugin_context_and_head_build_a_model_and_stream():
    assert "toy_running_mean" in xtstream.list_contexts() and "toy_count" in xtstream.list_heads()
    model = tiny_model(context="toy_running_mean", head="toy_count", context_kwargs={"options": {"scale": 2.0}})
    assert model.context.scale.item() == 2.0
    a = scene_chunks("a", 2, 3)
    with torch.no_grad():
        out = list(model.eval().stream(a))
    assert [tuple(c.outputs.shape) for c in out] == [(2, 1)] * 3
    changed = scene_chunks("a", 2, 3)
    changed[0].pixels = changed[0].pixels + 1.0
    with torch.no_grad():
        moved = list(model.stream(changed))
    assert not torch.allclose(out[2].outputs, moved[2].outputs)  # its state carried the first chunk
    with pytest.raises(ModelConfigError, match="already registered"):
        register_context("xl")(RunningMeanContext)
    with pytest.raises(ModelConfigError, match="already registered"):
        register_head("xview3")(lambda channels, reductions, config: None)
