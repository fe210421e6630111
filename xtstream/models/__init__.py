"""xT models: config, registry, streaming forward, per-chunk training, checkpoints.

>>> import xtstream
>>> model = xtstream.create_model("convnext_atto", context="xl", region=256, chunk=4, depth=2,
...                               head="xview3", in_chans=2)               # doctest: +SKIP
>>> for chunk in model.stream(regions):                                    # doctest: +SKIP
...     chunk.scene_id, chunk.indices, chunk.outputs["centre"].shape
"""

from xtstream.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from xtstream.models.config import CONTEXT_KINDS, HEADS, XTConfig
from xtstream.models.registry import create_model, list_models, register_model
from xtstream.engine.train import train_chunks, xview3_chunk_loss
from xtstream.models.xt import ChunkOutput, ChunkState, XTModel, token_positions


def count_parameters(model: XTModel) -> dict[str, int]:
    """Parameter counts per part (``encoder``, ``projection``, ``context``, ``head``, ``total``)."""
    return model.num_parameters()


__all__ = [
    "CONTEXT_KINDS",
    "HEADS",
    "ChunkOutput",
    "ChunkState",
    "XTConfig",
    "XTModel",
    "count_parameters",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
    "token_positions",
    "train_chunks",
    "xview3_chunk_loss",
]
