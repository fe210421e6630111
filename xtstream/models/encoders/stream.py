"""The region-encoder stage as a generator: RegionSamples in, batches of NCHW feature maps out.

Regions arrive from the data side in row-major order, scene after scene. They are grouped into
batches of consecutive regions of *one* scene (a scene change always closes a batch), stacked on
the host, copied to the device and encoded. At most two batches are alive at once: on CUDA the
next batch's host→device copy runs on a side stream (pinned memory, ``non_blocking=True``) while
the current one is encoded and consumed.

Gradients follow the caller's grad mode at each ``next()``: wrap the loop in ``torch.no_grad()``
for inference. With ``grad_ratio < 1`` (training), a random share of each batch's regions goes
through the backbone under ``torch.no_grad()`` to save activation memory; unlike the reference
code, the outputs are put back in input order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample
from xtstream.models.encoders.budget import batch_size_for, default_budget, region_cost


@dataclass
class EncodedBatch:
    """Consecutive regions of one scene and their feature maps.

    ``features[i]`` is ``(n, C_i, h_i, w_i)`` on the device, row ``k`` belonging to region
    ``indices[k]`` at grid position ``positions[k] = (row, col)`` (``positions``: ``(n, 2)`` int64,
    CPU). ``grad_mask`` (``(n,)`` bool) marks the regions that carry gradient (``None``: all or none,
    as the grad mode says).
    """

    scene_id: str
    grid: RegionGrid
    indices: list[int]
    positions: Tensor
    features: list[Tensor]
    samples: list[RegionSample] = field(repr=False)
    grad_mask: Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ends_scene(self) -> bool:
        """True when the batch holds the scene's last region."""
        return self.indices[-1] == len(self.grid) - 1

    def regions(self) -> Iterator[tuple[int, list[Tensor]]]:
        """Per-region view: ``(index, [(C_i, h_i, w_i)])`` in order."""
        for k, index in enumerate(self.indices):
            yield index, [f[k] for f in self.features]


@dataclass
class _HostBatch:
    scene_id: str
    grid: RegionGrid
    samples: list[RegionSample]
    pixels: Tensor  # (n, bands, R, R) float32, pinned when the target is CUDA


def _check_sample(sample: RegionSample, in_chans: int, region: int) -> None:
    shape = tuple(np.shape(sample.pixels))
    if shape != (in_chans, region, region):
        raise ModelConfigError(
            f"region {sample.index} of scene {sample.scene_id!r} has pixels {shape}; the region "
            f"encoder takes ({in_chans}, {region}, {region})")


def group_regions(regions: Iterable[RegionSample], batch_size: int) -> Iterator[list[RegionSample]]:
    """Consecutive samples in lists of at most ``batch_size``, never mixing two scenes.

    A scene ends where the scene id or grid changes, or where the region index does not grow
    (the same scene streamed again).
    """
    if batch_size < 1:
        raise ModelConfigError(f"batch size must be >= 1, got {batch_size}")
    batch: list[RegionSample] = []
    for sample in regions:
        if batch:
            last = batch[-1]
            new_scene = (sample.scene_id != last.scene_id or sample.grid != last.grid
                         or sample.index <= last.index)
            if new_scene or len(batch) == batch_size:
                yield batch
                batch = []
        batch.append(sample)
    if batch:
        yield batch


def _host_batches(groups: Iterable[list[RegionSample]], encoder: nn.Module, pin: bool
                  ) -> Iterator[_HostBatch]:
    for samples in groups:
        for s in samples:
            _check_sample(s, encoder.in_chans, encoder.region)
        shape = (len(samples), encoder.in_chans, encoder.region, encoder.region)
        pixels = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
        np.stack([np.asarray(s.pixels) for s in samples], out=pixels.numpy())
        yield _HostBatch(samples[0].scene_id, samples[0].grid, samples, pixels)


def _to_device(host: Iterator[_HostBatch], device: torch.device
               ) -> Iterator[tuple[_HostBatch, Tensor]]:
    """Device copies of the host batches; on CUDA batch k+1's copy is issued before batch k is
    handed out, on a side stream, so it overlaps the consumer's compute on batch k."""
    if device.type != "cuda":
        for hb in host:
            yield hb, hb.pixels.to(device)
        return
    copy_stream = torch.cuda.Stream(device)
    pending: tuple[_HostBatch, Tensor, torch.cuda.Event] | None = None
    for hb in host:
        with torch.cuda.stream(copy_stream):
            x = hb.pixels.to(device, non_blocking=True)
            ready = copy_stream.record_event()
        if pending is not None:
            yield _ready(pending)
        pending = (hb, x, ready)
    if pending is not None:
        yield _ready(pending)


