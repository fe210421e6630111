"""Region encoders over every supported backbone family, and the encode_regions generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_BACKBONES
from xtstream.data.chunk import chunked
from xtstream.models.encoders import (batch_size_for, create_region_encoder, encode_regions,
                                      forward_with_grad_ratio, region_cost)
from xtstream.errors import ModelConfigError
from xtstream.data.grid import RegionGrid, extract_region
from xtstream.data.sample import RegionSample

R = 64
BACKBONES = TINY_BACKBONES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_encoder(family: str, in_chans: int = 2, **kw):
    name, tiny = BACKBONES[family]
    return create_region_encoder(name, region=R, in_chans=in_chans, **tiny, **kw)


def scene_samples(scene_id: str, h: int, w: int, bands: int = 2, seed: int = 0) -> list[RegionSample]:
    grid = RegionGrid(h, w, R)
    image = np.random.default_rng(seed).standard_normal((bands, h, w)).astype(np.float32)
    return [RegionSample(scene_id, i, grid, extract_region(image, grid, i)) for i in range(len(grid))]


@pytest.mark.parametrize("family", list(BACKBONES))
def test_feature_maps_are_nchw_with_feature_info_channels(family):
    enc = make_encoder(family, in_chans=2)
    out = enc(torch.randn(3, 2, R, R))
    assert [o.shape[1] for o in out] == enc.feature_info.channels() == enc.channels
    for o, r in zip(out, enc.feature_info.reduction()):
        assert tuple(o.shape) == (3, o.shape[1], R // r, R // r)
        assert torch.isfinite(o).all()
    assert enc.token_grid == (R // enc.reductions[-1],) * 2


@pytest.mark.parametrize("family", list(BACKBONES))
def test_backward_reaches_every_parameter(family):
    enc = make_encoder(family, in_chans=3)
    sum(o.square().mean() for o in enc(torch.randn(2, 3, R, R))).backward()
    params = list(enc.parameters())
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing and params
    assert all(torch.isfinite(p.grad).all() for p in params)


def saved_activation_bytes(enc, x) -> int:
    """Bytes autograd keeps for backward during one forward (what checkpointing exists to cut)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x)
    return total


@pytest.mark.parametrize("family", list(BACKBONES))
def test_grad_checkpointing_keeps_less_for_backward_and_gives_the_same_gradients(family):
    enc = make_encoder(family).eval()  # eval: SwinV2's default drop-path would differ run to run
    x = torch.randn(2, 2, R, R)
    weights = [torch.randn_like(o) for o in enc(x)]

    def grads():
        enc.zero_grad()
        sum((o * w).sum() for o, w in zip(enc(x), weights)).backward()
        return [p.grad.clone() for p in enc.parameters()]

    plain, plain_bytes = grads(), saved_activation_bytes(enc, x)
    enc.set_grad_checkpointing(True)
    # the point of checkpointing: stages re-run in backward instead of keeping their activations
    assert saved_activation_bytes(enc, x) < 0.6 * plain_bytes
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def batch_sizes(enc):
    """The batch size of every backbone call (a forward hook)."""
    sizes = []
    enc.register_forward_hook(lambda _m, inputs, _o: sizes.append(len(inputs[0])))
    return sizes


def test_encode_regions_keeps_order_across_batches_and_scenes():
    enc = make_encoder("convnext").eval()
    samples = scene_samples("a", 3 * R, 2 * R - 5) + scene_samples("b", R + 1, 2 * R, seed=1)
    chunks = list(encode_regions(iter(samples), enc, chunk=4, batch_size=4))
    assert [(c.scene_id, c.indices) for c in chunks] == [
        ("a", [0, 1, 2, 3]), ("a", [4, 5]), ("b", [0, 1, 2, 3])]
    assert chunks[1].last and chunks[2].last and not chunks[0].last
    assert chunks[0].positions.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    flat = [(c.scene_id, i, [f[k] for f in c.features]) for c in chunks for k, i in enumerate(c.indices)]
    with torch.no_grad():
        direct = enc(torch.from_numpy(np.stack([s.pixels for s in samples])))
    for k, (scene, index, feats) in enumerate(flat):
        assert (scene, index) == (samples[k].scene_id, samples[k].index)
        for f, d in zip(feats, direct):
            torch.testing.assert_close(f, d[k], rtol=1e-4, atol=1e-5)


def test_loose_regions_are_chunked_per_scene_and_a_scene_change_closes_a_chunk():
    a, b = scene_samples("a", R, 3 * R), scene_samples("b", R, R)
    chunks = list(chunked(a + b + a, 8))
    assert [(c.scene_id, c.indices) for c in chunks] == [("a", [0, 1, 2]), ("b", [0]), ("a", [0, 1, 2])]


