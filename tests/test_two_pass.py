"""Reading scenes twice (``order="two_pass"``): the first pass fills the context state, the second is
scored from it, so a region's context holds what the state kept of the whole scene — below it too."""

import numpy as np
import pytest
import torch

from conftest import tiny_model
from xtstream.data.sources import ArraySource
from xtstream.data.streams import stream_scenes
from xtstream.errors import ModelConfigError, StreamOrderError

REGION = 64
#: ArraySource scenes are tiny: re-reading their chunk rows costs nothing here
pytestmark = pytest.mark.filterwarnings("ignore:.*are computed again for later region rows")


def _image(seed: int, rows: int = 3, cols: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, rows * REGION - 5, cols * REGION)).astype(np.float32)


def _outputs(model, images: dict[str, np.ndarray], passes: int) -> dict[tuple[str, int], torch.Tensor]:
    """Each region's vessel map, by (scene, index)."""
    dataset = stream_scenes([ArraySource(im, scene_id=sid) for sid, im in images.items()], REGION,
                            chunk=model.config.chunk, passes=passes)
    out = {}
    with torch.no_grad():
        for c in model.eval().stream(dataset):
            for k, i in enumerate(c.indices):
                assert (c.scene_id, i) not in out, "a region scored twice"
                out[c.scene_id, i] = c.outputs["vessel"][k].clone()
    return out


