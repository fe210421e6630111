"""Ordered WebDataset region shards: write them from Zarr scene stores, read them back as scenes.

* :func:`shard_stores` — stores → ``{scene_key}-NNNNN.tar`` shards + ``manifest.json`` (a dask
  graph, resumable); the ``xtstream shard`` command drives it.
* :func:`read_scenes` — shards → a ``torch`` ``IterableDataset`` of region chunks, scene after
  scene, split over nodes/workers by scene, optionally shuffled by scene.

The sample layout is documented in :mod:`xtstream.data.shards.format`; stock ``webdataset.WebDataset``
and ``tar tf`` read the shards too.
"""

from __future__ import annotations

from xtstream.data.shards.format import MANIFEST, decode_sample, encode_sample, sample_key, scene_key, shard_name
from xtstream.data.shards.reader import BadSample, LostRegions, ShardedScene, ShardSceneSet, group_shards, load_manifest, read_scenes
from xtstream.data.shards.writer import ShardPlan, ShardTask, plan_shards, shard_stores, write_manifest, write_shard

__all__ = ["MANIFEST", "decode_sample", "encode_sample", "sample_key", "scene_key", "shard_name",
           "BadSample", "LostRegions", "ShardedScene", "ShardSceneSet", "group_shards", "load_manifest", "read_scenes",
           "ShardPlan", "ShardTask", "plan_shards", "shard_stores", "write_manifest", "write_shard"]

