"""Ordered WebDataset region shards: write them from Zarr scene stores, read them back as scenes.

* :func:`shard_stores` — stores → ``{scene_key}-NNNNN.tar`` shards + ``manifest.json`` (a dask
  graph, resumable); the ``xtstream shard`` command drives it.
* :func:`read_scenes` — shards → scenes, each an ordered stream of regions (``scene.chunks(C)``),
  split over nodes/workers by scene, optionally shuffled by scene.
* :class:`RegionChunks` — the same as a ``torch`` ``IterableDataset`` of chunk tensors.

The sample layout is documented in :mod:`xtstream.data.shards.format`; stock ``webdataset.WebDataset``
and ``tar tf`` read the shards too.
"""

from __future__ import annotations

import importlib
from typing import Any

from xtstream.data.shards.format import MANIFEST, decode_sample, encode_sample, sample_key, scene_key, shard_name
from xtstream.data.shards.reader import BadSample, SceneShards, ShardScenes, group_shards, load_manifest, read_scenes
from xtstream.data.shards.writer import ShardPlan, ShardTask, plan_shards, shard_stores, write_manifest, write_shard

__all__ = ["MANIFEST", "decode_sample", "encode_sample", "sample_key", "scene_key", "shard_name",
           "BadSample", "SceneShards", "ShardScenes", "group_shards", "load_manifest", "read_scenes",
           "ShardPlan", "ShardTask", "plan_shards", "shard_stores", "write_manifest", "write_shard",
           "RegionChunks", "collate_chunk"]


def __getattr__(name: str) -> Any:
    # torch loads only when the DataLoader side is used
    if name in ("RegionChunks", "collate_chunk"):
        return getattr(importlib.import_module(".loader", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
