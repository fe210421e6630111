"""The region-encoder stage as a generator: region chunks in, the same chunks with features out.

Chunks arrive from the data side (scene after scene, or interleaved by DataLoader workers).
Consecutive chunks — of one scene or several — are gathered until a backbone batch is full (its
size set by a memory budget, independent of the context chunk ``C``), stacked on the host, copied
to the device and encoded; each chunk gets its slice of the feature maps back. At most two
windows are alive at once: on CUDA the next window's host→device copy runs on a side stream
(pinned memory, ``non_blocking=True``) while the current one is encoded and consumed.

Gradients follow the caller's grad mode at each ``next()``: wrap the loop in ``torch.no_grad()``
for inference. With ``grad_ratio < 1`` (training), a random share of each batch's regions goes
through the backbone under ``torch.no_grad()`` to save activation memory; unlike the reference
code, the outputs are put back in input order.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.data.chunk import RegionChunk, chunked
from xtstream.data.sample import RegionSample
from xtstream.data.streams import DEFAULT_CHUNK
from xtstream.models.encoders.budget import batch_size_for, default_budget, default_max_batch, region_cost


def _check_pixels(chunk: RegionChunk, in_chans: int, region: int) -> None:
    shape = tuple(np.shape(chunk.pixels))
    if chunk.pixels is None or shape[1:] != (in_chans, region, region):
        raise ModelConfigError(
            f"scene {chunk.scene_id!r}, regions {chunk.start}..{chunk.stop - 1}: pixels {shape}; the "
            f"region encoder takes ({len(chunk)}, {in_chans}, {region}, {region})")


def windows(chunks: Iterable[RegionChunk], regions: int) -> Iterator[list[RegionChunk]]:
    """Consecutive chunks in lists of at most ``regions`` regions (always at least one chunk)."""
    window: list[RegionChunk] = []
    size = 0
    for chunk in chunks:
        if window and size + len(chunk) > regions:
            yield window
            window, size = [], 0
        window.append(chunk)
        size += len(chunk)
    if window:
        yield window


def stack_pixels(chunks: Sequence[RegionChunk], encoder: nn.Module, out: Tensor | None = None) -> Tensor:
    """``(sum n, bands, R, R)`` float32 host tensor of the chunks' pixels, written into ``out``
    (e.g. a reused pinned buffer) when given."""
    for c in chunks:
        _check_pixels(c, encoder.in_chans, encoder.region)
    n = sum(len(c) for c in chunks)
    if out is None:
        if len(chunks) == 1 and isinstance(chunks[0].pixels, Tensor):
            return chunks[0].pixels.float()
        out = torch.empty((n, encoder.in_chans, encoder.region, encoder.region), dtype=torch.float32)
    k = 0
    for c in chunks:
        px = c.pixels.numpy() if isinstance(c.pixels, Tensor) else np.asarray(c.pixels)
        out.numpy()[k:k + len(c)] = px
        k += len(c)
    return out


def _to_device(windows: Iterable[list[RegionChunk]], encoder: nn.Module, device: torch.device
               ) -> Iterator[tuple[list[RegionChunk], Tensor]]:
    """Each window's pixels stacked and on the device.

    On CUDA, window k+1 is stacked into a pinned buffer and its copy issued on a side stream
    before window k is handed out, so the copy overlaps the consumer's compute on window k. The
    pinned buffers are a ring of three reused for the whole stream (pinning memory costs far more
    than filling it); a buffer is refilled only once the copy out of it has finished.
    """
    if device.type != "cuda":
        for window in windows:
            yield window, stack_pixels(window, encoder).to(device)
        return
    copy_stream = torch.cuda.Stream(device)
    ring: list[Tensor | None] = [None, None, None]
    copied: list[torch.cuda.Event | None] = [None, None, None]
    pending: tuple[list[RegionChunk], Tensor, torch.cuda.Event] | None = None
    for k, window in enumerate(windows):
        slot, n = k % 3, sum(len(c) for c in window)
        if copied[slot] is not None:
            copied[slot].synchronize()
        if ring[slot] is None or len(ring[slot]) < n:
            ring[slot] = torch.empty((n, encoder.in_chans, encoder.region, encoder.region),
                                     dtype=torch.float32, pin_memory=True)
        host = stack_pixels(window, encoder, out=ring[slot][:n])
        with torch.cuda.stream(copy_stream):
            x = host.to(device, non_blocking=True)
            copied[slot] = copy_stream.record_event()
        if pending is not None:
            yield _ready(pending)
        pending = (window, x, copied[slot])
    if pending is not None:
        yield _ready(pending)


def _ready(pending: tuple[Any, Tensor, "torch.cuda.Event"]) -> tuple[Any, Tensor]:
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
    items: Iterable[RegionChunk | RegionSample],
    encoder: nn.Module,
    *,
    chunk: int = DEFAULT_CHUNK,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    device: torch.device | str | None = None,
    grad_ratio: float = 1.0,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
) -> Iterator[RegionChunk]:
    """Encode a stream of region chunks in order, batched across chunks by memory.

    Parameters
    ----------
    items : :class:`~xtstream.data.chunk.RegionChunk` (pixels ``(n, in_chans, R, R)``), or loose
        :class:`~xtstream.data.sample.RegionSample` (grouped into chunks of ``chunk`` regions).
    encoder : a :class:`~xtstream.models.encoders.RegionEncoder`, already on ``device``.
    batch_size : regions per backbone batch; default: as many as ``memory_budget`` allows at the
        per-region cost measured (CUDA) or estimated (CPU) by :func:`region_cost`. Consecutive
        chunks (of any scenes) share a batch; a chunk larger than the batch is encoded in pieces.
    memory_budget : bytes a batch's activations may use; default half the free CUDA memory, or
        2 GiB on CPU.
    device : where to encode; default the encoder's device.
    grad_ratio : share of regions encoded with gradient when grad mode is on.
    generator : random source for ``grad_ratio`` (reproducible runs).

    Yields
    ------
    The chunks, in arrival order, with ``features`` ``[(n, C_i, h_i, w_i)]`` on the device (and
    ``info["grad_mask"]``, the ``(n,)`` regions that carry gradient, when ``grad_ratio < 1``).

    >>> for chunk in encode_regions(read_scenes("shards/", chunk=8), encoder):   # doctest: +SKIP
    ...     chunk.scene_id, chunk.indices, [f.shape for f in chunk.features]
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    if batch_size is None:
        batch_size = budget_batch_size(encoder, device=device, memory_budget=memory_budget,
                                       train=torch.is_grad_enabled() and encoder.training,
                                       max_batch=max_batch)
    if batch_size < 1:
        raise ModelConfigError(f"batch size must be >= 1, got {batch_size}")
    for window, x in _to_device(windows(chunked(items, chunk), batch_size), encoder, device):
        parts = [forward_with_grad_ratio(encoder, x[i:i + batch_size], grad_ratio, generator)
                 for i in range(0, len(x), batch_size)]
        feats = [torch.cat([p[0][level] for p in parts]) if len(parts) > 1 else parts[0][0][level]
                 for level in range(len(parts[0][0]))]
        masks = [p[1] for p in parts]
        mask = None if all(m is None for m in masks) else torch.cat(
            [m if m is not None else torch.ones(len(p[0][0]), dtype=torch.bool) for m, p in zip(masks, parts)])
        yield from assign_features(window, feats, mask)