def test_backbone_batches_follow_the_memory_budget_across_chunks():
    enc = make_encoder("convnext").eval()
    cost_eval = region_cost(enc, train=False)
    cost_train = region_cost(enc, train=True)
    assert 0 < cost_eval < cost_train  # training keeps every activation for backward
    samples = scene_samples("a", 3 * R, 3 * R)
    sizes = batch_sizes(enc)
    with torch.no_grad():  # chunks of 2 regions; the budget fits 4 regions: two chunks per batch
        chunks = list(encode_regions(samples, enc, chunk=2, memory_budget=4 * cost_eval))
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    assert sizes == [1, 4, 4, 1]  # one region to estimate the per-region cost, then the batches
    assert batch_size_for(cost_eval, cost_eval // 2) == 1  # too small a budget: regions in serial


def test_grad_ratio_keeps_outputs_aligned_and_grads_only_where_marked():
    enc = make_encoder("convnext")  # LayerNorm only: sub-batches give the same features
    x = torch.randn(6, 2, R, R, requires_grad=True)
    with torch.no_grad():
        full = enc(x)
    feats, mask = forward_with_grad_ratio(enc, x, 0.5, torch.Generator().manual_seed(3))
    assert mask.sum() == 3
    for f, g in zip(feats, full):
        torch.testing.assert_close(f.detach(), g, rtol=1e-4, atol=1e-5)
    feats[-1].sum().backward()
    has_grad = x.grad.flatten(1).abs().sum(1) > 0
    assert torch.equal(has_grad, mask)


def test_sample_with_wrong_pixel_shape_is_named():
    enc = make_encoder("convnext")
    bad = scene_samples("sceneX", R, R, bands=3)
    with pytest.raises(ModelConfigError, match=r"scene 'sceneX', regions 0\.\.0: pixels \(1, 3, 64, 64\).*\(1, 2, 64, 64\)"):
        next(encode_regions(bad, enc, batch_size=2))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ModelConfigError, match=r"unknown backbone 'convnext_atoo'.*convnext_atto"):
        create_region_encoder("convnext_atoo", region=R)


@pytest.mark.parametrize("family", list(BACKBONES))
def test_region_size_the_backbone_cannot_take_is_named(family):
    name, tiny = BACKBONES[family]
    with pytest.raises(ModelConfigError, match=rf"{name}.*region size 100.*\[96, 128\]"):
        create_region_encoder(name, region=100, **tiny)


def test_hub_weights_are_refused_and_a_missing_file_is_named(tmp_path):
    with pytest.raises(ModelConfigError, match="local checkpoint_path"):
        create_region_encoder("convnext_atto", region=R, pretrained=True)
    with pytest.raises(ModelConfigError, match="nope.pth does not exist"):
        create_region_encoder("convnext_atto", region=R, checkpoint_path=tmp_path / "nope.pth")


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    full = timm.create_model("convnext_atto", pretrained=False, in_chans=2)
    torch.save(full.state_dict(), tmp_path / "atto.pth")
    enc = create_region_encoder("convnext_atto", region=R, in_chans=2, checkpoint_path=tmp_path / "atto.pth")
    loaded = dict(enc.features.named_parameters())
    assert torch.equal(loaded["stem_0.weight"], full.stem[0].weight)
    assert torch.equal(loaded["stages_3.blocks.1.mlp.fc2.weight"], full.stages[3].blocks[1].mlp.fc2.weight)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stream_with_side_stream_copies_matches_the_cpu():
    enc = make_encoder("convnext").eval()
    samples = scene_samples("a", 3 * R, 3 * R) + scene_samples("b", R, 2 * R, seed=2)
    with torch.no_grad():
        cpu = list(encode_regions(samples, enc, batch_size=4))
        enc.to("cuda")
        gpu = list(encode_regions(samples, enc))  # batch size from the measured CUDA cost
    assert [i for b in gpu for i in b.indices] == [i for b in cpu for i in b.indices]
    got = torch.cat([b.features[-1].cpu() for b in gpu])
    want = torch.cat([b.features[-1] for b in cpu])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_full_size_swinv2_tiny_gives_an_8x8_token_grid_at_256():
    enc = create_region_encoder("swinv2_tiny_window8_256", region=256, in_chans=2)
    out = enc(torch.randn(1, 2, 256, 256))
    assert [tuple(o.shape[1:]) for o in out] == [(96, 64, 64), (192, 32, 32), (384, 16, 16), (768, 8, 8)]
