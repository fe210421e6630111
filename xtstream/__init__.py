"""xtstream: whole giant images through xT, streamed with bounded memory.

The package reads as the data flow: ``data`` (sources → ingest to Zarr → the region grid →
shards → streams of region chunks) → ``models`` (region encoder → context → heads) → ``tasks`` →
``engine`` (streaming with context state per scene, training) → ``cli``; ``tasks`` say what a
region is labelled with and how a head trains on it. Heavy modules (torch)
load only when first used, so data-side tools start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "RegionGrid": "xtstream.data.grid",
    "Window": "xtstream.data.grid",
    "open_store": "xtstream.data.store",
    "open_source": "xtstream.data.sources",
    "RasterSource": "xtstream.data.sources",
    "load_spec": "xtstream.data.specs",
    "ingest": "xtstream.data.ingest",
    "read_labels": "xtstream.tasks.xview3.labels",
    "open_scene": "xtstream.data.streams",
    "stream_scenes": "xtstream.data.streams",
    "shard_stores": "xtstream.data.shards",
    "read_scenes": "xtstream.data.shards",
    "encode_regions": "xtstream.models.encoders",
    "create_region_encoder": "xtstream.models.encoders",
    "create_context": "xtstream.models.context",
    "create_model": "xtstream.models",
    "list_models": "xtstream.models",
    "load_checkpoint": "xtstream.models",
    "load_model": "xtstream.models",
    "RegionChunk": "xtstream.data.chunk",
    "SceneStates": "xtstream.engine",
    "train_chunks": "xtstream.engine",
    "predict": "xtstream.engine.predict",
    "train": "xtstream.engine.run",
    "TrainConfig": "xtstream.engine.config",
    "load_train_config": "xtstream.engine.config",
    "register_model": "xtstream.models",
    "register_context": "xtstream.models.context",
    "list_contexts": "xtstream.models.context",
    "register_head": "xtstream.models.heads",
    "list_heads": "xtstream.models.heads",
    "save_checkpoint": "xtstream.models",
    "XTConfig": "xtstream.models",
    "Task": "xtstream.tasks",
    "get_task": "xtstream.tasks",
    "list_tasks": "xtstream.tasks",
    "register_task": "xtstream.tasks",
    "task_for_head": "xtstream.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xtstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


# ``.xt`` on xarray objects (xtstream.accessor): registered on import, as xarray accessors must be
from xtstream import accessor as _accessor  # noqa: E402,F401
