"""How many regions fit in one batch: a per-region memory cost, measured or estimated, and a budget.

On CUDA the cost is measured: the rise of ``torch.cuda.max_memory_allocated`` between a forward
(and backward, when training) of one region and of two, so fixed costs (weights, workspace) drop
out. Elsewhere it is estimated from the bytes of every leaf module's output for one region: in
training those activations are all kept for backward; without gradients only a few are alive at
once, so a small multiple of the largest one plus the feature maps is used.
"""

from __future__ import annotations

import torch
from torch import nn

from xtstream.errors import ModelConfigError

#: default budget where none is given: CPU, and the share of free memory on CUDA
DEFAULT_CPU_BUDGET = 2 * 2**30
DEFAULT_CUDA_FRACTION = 0.5
MAX_BATCH = 256
#: on a CPU a batch only needs to fill the cores, and past that its activations fall out of cache:
#: at 256 px on 2 cores, convnext_atto ran at 62 / 75 / 71 / 66 / 64 / 57 regions/s with batches of
#: 1 / 2 / 4 / 8 / 16 / 32, swinv2_tiny at 9.9 / 9.8 / 8.6 / 6.4 / 5.4 with 2 / 4 / 8 / 16 / 32
MAX_CPU_BATCH = 4


def _region_input(encoder: nn.Module, n: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(n, encoder.in_chans, encoder.region, encoder.region, device=device)


def _measure_cuda(encoder: nn.Module, train: bool, device: torch.device) -> int:
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.set_grad_enabled(train):
            out = encoder(_region_input(encoder, n, device))
            if train:
                sum(o.float().mean() for o in out).backward()
        del out
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    if train:
        encoder.zero_grad(set_to_none=True)
    return max(peaks[1] - peaks[0], 1)


def _estimate_hooks(encoder: nn.Module, train: bool, device: torch.device) -> int:
    sizes: list[int] = []

    def hook(_module, _inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    leaves = [m for m in encoder.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            out = encoder(_region_input(encoder, 1, device))
    finally:
        for h in handles:
            h.remove()
    features = sum(o.numel() * o.element_size() for o in out)
    x_bytes = encoder.in_chans * encoder.region**2 * 4
    if train:
        return x_bytes + sum(sizes) + features
    return x_bytes + 3 * max(sizes, default=0) + features


def region_cost(encoder: nn.Module, *, train: bool = False, device: torch.device | str | None = None) -> int:
    """Bytes one more region adds to a batch's peak memory through ``encoder``.

    ``encoder`` is a :class:`~xtstream.models.encoders.RegionEncoder` (``in_chans``, ``region``) already on
    ``device``. Measured on CUDA, estimated from leaf-module outputs elsewhere (see module doc).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.train(train)
    try:
        if device.type == "cuda":
            return _measure_cuda(encoder, train, device)
        return _estimate_hooks(encoder, train, device)
    finally:
        encoder.train(was_training)


def default_max_batch(device: torch.device) -> int:
    """The largest batch worth making on ``device`` (:data:`MAX_CPU_BATCH` on a CPU)."""
    return MAX_BATCH if device.type == "cuda" else MAX_CPU_BATCH


def default_budget(device: torch.device) -> int:
    """Half the free memory of a CUDA device; :data:`DEFAULT_CPU_BUDGET` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_CUDA_FRACTION)
    return DEFAULT_CPU_BUDGET


def batch_size_for(cost: int, budget: int, *, max_batch: int = MAX_BATCH) -> int:
    """Regions per batch under ``budget`` bytes at ``cost`` bytes each (at least one).

    A budget smaller than one region still gives 1 (the paper's worst case: regions in serial),
    so a too-small budget slows the stream down instead of stopping it.
    """
    if budget <= 0 or cost <= 0:
        raise ModelConfigError(f"memory budget ({budget} B) and region cost ({cost} B) must be positive")
    return max(1, min(max_batch, budget // cost))