def assign_features(chunks: Sequence[RegionChunk], features: list[Tensor], grad_mask: Tensor | None
                    ) -> list[RegionChunk]:
    """Hand each chunk its rows of features encoded for all of them: ``features`` ``[(sum n, C_i,
    h_i, w_i)]`` in chunk order; ``grad_mask`` ``(sum n,)`` goes to ``info["grad_mask"]``."""
    k = 0
    for c in chunks:
        c.features = [f[k:k + len(c)] for f in features]
        if grad_mask is not None:
            c.info["grad_mask"] = grad_mask[k:k + len(c)]
        k += len(c)
    return list(chunks)


_BATCH_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def budget_batch_size(encoder: nn.Module, *, device: torch.device, memory_budget: int | None = None,
                      train: bool = False, max_batch: int | None = None) -> int:
    """Regions per backbone batch under ``memory_budget`` (default: :func:`default_budget`), at
    most ``max_batch`` (default: :func:`default_max_batch`).

    The per-region cost is measured once per encoder, device and mode (on CUDA it runs two small
    forward passes) and remembered.
    """
    budget = memory_budget if memory_budget is not None else default_budget(device)
    costs = _BATCH_CACHE.setdefault(encoder, {})
    key = (str(device), train)
    if key not in costs:
        costs[key] = region_cost(encoder, train=train, device=device)
    cap = max_batch if max_batch is not None else default_max_batch(device)
    return batch_size_for(costs[key], budget, max_batch=cap)


def stack_targets(chunks: Sequence[RegionChunk], names: Iterable[str],
                  device: torch.device | str | None = None) -> dict[str, Tensor]:
    """``{name: (sum n, R, R) float32}`` of the named targets every chunk has, on ``device``."""
    out: dict[str, Tensor] = {}
    for name in names:
        if all(name in c.targets for c in chunks):
            parts = [torch.as_tensor(np.asarray(c.targets[name], dtype=np.float32)) for c in chunks]
            out[name] = torch.cat(parts).to(device)
    return out
