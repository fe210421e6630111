"""Training one chunk at a time: forward, loss, backward and step per chunk, memory detached between.

This is what bounds training memory on giant scenes: only the current chunk's graph is alive, the
context state carried to the next chunk has no gradient (``detach_state=True``, the default), and
the classification pool is detached too. Gradient therefore flows only inside a chunk.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from xtstream.models.encoders import stack_targets
from xtstream.errors import ModelConfigError
from xtstream.models.heads import XVIEW3_OUTPUTS, xview3_loss
from xtstream.data.sample import RegionSample
from xtstream.models.xt import ChunkOutput, XTModel

LossFn = Callable[[ChunkOutput], Tensor]


def xview3_chunk_loss(chunk: ChunkOutput) -> Tensor:
    """:func:`~xtstream.models.heads.xview3_loss` of a chunk against its samples' target maps."""
    device = next(iter(chunk.outputs.values())).device
    names = list(XVIEW3_OUTPUTS) + ["fishing", "center"]
    targets = stack_targets(chunk.samples, names, device)
    if not targets:
        raise ModelConfigError(f"scene {chunk.scene_id!r}, regions {chunk.indices}: no target maps "
                               f"named any of {names}")
    loss, _ = xview3_loss(chunk.outputs, targets)
    return loss


def train_chunks(model: XTModel, regions: Iterable[RegionSample], optimizer: torch.optim.Optimizer,
                 loss_fn: LossFn | None = None, *, device: torch.device | str | None = None,
                 grad_ratio: float | None = None, clip_grad_norm: float | None = None,
                 generator: torch.Generator | None = None) -> Iterator[dict[str, Any]]:
    """Train on a stream of scenes, one optimizer step per chunk; yields per-chunk records.

    ``loss_fn(chunk) -> scalar`` (default: :func:`xview3_chunk_loss` for the xview3 head; a
    classification model needs one, e.g. cross-entropy of ``chunk.outputs`` against a label
    looked up by ``chunk.scene_id``). Records: ``scene_id``, ``indices``, ``loss``.
    """
    if loss_fn is None:
        if model.config.head != "xview3":
            raise ModelConfigError(f"head {model.config.head!r} has no default loss; pass loss_fn")
        loss_fn = xview3_chunk_loss
    ctx_config = getattr(model.context, "config", None)
    if ctx_config is not None and not getattr(ctx_config, "detach_state", True):
        raise ModelConfigError("per-chunk training needs detach_state=True in the context config: "
                               "with a carried graph the next chunk's backward would re-enter it")
    model.train()
    with torch.enable_grad():
        for chunk in model.stream(regions, device=device, grad_ratio=grad_ratio, generator=generator):
            loss = loss_fn(chunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            yield {"scene_id": chunk.scene_id, "indices": chunk.indices, "loss": float(loss.detach())}
