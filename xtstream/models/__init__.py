"""xT models: config, registry, streaming forward, checkpoints.

>>> import xtstream
>>> model = xtstream.create_model("convnext_atto", context="xl", region=256, chunk=4, depth=2,
...                               head="xview3", in_chans=2)               # doctest: +SKIP
>>> for chunk in model.stream(xtstream.read_scenes("shards/", chunk=4)):   # doctest: +SKIP
...     chunk.scene_id, chunk.indices, chunk.outputs["centre"].shape
"""

from xtstream.models.checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from xtstream.models.config import XTConfig
from xtstream.models.registry import create_model, list_models, register_model
from xtstream.models.xt import ChunkState, XTModel, token_positions

__all__ = [
    "ChunkState",
    "XTConfig",
    "XTModel",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
    "token_positions",
]
