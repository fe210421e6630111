"""Step policies: per_scene accumulates exactly the gradient of a scene's summed chunk losses (the
carried state detached), per_chunk steps every chunk; both step as often as they say."""

from __future__ import annotations

import pytest
import torch

from conftest import scene_chunks, tiny_model
from xtstream.engine.policy import accumulate
from xtstream.errors import ModelConfigError
from xtstream.tasks import task_for_head


def labelled(chunks, label: int = 1):
    for c in chunks:  # classification: the scene's class rides on the chunks
        c.info["label"] = label
    return chunks


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def state_requires_grad(state) -> bool:
    if isinstance(state, torch.Tensor):
        return state.requires_grad
    if isinstance(state, (list, tuple)):
        return any(state_requires_grad(s) for s in state)
    if hasattr(state, "__dataclass_fields__"):
        return any(state_requires_grad(getattr(state, f)) for f in state.__dataclass_fields__)
    return False


@pytest.mark.parametrize("head", ["xview3", "classification"])
def test_per_scene_gradient_is_that_of_the_summed_chunk_losses_with_the_state_detached(head):
    torch.manual_seed(0)
    model = tiny_model(context="xl", head=head).train()
    loss_fn = task_for_head(head).loss
    chunks = labelled(scene_chunks("a", 2, 3))  # 6 regions, 3 chunks of 2
    # the reference: one graph over the whole scene, chunk after chunk, the carried state detached
    total, state = 0.0, None
    for c in chunks:
        out, state = model(torch.from_numpy(c.pixels), torch.from_numpy(c.positions), state)
        assert not state_requires_grad(state)
        c.outputs = out
        total = total + loss_fn(c)[0]
    total.backward()
    expected = {n: g / len(chunks) for n, g in grads(model).items()}  # per_scene averages the chunks
    model.zero_grad(set_to_none=True)
    (step,) = accumulate(model, labelled(scene_chunks("a", 2, 3)), policy="per_scene", loss_fn=loss_fn)
    got = grads(model)
    assert step.chunks == 3 and step.scenes == ["a"] and step.loss == pytest.approx(float(total.detach()) / 3, rel=1e-5)
    assert got.keys() == expected.keys() and len(got) == sum(1 for _ in model.parameters())
    for name in expected:
        # float32 sums in another order: ~1e-6 apart on gradients of order 1 (the focal centre loss)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_steps_per_policy_and_scene_groups():
    torch.manual_seed(0)
    model = tiny_model(context="xl", head="classification")
    loss_fn = task_for_head("classification").loss

    def count(policy: str, k: int) -> list[int]:
        a, b = labelled(scene_chunks("a", 2, 3)), labelled(scene_chunks("b", 1, 2, seed=1), 0)  # 3 + 1 chunks
        out = []
        for step in accumulate(model, a + b, policy=policy, scenes_per_step=k, loss_fn=loss_fn):
            out.append(step.chunks)
            model.zero_grad(set_to_none=True)
        return out

    assert count("per_chunk", 1) == [1, 1, 1, 1]
    assert count("per_scene", 1) == [3, 1]
    assert count("per_scene", 2) == [4]
    assert count("per_scene", 3) == [4]  # the last scenes, fewer than asked, still step
    with pytest.raises(ModelConfigError, match=r"step policy 'per_epoch'"):
        next(accumulate(model, [], policy="per_epoch"))


@pytest.mark.parametrize("context", ["xl", "mamba"])
def test_bptt_window_gradient_flows_through_the_carried_state(context):
    # stop-gradient memory never teaches a chunk to write what a later chunk needs (the
    # across-chunk context probe stayed at AUC 0.5); a BPTT window back-propagates through it
    torch.manual_seed(0)
    model = tiny_model(context=context, head="xview3", detach_state=False).train()
    loss_fn = task_for_head("xview3").loss
    chunks = scene_chunks("a", 2, 3)  # 3 chunks of 2
    total, state = 0.0, None
    for c in chunks:
        out, state = model(torch.from_numpy(c.pixels), torch.from_numpy(c.positions), state)
        c.outputs = out
        total = total + loss_fn(c)[0]
    assert state_requires_grad(state)
    (total / len(chunks)).backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    sg = tiny_model(context=context, head="xview3")  # the same weights, stop-gradient by default
    sg.load_state_dict(model.state_dict())
    steps = list(accumulate(sg, scene_chunks("a", 2, 3), policy="per_chunk", loss_fn=loss_fn, bptt_chunks=3))
    assert [s.chunks for s in steps] == [3]  # one step for the window
    assert steps[0].loss == pytest.approx(float(total.detach()) / 3, rel=1e-5)
    got = grads(sg)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert sg.context.config.detach_state  # restored after training
    # stop-gradient training gives another gradient for the early chunks' parameters
    sg.zero_grad(set_to_none=True)
    for _ in accumulate(sg, scene_chunks("a", 2, 3), policy="per_scene", loss_fn=loss_fn):
        pass
    assert any(not torch.allclose(grads(sg)[n], expected[n], rtol=1e-3, atol=1e-6) for n in expected)


def test_bptt_windows_cut_the_state_and_step_per_window():
    torch.manual_seed(0)
    model = tiny_model(context="xl", head="xview3")
    loss_fn = task_for_head("xview3").loss
    chunks = scene_chunks("a", 2, 5) + scene_chunks("b", 2, 3, seed=1)  # 5 + 3 chunks
    sizes = []
    from xtstream.engine.state import SceneStates
    states = SceneStates()
    for step in accumulate(model, chunks, policy="per_chunk", loss_fn=loss_fn, bptt_chunks=2, states=states):
        sizes.append(step.chunks)
        # after each window's backward nothing carried may point into the freed graph
        assert not any(state_requires_grad(e["state"]) for e in states.export())
        model.zero_grad(set_to_none=True)
    assert sizes == [2, 2, 2, 2]
    assert [s.chunks for s in accumulate(model, scene_chunks("a", 2, 5), policy="per_chunk",
                                         loss_fn=loss_fn, bptt_chunks=4)] == [4, 1]
    with pytest.raises(ModelConfigError, match="bptt_chunks"):
        next(accumulate(model, [], bptt_chunks=0))


@pytest.mark.parametrize("policy", ["per_scene", "per_chunk"])
def test_whole_scene_encoder_trains_several_scenes_a_step(policy):
    # found by the classification probes: with scenes_per_step > 1 the chunks of several scenes
    # shared one backbone batch, each scene was back-propagated alone, and the second backward
    # re-entered the freed batch graph ("Trying to backward through the graph a second time")
    torch.manual_seed(0)
    model = tiny_model(context="full", head="classification")
    loss_fn = task_for_head("classification").loss
    scenes = [labelled(scene_chunks(s, 1, 2, seed=k), k % 2) for k, s in enumerate("abcd")]  # one chunk each
    interleaved = [c for group in zip(*scenes) for c in group]
    steps = list(accumulate(model, interleaved, policy=policy, scenes_per_step=2, loss_fn=loss_fn))
    assert sum(s.chunks for s in steps) == 4
    assert [s.scenes for s in steps] == ([["a", "b"], ["c", "d"]] if policy == "per_scene"
                                         else [["a"], ["b"], ["c"], ["d"]])
