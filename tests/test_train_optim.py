"""The optimiser's groups: weight decay on matrices only, the context encoder's own rate."""

from __future__ import annotations

import pytest

import xtstream
from xtstream.engine.config import OptimiserSection
from xtstream.engine.optim import build_optimizer


def model():
    return xtstream.create_model("convnext_atto", region=64, chunk=4, context="xl", dim=32, depth=1, heads=2,
                                 in_chans=1, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


def rates(opt, params):
    """``{id(param): lr}`` over the optimiser's groups."""
    return {id(p): g["lr"] for g in opt.param_groups for p in g["params"] if any(p is q for q in params)}


def test_the_context_encoder_trains_at_its_own_scaled_rate():
    m = model()
    opt = build_optimizer(m, OptimiserSection(lr=1e-3, context_lr_scale=5.0))
    context = list(m.context.parameters())
    rest = [p for p in m.parameters() if all(p is not q for q in context)]
    assert sorted(set(rates(opt, context).values())) == [pytest.approx(5e-3)]
    assert sorted(set(rates(opt, rest).values())) == [pytest.approx(1e-3)]
    # every trainable parameter exactly once; decay still only on matrices and kernels
    seen = [p for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(list(m.parameters())) == len({id(p) for p in seen})
    assert all((g["weight_decay"] > 0) == (g["params"][0].ndim > 1) for g in opt.param_groups)


def test_at_scale_one_the_groups_are_those_older_checkpoints_saved():
    # two groups (decay, no decay): an optimiser state saved before the scale existed still loads
    m = model()
    opt = build_optimizer(m, OptimiserSection(lr=1e-3))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
