"""The optimiser and its schedule: AdamW (no decay on biases and norms), linear warm-up + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from xtstream.engine.config import OptimiserSection, ScheduleSection


def build_optimizer(model: nn.Module, cfg: OptimiserSection) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices and kernels only (a 1-d
    parameter — bias, norm scale, a context gate — is not a weight whose size decay should limit)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, *, warmup: int, total: int, base_lr: float, min_lr: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) over ``base_lr``: ``(step + 1) /
    warmup`` during the warm-up, then a half cosine from 1 to ``min_lr / base_lr`` at ``total``
    (held there after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))) / base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleSection, base_lr: float, total: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` of :func:`lr_factor` (its ``state_dict`` is plain: the function is not saved)."""
    def factor(step: int) -> float:
        return lr_factor(step, warmup=cfg.warmup_steps, total=total, base_lr=base_lr, min_lr=cfg.min_lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
