"""Mamba context: the scan is right (vs a sequential loop, gradcheck, mambapy) and streams exactly."""

from __future__ import annotations

import pytest
import torch

from xtstream.models.context import (ContextStream, MambaState, create_context, linear_scan, selective_scan,
                              selective_scan_sequential, sincos_2d)

D = 16


def _scan_inputs(b=2, n=37, e=6, s=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, e, generator=g, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(b, n, e, generator=g, dtype=dtype))
    A = -torch.rand(e, s, generator=g, dtype=dtype) * 4 - 0.1
    B, C = (torch.randn(b, n, s, generator=g, dtype=dtype) for _ in range(2))
    Dskip = torch.randn(e, generator=g, dtype=dtype)
    h0 = torch.randn(b, e, s, generator=g, dtype=dtype)
    return x, delta, A, B, C, Dskip, h0


@pytest.mark.parametrize("n", [1, 2, 7, 37, 64])
@pytest.mark.parametrize("chunk", [None, 5])
def test_parallel_scan_equals_sequential_loop(n, chunk):
    x, delta, A, B, C, Dk, h0 = _scan_inputs(n=n)
    for init in (None, h0):
        y, h = selective_scan(x, delta, A, B, C, Dk, init, chunk=chunk)
        y_ref, h_ref = selective_scan_sequential(x, delta, A, B, C, Dk, init)
        assert (y - y_ref).abs().max() < 1e-12 and (h - h_ref).abs().max() < 1e-12


def test_scan_gradients_match_autograd_through_the_loop():
    inputs = [t.requires_grad_(True) for t in _scan_inputs(n=13)]
    y, h = selective_scan(*inputs, chunk=4)
    (y.square().sum() + h.sum()).backward()
    fast = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    y, h = selective_scan_sequential(*inputs)
    (y.square().sum() + h.sum()).backward()
    for a, t in zip(fast, inputs):
        assert (a - t.grad).abs().max() < 1e-10


def test_gradcheck_linear_scan_and_selective_scan():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 6, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(2, 6, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    inputs = tuple(t.requires_grad_(True) for t in _scan_inputs(b=1, n=5, e=2, s=3))
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t, chunk=2), inputs)


def _pos(n, width=5):
    idx = torch.arange(n)
    return torch.stack([idx // width, idx % width], -1).to(torch.float64)


def test_encoder_matches_mambapy_with_the_same_weights():
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    ours = create_context(kind="mamba", dim=D, depth=2, d_state=8, d_conv=4, expand=2).double()
    ref = mambapy.Mamba(mambapy.MambaConfig(d_model=D, n_layers=2, d_state=8, d_conv=4,
                                            expand_factor=2)).double()
    with torch.no_grad():
        for mine, theirs in zip(ours.layers, ref.layers):
            theirs.norm.weight.copy_(torch.rand(D) + 0.5)
            mine.norm.weight.copy_(theirs.norm.weight)
            for name, p in theirs.mixer.named_parameters():
                p.add_(0.05 * torch.randn_like(p))  # move off the shared init so a swap would show
                dict(mine.mixer.named_parameters())[name].copy_(p)
    x, pos = torch.randn(2, 40, D, dtype=torch.float64), _pos(40).expand(2, 40, 2)
    y, _ = ours(x, pos)
    expected = ours.norm(ref(x + sincos_2d(pos, D)))
    assert (y - expected).abs().max() < 1e-5


@pytest.mark.parametrize("chunks", [[10, 10, 10, 10], [1, 2, 3, 34], [17, 23]])
def test_chunked_with_state_equals_unchunked(chunks):
    torch.manual_seed(0)
    enc = create_context(kind="mamba", dim=D, depth=2, d_state=8, scan_block=7).double()
    n = sum(chunks)
    x, pos = torch.randn(2, n, D, dtype=torch.float64), _pos(n).expand(2, n, 2)
    whole, _ = enc(x, pos)
    stream, parts, s = ContextStream(enc), [], 0
    for c in chunks:
        parts.append(stream(x[:, s:s + c], pos[:, s:s + c]))
        s += c
    assert (torch.cat(parts, 1) - whole).abs().max() < 1e-12
    assert isinstance(stream.state, MambaState)


def test_causal_in_row_major_order():
    torch.manual_seed(0)
    enc = create_context(kind="mamba", dim=D, depth=2).double()
    x, pos = torch.randn(1, 20, D, dtype=torch.float64), _pos(20)[None]
    y, _ = enc(x, pos)
    x2 = x.clone()
    x2[:, 12] += 1.0
    y2, _ = enc(x2, pos)
    assert torch.equal(y[:, :12], y2[:, :12]) and not torch.allclose(y[:, 12:], y2[:, 12:])


def test_state_is_detached_and_gradient_stops_at_the_chunk():
    enc = create_context(kind="mamba", dim=D, depth=2)
    first = torch.randn(1, 10, D, requires_grad=True)
    _, state = enc(first, _pos(10).float()[None])
    assert all(not t.requires_grad for layer in state.layers for t in layer)
    y, _ = enc(torch.randn(1, 10, D), _pos(10).float()[None] + 2, state)
    y.sum().backward()
    assert first.grad is None
    enc = create_context(kind="mamba", dim=D, depth=2, detach_state=False)
    _, state = enc(first, _pos(10).float()[None])
    y, _ = enc(torch.randn(1, 10, D), _pos(10).float()[None] + 2, state)
    y.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_bf16_tokens_keep_a_float32_state():
    enc = create_context(kind="mamba", dim=D, depth=1).to(torch.bfloat16)
    y, state = enc(torch.randn(1, 9, D, dtype=torch.bfloat16), _pos(9).float()[None])
    assert y.dtype == torch.bfloat16 and state.layers[0].h.dtype == torch.float32
    assert torch.isfinite(y.float()).all()


def test_cuda_backend_refuses_cpu_tensors_clearly():
    from xtstream.errors import ModelConfigError

    enc = create_context(kind="mamba", dim=D, depth=1, backend="cuda")
    with pytest.raises(ModelConfigError, match="mamba-ssm|CUDA"):
        enc(torch.randn(1, 4, D), torch.zeros(1, 4, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mamba_ssm_kernel_matches_torch_scan_with_carried_state():
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    cuda = create_context(kind="mamba", dim=64, depth=2, backend="cuda").cuda()
    torch_ = create_context(kind="mamba", dim=64, depth=2, backend="torch").cuda()
    torch_.load_state_dict(cuda.state_dict())
    x, pos = torch.randn(2, 96, 64, device="cuda"), _pos(96).float().cuda().expand(2, 96, 2)
    sa = sb = None
    for s in range(0, 96, 32):
        ya, sa = cuda(x[:, s:s + 32], pos[:, s:s + 32], sa)
        yb, sb = torch_(x[:, s:s + 32], pos[:, s:s + 32], sb)
        assert (ya - yb).abs().max() < 1e-3


def test_cuda_backend_refuses_to_drop_the_state_gradient():
    from xtstream.errors import ModelConfigError

    enc = create_context(kind="mamba", dim=D, depth=1, backend="cuda", detach_state=False)
    with pytest.raises(ModelConfigError, match="cannot back-propagate through the carried state"):
        enc(torch.randn(1, 4, D), torch.zeros(1, 4, 2))
