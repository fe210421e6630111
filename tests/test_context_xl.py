"""Transformer-XL context: chunked processing is exactly a block-masked full pass."""

from __future__ import annotations

import pytest
import torch

from xtstream.models.context import ContextStream, XLState, create_context, xl_attention_mask

D = 16


def _scene(chunks: list[int], batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(chunks)
    x = torch.randn(batch, n, D, generator=g, dtype=torch.float64)
    pos = torch.stack(torch.meshgrid(torch.arange(n // 4 + 1), torch.arange(4), indexing="ij"), -1)
    pos = pos.reshape(-1, 2)[:n].to(torch.float64).expand(batch, n, 2)
    return x, pos


def _chunked(enc, x, pos, chunks):
    stream, out, start = ContextStream(enc), [], 0
    for n in chunks:
        out.append(stream(x[:, start:start + n], pos[:, start:start + n]))
        start += n
    return torch.cat(out, dim=1), stream.state


def _xl(depth, mem_len, attention="exact", **kw):
    torch.manual_seed(depth)
    return create_context(kind="xl", dim=D, depth=depth, heads=2, mem_len=mem_len,
                          attention=attention, **kw).double().eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("mem_len,chunks", [(None, [6, 6, 6, 6]), (6, [6, 6, 6, 6]), (None, [5, 7, 3, 6]),
                                            (15, [6, 6, 6, 6]), (4, [6, 6, 6, 6]), (0, [6, 6, 6])])
def test_chunked_equals_block_masked_full_pass(depth, mem_len, chunks):
    enc = _xl(depth, mem_len)
    x, pos = _scene(chunks)
    chunked, _ = _chunked(enc, x, pos, chunks)
    full = enc.forward_masked(x, pos, xl_attention_mask(chunks, mem_len))
    assert (chunked - full).abs().max().item() < 1e-10


def test_finite_memory_differs_from_unmasked_attention_but_first_chunk_is_alone():
    enc = _xl(2, 6)
    chunks = [6, 6, 6]
    x, pos = _scene(chunks)
    chunked, _ = _chunked(enc, x, pos, chunks)
    everything = enc.forward_masked(x, pos, torch.ones(18, 18, dtype=torch.bool))
    assert (chunked[:, 6:] - everything[:, 6:]).abs().max() > 1e-3
    alone, state = enc(x[:, :6], pos[:, :6], None)
    assert torch.equal(chunked[:, :6], alone)
    assert isinstance(state, XLState) and len(state.mems) == 2


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_information_reaches_n_chunks_ahead_through_n_layers_only(depth):
    """Perturb chunk 0; chunk k changes iff k <= depth (mem_len = one chunk)."""
    enc = _xl(depth, None)
    chunks = [4] * 5
    x, pos = _scene(chunks)
    y0, _ = _chunked(enc, x, pos, chunks)
    x2 = x.clone()
    x2[:, :4] += torch.randn_like(x2[:, :4])
    y1, _ = _chunked(enc, x2, pos, chunks)
    for k in range(1, 5):
        change = (y1[:, 4 * k:4 * k + 4] - y0[:, 4 * k:4 * k + 4]).abs().max().item()
        if k <= depth:
            assert change > 1e-6, f"chunk {k} did not see chunk 0 through {depth} layers"
        else:
            assert change == 0.0, f"chunk {k} saw chunk 0 through only {depth} layers"


def test_memory_carries_no_gradient_and_gradient_stops_at_the_chunk():
    enc = create_context(kind="xl", dim=D, depth=2, heads=2)
    x, pos = _scene([6, 6], batch=1)
    x = x.float()
    first = x[:, :6].clone().requires_grad_(True)
    _, state = enc(first, pos[:, :6].float())
    assert all(not m.requires_grad and m.grad_fn is None for m in state.mems)
    y, _ = enc(x[:, 6:], pos[:, 6:].float(), state)
    y.sum().backward()
    assert first.grad is None


def test_without_detach_the_gradient_reaches_the_previous_chunk():
    enc = create_context(kind="xl", dim=D, depth=2, heads=2, detach_state=False)
    x, pos = _scene([6, 6], batch=1)
    first = x[:, :6].float().clone().requires_grad_(True)
    _, state = enc(first, pos[:, :6].float())
    y, _ = enc(x[:, 6:].float(), pos[:, 6:].float(), state)
    y.sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("mem_len", [None, 9])
def test_hyper_xl_is_exact_in_its_exact_limits(mem_len):
    """Memory keys are ordinary HyperAttention keys: with one block holding everything and no
    sampling (and, separately, under min_seq_len) hyper XL equals exact XL across chunks."""
    chunks = [8, 8, 8]
    x, pos = _scene(chunks)
    exact = _xl(2, mem_len)
    ref, _ = _chunked(exact, x, pos, chunks)
    for knobs in (dict(hyper_min_seq_len=1, hyper_block_size=64, hyper_samples=0),
                  dict(hyper_min_seq_len=64)):
        hyper = _xl(2, mem_len, "hyper", **knobs)
        hyper.load_state_dict(exact.state_dict(), strict=False)
        out, _ = _chunked(hyper, x, pos, chunks)
        assert (out - ref).abs().max().item() < 1e-10


def test_block_mask_with_memory_longer_than_a_chunk():
    m = xl_attention_mask([2, 2, 2], mem_len=3)
    assert m[4].tolist() == [False, True, True, True, True, True]
    assert m[0].tolist() == [True, True, False, False, False, False]


# -- region memory: one key per earlier region ------------------------------------------------------
def _region_scene(rows: int, cols: int, tokens: int = 4, seed: int = 0):
    """Tokens of a rows x cols region grid, row-major, ``tokens`` per region (a 2 x 2 token grid)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, rows * cols * tokens, D, generator=g, dtype=torch.float64, requires_grad=True)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    i, j = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
    pos = torch.stack([(r.reshape(-1, 1) * 2 + i.reshape(1, -1)), (c.reshape(-1, 1) * 2 + j.reshape(1, -1))], -1)
    return x, pos.reshape(1, -1, 2).double()


@pytest.mark.parametrize("region_mem,reaches", [(0, False), (3, False), (4, True), (8, True)])
def test_region_memory_reaches_the_region_directly_above(region_mem, reaches):
    # 3 x 4 regions, chunks of 2 regions, no token memory: without region memory the region
    # above (4 regions = 2 chunks back) is out of reach of a one-layer XL; a region memory as
    # long as the row (4 regions) brings it in
    rows, cols, per, chunk = 3, 4, 4, 2
    enc = _xl(1, 0, region_mem=region_mem, region_tokens=per, detach_state=False)
    x, pos = _region_scene(rows, cols, per)
    out, _ = _chunked(enc, x, pos, [chunk * per] * (rows * cols // chunk))
    target = 1 * cols  # region (1, 0), first of its chunk: the region above is 4 regions back
    out[0, target * per:(target + 1) * per].sum().backward()
    above = x.grad[0, 0:per]  # region (0, 0)
    beside_above = x.grad[0, per:2 * per]  # region (0, 1): 3 regions back, within a memory of 3
    assert (above.abs().max() > 0) == reaches
    assert (beside_above.abs().max() > 0) == (region_mem >= 3)


def test_region_memory_stays_bounded_and_off_is_plain_xl():
    rows, cols, per = 6, 5, 4
    x, pos = _region_scene(rows, cols, per)
    x = x.detach()
    chunks = [3 * per] * (rows * cols // 3)
    _, state = _chunked(_xl(2, None, region_mem=5, region_tokens=per), x, pos, chunks)
    assert [r.shape for r in state.regions] == [(1, 5, D)] * 2  # 30 regions seen, 5 kept a layer
    plain, plain_state = _chunked(_xl(2, None), x, pos, chunks)
    off, off_state = _chunked(_xl(2, None, region_mem=0, region_tokens=per), x, pos, chunks)
    assert torch.equal(plain, off) and off_state.regions is None


def test_region_memory_errors_name_the_problem():
    from xtstream.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="region_mem is a Transformer-XL memory"):
        create_context(kind="mamba", dim=D, region_mem=4)
    enc = _xl(1, None, region_mem=4, region_tokens=4)
    x, pos = _region_scene(1, 4, 4)
    with pytest.raises(ModelConfigError, match="whole regions"):
        enc(x[:, :6].detach(), pos[:, :6])
    with pytest.raises(ModelConfigError, match="forward_masked"):
        enc.forward_masked(x.detach(), pos, torch.ones(16, 16, dtype=torch.bool))


def test_xt_model_sets_region_tokens_from_its_token_grid():
    import xtstream

    model = xtstream.create_model("convnext_atto", region=64, chunk=2, in_chans=1, context="xl", dim=32, depth=1,
                                  heads=2, region_mem=8, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    h, w = model.token_grid
    assert model.context.config.region_tokens == h * w
    out, state = model(torch.randn(2, 1, 64, 64), torch.tensor([[0, 0], [0, 1]]))
    out, state = model(torch.randn(2, 1, 64, 64), torch.tensor([[1, 0], [1, 1]]), state)
    assert state.context.regions[0].shape == (1, 4, 32)


def test_region_memory_of_another_batch_is_named():
    from xtstream.errors import ModelConfigError

    enc = _xl(1, 0, region_mem=4, region_tokens=4)
    x, pos = _region_scene(1, 4, 4)
    x = x.detach()
    _, state = enc(x[:, :8], pos[:, :8])  # token memory off: only the region memory holds the batch
    with pytest.raises(ModelConfigError, match="batch of 1 scenes but this chunk has 2"):
        enc(x[:, 8:].expand(2, -1, -1), pos[:, 8:].expand(2, -1, -1), state)
