"""A run's training data: the config's ``data`` section → a chunk dataset, a DataLoader, step counts.

Scenes come from shards (:func:`xtstream.read_scenes`) or straight from stores/sources
(:func:`xtstream.stream_scenes`, labels read by the task), as an ``IterableDataset`` of chunks
that splits itself by scene over ranks and DataLoader workers. The loader is
``DataLoader(dataset, batch_size=None, num_workers=N)`` with its own seeded generator, so making
it never draws from the global torch RNG (exact resume depends on that).
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xtstream.data.split import split_scenes
from xtstream.engine.config import DataSection
from xtstream.errors import TrainConfigError


@dataclass(frozen=True)
class SceneSize:
    """A training scene's id and its number of regions (what step counts need)."""

    scene_id: str
    regions: int


def build_dataset(cfg: DataSection, *, region: int, chunk: int, task: Any, seed: int, source: str,
                  passes: int = 1) -> tuple[Any, list[SceneSize]]:
    """The chunk dataset of ``cfg`` and its scenes in the set's order (before shuffling); ``passes``
    2 reads each scene twice (a model of ``order="two_pass"``)."""
    if cfg.shards is not None:
        from xtstream.data.shards import read_scenes

        dataset = read_scenes(cfg.shards, chunk=chunk, passes=passes, shuffle=cfg.shuffle, seed=seed, region=region,
                              skip_bad=cfg.skip_bad, prefetch=cfg.prefetch)
        sizes = [SceneSize(s.scene_id, len(s.grid if s.grid is not None else dataset.scene_set._peek_grid(s)))
                 for s in dataset.scene_set.scenes]
        return dataset, sizes
    from xtstream.data.grid import RegionGrid
    from xtstream.data.streams import stream_scenes
    from xtstream.data.windows import open_windows

    sources = _expand(cfg.stores, source)
    readers = [open_windows(s) for s in sources]
    sizes = [SceneSize(r.scene_id, len(RegionGrid(r.shape[1], r.shape[2], region))) for r in readers]
    labels = None
    if cfg.labels is not None:
        labels = task.read_labels(cfg.labels, scene_ids=[s.scene_id for s in sizes],
                                  shapes={r.scene_id: tuple(r.shape[1:]) for r in readers}, spec=cfg.spec)
    dataset = stream_scenes([str(s) for s in sources], region, chunk=chunk, passes=passes, labels=labels,
                            shuffle=cfg.shuffle, seed=seed, prefetch=cfg.prefetch)
    return dataset, sizes


def make_loader(dataset: Any, workers: int, seed: int, epoch: int) -> torch.utils.data.DataLoader:
    """``DataLoader(dataset, batch_size=None, num_workers=workers)`` for ``epoch`` (set on the
    dataset: scenes reshuffle), its generator seeded from ``seed`` and ``epoch``."""
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, generator=generator,
                                       persistent_workers=False)


def steps_per_epoch(sizes: list[SceneSize], epoch: int, *, chunk: int, policy: str, scenes_per_step: int,
                    workers: int, world: int, shuffle: bool, seed: int, bptt_chunks: int = 1,
                    passes: int = 1) -> int:
    """The optimiser steps every rank takes in ``epoch``: the fewest of any rank (DDP drops the
    rest, :mod:`xtstream.engine.distributed`). ``per_chunk`` with ``scenes_per_step > 1`` groups
    same-position chunks of scenes read by different workers, so its count assumes scenes of one
    size (it sets the learning-rate schedule only). ``passes=2`` (``order="two_pass"``): the
    first pass takes no step of its own, but with ``bptt_chunks > 1`` its groups fill windows too
    (counted for one worker)."""
    counts = []
    for rank in range(world):
        mine = split_scenes(sizes, shuffle=shuffle, seed=seed, epoch=epoch, info=(rank, world, 0, 1))
        if policy == "per_scene":
            counts.append(math.ceil(len(mine) / scenes_per_step))
        elif passes == 2 and bptt_chunks > 1:
            # windows run over first-pass groups too; one steps when it holds a scored group
            scored = []
            for s in mine:
                n = math.ceil(s.regions / chunk)
                scored += [False] * n + [True] * n
            counts.append(sum(any(scored[i:i + bptt_chunks]) for i in range(0, len(scored), bptt_chunks)))
        else:
            chunks = sum(math.ceil(s.regions / chunk) for s in mine)
            groups = math.ceil(chunks / max(1, min(scenes_per_step, workers)))
            counts.append(math.ceil(groups / bptt_chunks))
    return min(counts)


def _expand(patterns: list[str], source: str) -> list[Path]:
    """Paths and globs → paths, in the given order (globs sorted); each must exist."""
    out: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found = sorted(glob.glob(pattern))
            if not found:
                raise TrainConfigError(f"{source}: data.stores: {pattern!r} matches nothing")
            out += [Path(p) for p in found]
        elif not Path(pattern).exists():
            raise TrainConfigError(f"{source}: data.stores: {pattern} does not exist")
        else:
            out.append(Path(pattern))
    return out