def _ready(pending: tuple[_HostBatch, Tensor, "torch.cuda.Event"]) -> tuple[_HostBatch, Tensor]:
    hb, x, ready = pending
    compute = torch.cuda.current_stream(x.device)
    compute.wait_event(ready)
    x.record_stream(compute)  # the allocator must not reuse x's memory before compute is done
    return hb, x


def forward_with_grad_ratio(encoder: nn.Module, x: Tensor, grad_ratio: float,
                            generator: torch.Generator | None = None
                            ) -> tuple[list[Tensor], Tensor | None]:
    """Encode ``x`` ``(n, bands, R, R)`` with gradient through a random ``grad_ratio`` of its regions.

    The number of gradient regions is ``grad_ratio * n`` rounded stochastically (unbiased even at
    ``n = 1``). Returns the feature maps in input order and the ``(n,)`` bool mask of regions that
    carry gradient (``None`` when every region does, or when grad mode is off).
    """
    if not 0.0 <= grad_ratio <= 1.0:
        raise ModelConfigError(f"grad_ratio must be in [0, 1], got {grad_ratio}")
    n = len(x)
    if grad_ratio >= 1.0 or not torch.is_grad_enabled():
        return encoder(x), None
    exact = grad_ratio * n
    k = math.floor(exact) + int(torch.rand((), generator=generator).item() < exact - math.floor(exact))
    perm = torch.randperm(n, generator=generator)
    grad_idx, _ = perm[:k].sort()
    free_idx, _ = perm[k:].sort()
    parts: list[list[Tensor]] = []
    if k:
        parts.append(encoder(x[grad_idx.to(x.device)]))
    if n - k:
        with torch.no_grad():
            parts.append(encoder(x[free_idx.to(x.device)]))
    order = torch.cat([grad_idx, free_idx]).to(x.device)
    inverse = torch.argsort(order)
    feats = [torch.cat([p[i] for p in parts])[inverse] for i in range(len(parts[0]))]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[grad_idx] = True
    return feats, mask


def encode_regions(
    regions: Iterable[RegionSample],
    encoder: nn.Module,
    *,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    device: torch.device | str | None = None,
    grad_ratio: float = 1.0,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> Iterator[EncodedBatch]:
    """Encode a stream of :class:`~xtstream.data.sample.RegionSample` in order, batch by batch.

    Parameters
    ----------
    regions : samples in row-major order, scene after scene; each ``pixels`` ``(in_chans, R, R)``.
    encoder : a :class:`~xtstream.models.encoders.RegionEncoder`, already on ``device``.
    batch_size : regions per batch; default: as many as ``memory_budget`` allows, at a per-region
        cost measured (CUDA) or estimated (CPU) by :func:`~xtstream.models.encoders.region_cost`.
    memory_budget : bytes the batch's activations may use; default half the free CUDA memory, or
        2 GiB on CPU.
    device : where to encode; default the encoder's device.
    grad_ratio : share of regions encoded with gradient when grad mode is on (the rest under
        ``torch.no_grad()``); outputs stay aligned with inputs.
    generator : random source for ``grad_ratio`` (reproducible runs).

    Yields
    ------
    :class:`EncodedBatch` — consecutive regions of one scene, features ``[(n, C_i, h_i, w_i)]``.

    >>> for batch in encode_regions(samples, encoder, batch_size=8):   # doctest: +SKIP
    ...     batch.indices, [f.shape for f in batch.features]
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    if batch_size is None:
        train = torch.is_grad_enabled() and encoder.training
        budget = memory_budget if memory_budget is not None else default_budget(device)
        batch_size = batch_size_for(region_cost(encoder, train=train, device=device), budget,
                                    max_batch=max_batch)
    host = _host_batches(group_regions(regions, batch_size), encoder, pin=device.type == "cuda")
    for hb, x in _to_device(host, device):
        feats, mask = forward_with_grad_ratio(encoder, x, grad_ratio, generator)
        positions = torch.tensor([hb.grid.position(s.index) for s in hb.samples], dtype=torch.int64)
        yield EncodedBatch(hb.scene_id, hb.grid, [s.index for s in hb.samples], positions,
                           feats, hb.samples, mask)


def stack_targets(samples: Sequence[RegionSample], names: Iterable[str],
                  device: torch.device | str | None = None) -> dict[str, Tensor]:
    """``{name: (n, R, R) float32}`` of the targets every sample has, on ``device``."""
    out: dict[str, Tensor] = {}
    for name in names:
        if all(name in s.targets for s in samples):
            arr = np.stack([np.asarray(s.targets[name], dtype=np.float32) for s in samples])
            out[name] = torch.from_numpy(arr).to(device)
    return out
