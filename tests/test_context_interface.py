"""The context-encoder interface, for every kind x attention: shapes, gradients, state, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xtstream.models.context import (ContextConfig, ContextEncoder, ContextStream, create_context, detach_all,
                              sincos_2d)
from xtstream.errors import ModelConfigError

D = 32
# every kind with each attention it reads; hyper made approximate at this size (64 keys > 16)
VARIANTS = [
    dict(kind="xl"), dict(kind="xl", mem_len=20),
    dict(kind="xl", attention="hyper", hyper_min_seq_len=16, hyper_block_size=8, hyper_samples=8),
    dict(kind="full"),
    dict(kind="full", attention="hyper", hyper_min_seq_len=16, hyper_block_size=8, hyper_samples=8),
    dict(kind="mamba"), dict(kind="none"),
]
IDS = ["-".join(str(v) for v in kw.values()) for kw in VARIANTS]


def _chunk(b=2, n=32, offset=0):
    idx = torch.arange(offset, offset + n)
    pos = torch.stack([idx // 8, idx % 8], -1).float().expand(b, n, 2)
    return torch.randn(b, n, D), pos


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_shapes_dtype_and_finite_over_chunks(kw):
    enc = create_context(dim=D, depth=2, heads=4, **kw)
    assert isinstance(enc, ContextEncoder) and enc.config.kind == kw["kind"]
    stream = ContextStream(enc)
    for i in range(3):
        x, pos = _chunk(n=32 - 5 * i, offset=40 * i)  # the last chunk of a scene may be shorter
        y = stream(x, pos)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert stream.chunks == 3
    if kw["kind"] in ("full", "none"):
        assert stream.state is None
    stream.reset()
    assert stream.state is None and stream.chunks == 0


@pytest.mark.parametrize("kw", [v for v in VARIANTS if v["kind"] != "none"], ids=IDS[:-1])
def test_every_parameter_gets_a_gradient_within_a_chunk(kw):
    enc = create_context(dim=D, depth=2, heads=4, **kw)
    _, state = enc(*_chunk())
    y, _ = enc(*_chunk(offset=32), state)  # with memory/state in play
    y.square().mean().backward()
    params = list(enc.parameters())
    with_grad = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(params) > 0 and len(with_grad) == len(params)


@pytest.mark.parametrize("kind", ["xl", "mamba"])
def test_gradient_does_not_flow_into_the_previous_chunk(kind):
    enc = create_context(kind=kind, dim=D, depth=2, heads=4)
    x1, p1 = _chunk()
    x1.requires_grad_(True)
    y1, state = enc(x1, p1)
    y2, _ = enc(*_chunk(offset=32), state)
    y2.sum().backward()
    assert x1.grad is None
    y1.sum().backward()  # the first chunk's own graph is intact
    assert x1.grad is not None


@pytest.mark.parametrize("kind", ["xl", "full", "mamba"])
def test_positions_matter(kind):
    torch.manual_seed(0)
    enc = create_context(kind=kind, dim=D, depth=1, heads=4).eval()
    x, pos = _chunk()
    assert not torch.allclose(enc(x, pos)[0], enc(x, pos + 3.0)[0])


def test_none_is_the_identity():
    enc = create_context(kind="none", dim=D)
    x, pos = _chunk()
    y, state = enc(x, pos)
    assert y is x and state is None and sum(p.numel() for p in enc.parameters()) == 0


def test_sincos_2d_values_and_shape():
    pos = torch.tensor([[[0.0, 0.0], [2.0, 5.0]]])
    e = sincos_2d(pos, 8)
    assert e.shape == (1, 2, 8)
    torch.testing.assert_close(e[0, 1, :2], torch.tensor([2.0, 2.0 / 100]).sin())  # rows: w = 1, 1/100
    torch.testing.assert_close(e[0, 1, 6:], torch.tensor([5.0, 5.0 / 100]).cos())  # cols
    assert sincos_2d(pos, 10)[..., 8:].abs().max() == 0  # dim % 4 channels are zero
    assert sincos_2d(pos.long(), 8).dtype == torch.float32
    # distinct positions get distinct embeddings, and rows/cols are not interchangeable
    assert not torch.allclose(sincos_2d(torch.tensor([[[1.0, 2.0]]]), 16), sincos_2d(torch.tensor([[[2.0, 1.0]]]), 16))


@pytest.mark.parametrize("kw,match", [
    (dict(kind="transformer"), "kind 'transformer'"),
    (dict(attention="flash"), "attention 'flash'"),
    (dict(dim=30, heads=4), "dim=30 is not divisible by heads=4"),
    (dict(depth=0), "depth must be an integer >= 1"),
    (dict(mem_len=-1), "mem_len"),
    (dict(dropout=1.0), "dropout"),
    (dict(backend="triton"), "backend 'triton'"),
    (dict(hyper_bits=20), "hyper_bits"),
    (dict(kind="mamba", dim=2), "dim >= 4"),
    (dict(mlp_ratio=0), "mlp_ratio"),
])
def test_bad_config_raises_clearly(kw, match):
    with pytest.raises(ModelConfigError, match=match):
        ContextConfig(**kw)


def test_unknown_override_names_the_field_and_the_known_ones():
    with pytest.raises(ModelConfigError, match=r"no field\(s\) \['memlen'\].*mem_len"):
        create_context(kind="xl", memlen=4)
    with pytest.raises(ModelConfigError, match="ContextConfig"):
        create_context({"kind": "xl"})


def test_mamba_ignores_heads_divisibility_and_config_round_trips():
    cfg = ContextConfig(kind="mamba", dim=36, heads=8)
    assert ContextConfig(**dataclasses.asdict(cfg)) == cfg
    assert create_context(cfg).config is cfg


@pytest.mark.parametrize("kind", ["xl", "mamba", "full", "none"])
def test_bad_inputs_raise_clearly(kind):
    enc = create_context(kind=kind, dim=D, depth=1, heads=4)
    x, pos = _chunk()
    with pytest.raises(ModelConfigError, match=rf"\(B, L, {D}\)"):
        enc(torch.randn(2, 32, D + 1), pos)
    with pytest.raises(ModelConfigError, match="pos must be"):
        enc(x, pos[:, :-1])


@pytest.mark.parametrize("kind", ["xl", "mamba"])
def test_state_from_another_batch_or_encoder_is_refused(kind):
    enc = create_context(kind=kind, dim=D, depth=2, heads=4)
    _, state = enc(*_chunk(b=2))
    with pytest.raises(ModelConfigError, match="batch of 2"):
        enc(*_chunk(b=3), state)
    other = create_context(kind=kind, dim=D, depth=1, heads=4)
    with pytest.raises(ModelConfigError, match="state must be"):
        other(*_chunk(b=2), state)


def test_detach_all_cuts_a_kept_graph():
    enc = create_context(kind="xl", dim=D, depth=2, heads=4, detach_state=False)
    x, pos = _chunk()
    _, state = enc(x.requires_grad_(True), pos)
    assert all(m.requires_grad for m in state.mems)
    cut = detach_all(state)
    assert type(cut) is type(state) and not any(m.requires_grad for m in cut.mems)


def test_stream_refuses_a_plain_module():
    with pytest.raises(ModelConfigError, match="ContextEncoder"):
        ContextStream(torch.nn.Linear(2, 2))