def test_a_scene_read_twice_marks_its_first_pass():
    images = {"a": _image(0), "b": _image(1, 2, 2)}
    chunks = list(stream_scenes([ArraySource(im, scene_id=sid) for sid, im in images.items()], REGION,
                                chunk=2, passes=2))
    for sid, n in (("a", 9), ("b", 4)):
        mine = [c for c in chunks if c.scene_id == sid]
        first, second = mine[: len(mine) // 2], mine[len(mine) // 2:]
        assert all(c.info.get("prime") for c in first) and not any(c.info.get("prime") for c in second)
        assert [i for c in first for i in c.indices] == [i for c in second for i in c.indices] == list(range(n))
        for p, q in zip(first, second):
            np.testing.assert_array_equal(np.asarray(p.pixels), np.asarray(q.pixels))


@pytest.mark.parametrize("context", ["xl", "mamba"])
def test_two_pass_gives_the_first_region_context_from_the_last(context):
    """A region-row-major read cannot let region 0 see region 8; reading twice does, and it still
    scores every region exactly once."""
    torch.manual_seed(0)
    two = tiny_model(context=context, order="two_pass")
    one = tiny_model(context=context)
    one.load_state_dict(two.state_dict())
    image = _image(3)
    changed = image.copy()
    changed[:, 2 * REGION:, 2 * REGION:] += 3.0  # the last region (row 2, column 2) only
    for model, passes, sees in ((one, 1, False), (two, 2, True)):
        before = _outputs(model, {"s": image}, passes)
        after = _outputs(model, {"s": changed}, passes)
        assert sorted(before) == [("s", i) for i in range(9)]
        differs = not torch.allclose(before["s", 0], after["s", 0], atol=1e-6)
        assert differs == sees, (context, passes)


def test_interleaved_scenes_read_twice_equal_scenes_read_one_after_another():
    """Chunks of two scenes alternating (as DataLoader workers deliver them), same-position chunks
    batched together, give each scene the outputs it gets alone."""
    torch.manual_seed(1)
    model = tiny_model(context="xl", order="two_pass")
    images = {"a": _image(4), "b": _image(5)}
    alone = {**_outputs(model, {"a": images["a"]}, 2), **_outputs(model, {"b": images["b"]}, 2)}
    per_scene = [list(stream_scenes([ArraySource(images[s], scene_id=s)], REGION, chunk=2, passes=2))
                 for s in "ab"]
    mixed = [c for pair in zip(*per_scene) for c in pair]
    with torch.no_grad():
        got = {(c.scene_id, i): c.outputs["vessel"][k] for c in model.eval().stream(mixed)
               for k, i in enumerate(c.indices)}
    assert sorted(got) == sorted(alone)
    for key in alone:
        torch.testing.assert_close(got[key], alone[key], atol=1e-5, rtol=1e-4)


def test_the_number_of_passes_must_be_the_models():
    image = {"s": _image(6, 2, 2)}
    with pytest.raises(StreamOrderError, match="passes=2"):
        _outputs(tiny_model(context="xl", order="two_pass"), image, 1)
    with pytest.raises(StreamOrderError, match="passes=1"):
        _outputs(tiny_model(context="xl"), image, 2)


@pytest.mark.parametrize("context,order,match", [("none", "two_pass", "no state"), ("full", "two_pass", "no state"),
                                                 ("xl", "snake", "bench context"), ("xl", "zigzag", "row_major")])
def test_orders_the_pipeline_cannot_read_are_refused(context, order, match):
    with pytest.raises(ModelConfigError, match=match):
        tiny_model(context=context, order=order)


def test_two_pass_prediction_writes_every_region_once(tmp_path):
    """predict on a two-pass model: the scene's maps whole, from the scored pass (they differ from
    the same weights read once), and the same files as a one-pass run."""
    import xarray as xr

    import xtstream

    torch.manual_seed(2)
    two = tiny_model(context="xl", order="two_pass")
    one = tiny_model(context="xl")
    one.load_state_dict(two.state_dict())
    source = ArraySource(_image(7), scene_id="p")
    assert xtstream.predict(two, [source], tmp_path / "two", progress=False).predicted == ["p"]
    assert xtstream.predict(one, [source], tmp_path / "one", progress=False).predicted == ["p"]
    files = [sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*") if p.is_file())
             for run in ("two", "one")]
    assert files[0] == files[1]
    a, b = (xr.open_zarr(tmp_path / run / "scenes" / "p.zarr")["vessel"].values for run in ("two", "one"))
    assert a.shape == b.shape and np.isfinite(a).all()
    assert not np.allclose(a, b)


def _read_twice(chunks):
    from dataclasses import replace

    return [replace(c, info={**c.info, "prime": True}) for c in chunks] + chunks


@pytest.mark.parametrize("bptt_chunks,reaches,n_steps", [(1, [False] * 3, 3), (2, [False, False, True], 2),
                                                        (6, [True] * 3, 1)])
def test_a_later_loss_reaches_the_first_pass_only_inside_a_bptt_window(bptt_chunks, reaches, n_steps):
    """bptt_chunks=1: the first pass runs without gradient (memory one chunk's graph); a window
    spanning both passes lets the scored chunks' losses reach the first pass's regions — what
    teaches a region to write what a region read *before* it needs in the second pass."""
    from conftest import scene_chunks
    from xtstream.engine.data import SceneSize, steps_per_epoch
    from xtstream.engine.policy import accumulate

    torch.manual_seed(3)
    model = tiny_model(context="xl", order="two_pass").train()
    seen: list[torch.Tensor] = []

    def keep(module, args, out):
        last = out[-1]
        if last.requires_grad:
            last.retain_grad()
        seen.append(last)

    handle = model.encoder.register_forward_hook(keep)
    chunks = _read_twice(scene_chunks("s", 2, 3))  # 3 chunks of 2 regions, read twice
    steps = list(accumulate(model, chunks, policy="per_chunk", bptt_chunks=bptt_chunks))
    handle.remove()
    assert len(seen) == 6 and sum(s.chunks for s in steps) == 6
    # a step per window holding a scored chunk (windows of first-pass chunks alone take none),
    # as the learning-rate schedule counts them
    assert len(steps) == n_steps == steps_per_epoch(
        [SceneSize("s", 6)], 0, chunk=2, policy="per_chunk", scenes_per_step=1, workers=0, world=1,
        shuffle=False, seed=0, bptt_chunks=bptt_chunks, passes=2)
    got = [t.grad is not None and bool(t.grad.abs().sum() > 0) for t in seen[:3]]
    assert got == reaches
