"""HyperAttention: exact in its exact limits, close on peaked attention, masks honoured."""

from __future__ import annotations

import pytest
import torch

from xtstream.models.context import Attention, HyperAttention, exact_attention
from xtstream.models.context.hyper import merge


def _qkv(b=2, h=2, lq=200, lk=200, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) for n in (lq, lk, lk))


def _hyper(d=16, **kw):
    torch.manual_seed(0)
    return HyperAttention(d, **kw).double()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("lq,lk", [(200, 200), (60, 200)])
def test_at_or_below_min_seq_len_it_is_exact(lq, lk):
    q, k, v = _qkv(lq=lq, lk=lk)
    out = _hyper(block_size=16, samples=8, min_seq_len=lk)(q, k, v)
    assert (out - exact_attention(q, k, v)).abs().max() < 1e-12


@pytest.mark.parametrize("lq,lk", [(200, 200), (60, 200), (200, 263)])
def test_one_block_over_everything_without_sampling_is_exact(lq, lk):
    q, k, v = _qkv(lq=lq, lk=lk)
    mask = torch.rand(lq, lk, generator=torch.Generator().manual_seed(1)) > 0.3
    hyper = _hyper(block_size=lq, samples=0, min_seq_len=1)
    assert (hyper(q, k, v) - exact_attention(q, k, v)).abs().max() < 1e-12
    assert (hyper(q, k, v, mask) - exact_attention(q, k, v, mask)).abs().max() < 1e-12
    additive = torch.randn(1, 2, lq, lk, dtype=torch.float64)
    assert (hyper(q, k, v, additive) - exact_attention(q, k, v, additive)).abs().max() < 1e-12


def _peaked(n=512, d=32, seed=0, strength=12.0):
    """Each query is a scaled copy of one key's direction: one dominant key per query."""
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(2, 2, n, d, generator=g, dtype=torch.float64), dim=-1)
    perm = torch.randperm(n, generator=g)
    q = strength * d**0.5 * k[:, :, perm]  # q . k_match / sqrt(d) = strength
    v = torch.randn(2, 2, n, d, generator=g, dtype=torch.float64)
    return q, k, v


def test_error_bound_on_peaked_attention():
    q, k, v = _peaked()
    hyper = _hyper(d=32, block_size=64, samples=64, min_seq_len=128, bits=6)
    err = _rel(hyper(q, k, v), exact_attention(q, k, v))
    assert err < 0.2, err
    # the sorted blocks alone find each query's dominant key (the sampled columns are a bonus)
    assert _rel(_hyper(d=32, block_size=64, samples=0, min_seq_len=128, bits=6)(q, k, v),
                exact_attention(q, k, v)) < 0.2
    # and the bound means something: attention that ignores the peak (uniform) is far off
    uniform = v.mean(dim=2, keepdim=True).expand_as(v)
    assert _rel(uniform, exact_attention(q, k, v)) > 0.9


def test_sampling_improves_on_blocks_alone_for_diffuse_attention():
    """On i.i.d. Gaussian q/k (no structure for LSH), sampled columns must reduce the error of
    the block-only estimate: the merge and the Lk/m weighting are right."""
    q, k, v = _qkv(lq=1024, lk=1024, d=16, seed=3)
    q = q * 0.3
    ref = exact_attention(q, k, v)
    blocks_only = _rel(_hyper(block_size=64, samples=0, min_seq_len=1)(q, k, v), ref)
    sampled = _rel(_hyper(block_size=64, samples=512, min_seq_len=1)(q, k, v), ref)
    assert sampled < 0.5 * blocks_only, (sampled, blocks_only)


def test_masked_out_keys_have_no_influence_when_approximate():
    q, k, v = _qkv(lq=256, lk=256)
    mask = torch.ones(256, 256, dtype=torch.bool)
    mask[:, 128:] = False
    hyper = _hyper(block_size=32, samples=64, min_seq_len=1).eval()
    out = hyper(q, k, v, mask)
    # masked keys still take part in hashing (which changes the blocks), but their values must
    # never reach the output: change them and nothing moves
    v2 = v.clone()
    v2[:, :, 128:] += 100.0
    assert torch.equal(hyper(q, k, v2, mask), out)
    assert torch.isfinite(out).all()


def test_eval_is_repeatable_and_training_samples_afresh():
    q, k, v = _qkv(lq=300, lk=300)
    hyper = _hyper(block_size=32, samples=16, min_seq_len=1)
    assert torch.equal(hyper.eval()(q, k, v), hyper(q, k, v))
    hyper.train()
    assert not torch.equal(hyper(q, k, v), hyper(q, k, v))


def test_gradients_are_finite_even_for_fully_masked_rows():
    q, k, v = (t.requires_grad_(True) for t in _qkv(lq=64, lk=64))
    mask = torch.ones(64, 64, dtype=torch.bool)
    mask[5] = False  # query 5 may see nothing
    out = _hyper(block_size=8, samples=8, min_seq_len=1)(q, k, v, mask)
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_merge_of_two_key_sets_is_softmax_over_their_union():
    q, k, v = _qkv(lq=10, lk=30)
    s = q @ k.transpose(-1, -2) / 4.0
    parts = []
    for sl in (slice(0, 12), slice(12, 30)):
        part = s[..., sl]
        parts += [torch.softmax(part, -1) @ v[:, :, sl], torch.logsumexp(part, -1, keepdim=True)]
    assert (merge(*parts) - torch.softmax(s, -1) @ v).abs().max() < 1e-12


def test_attention_module_hyper_matches_exact_with_memory_in_the_exact_limit():
    torch.manual_seed(0)
    exact = Attention(32, 4, "exact").double()
    hyper = Attention(32, 4, "hyper", block_size=40, samples=0, min_seq_len=1).double()
    hyper.load_state_dict(exact.state_dict(), strict=False)
    x, mem = torch.randn(2, 40, 32, dtype=torch.float64), torch.randn(2, 25, 32, dtype=torch.float64)
    assert (hyper(x, mem) - exact(x, mem)).abs().max() < 1e-12
