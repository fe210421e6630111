"""WebDataset region shards → scenes, each an ordered stream of regions.

``for chunk in read_scenes("shards/", chunk=C): …``. Scenes are the unit of
everything: shuffling permutes scenes (never regions), and splitting over nodes and DataLoader
workers hands out whole scenes (:func:`xtstream.data.streams.split_scenes`), so a scene's regions
arrive in row-major order from one worker. Its shards are streamed one tar member at a time;
a reader holds one sample being decoded plus ``prefetch`` decoded regions (if > 0) plus what the
consumer keeps — the memory bound, whatever the scene or shard size.

Every sample is checked before it is handed on (its members' crc32c checksums, its files, its
grid against the scene's, its place in the row-major order) and every shard against the manifest
(size, optionally SHA-256, region count). Errors name the shard and the sample. With
``skip_bad=True`` bad samples (and the rest of a corrupt shard) are skipped instead, recorded in
:attr:`ShardSceneSet.bad`, and every region that is not delivered — whatever the cause: a bad
sample, a missing or cut shard, a shard the manifest no longer lists — is counted against the
scene's grid in :attr:`ShardSceneSet.lost` (:class:`LostRegions`, named in :meth:`report`). The
chunks :class:`~xtstream.data.dataset.SceneChunks` yields carry those records to the consumer,
DataLoader workers included (``info["lost"]``, ``info["lost_regions"]``).
Nothing is unpickled: pixels are ``.npy`` read with ``allow_pickle=False``, metadata is JSON.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from xtstream.errors import ShardError
from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample
from xtstream.data.split import split_scenes, worker_info
from xtstream.data.streams import DEFAULT_CHUNK, SceneStream
from xtstream.data.shards.format import (MANIFEST, SHARD_RE, decode_sample, read_manifest, split_member,
                                         unescape_key)

if TYPE_CHECKING:  # torch loads only when a dataset is made
    from xtstream.data.dataset import SceneChunks

log = logging.getLogger(__name__)


@dataclass
class ShardedScene:
    """Where one scene's regions are: its shards in order, and (from the manifest) what to expect."""

    scene_id: str
    shards: list[str]
    grid: RegionGrid | None = None
    bands: list[str] | None = None
    expected: dict[str, dict] | None = None  # shard url -> manifest entry (bytes, sha256, start, stop)
    georef: dict | None = None  # {"crs", "transform"} of the sharded store (manifests from 2026-11-25 on)


@dataclass
class BadSample:
    """A sample (``key``) or a whole shard (``key=None``) refused as bad, and why."""

    shard: str
    key: str | None
    error: str


@dataclass
class LostRegions:
    """Regions ``start .. stop - 1`` of scene ``scene_id`` that a ``skip_bad`` pass did not deliver."""

    scene_id: str
    start: int
    stop: int
    cause: str

    def __len__(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for a chunk's ``info["lost"]`` (crosses DataLoader worker pipes)."""
        return {"scene_id": self.scene_id, "start": self.start, "stop": self.stop, "cause": self.cause}

    def __str__(self) -> str:
        where = f"region {self.start}" if len(self) == 1 else f"regions {self.start}..{self.stop - 1}"
        return f"scene {self.scene_id!r}: {where} ({len(self)}) not delivered: {self.cause}"


class ShardSceneSet:
    """The scenes of a shard set, iterated as :class:`~xtstream.data.streams.SceneStream` (re-iterable).

    Options: ``shuffle`` (scenes, seeded by ``seed`` and :meth:`set_epoch`), ``by_node`` /
    ``by_worker`` (scene-level splitting), ``region`` (the region size every sample must have),
    ``skip_bad``, ``verify`` (check each shard's SHA-256 against the manifest as it streams),
    ``targets`` (decode label targets), ``prefetch`` (regions decoded ahead in a thread).
    """

    def __init__(self, scenes: Sequence[ShardedScene], *, shuffle: bool = False, seed: int = 0,
                 by_node: bool = True, by_worker: bool = True, region: int | None = None,
                 skip_bad: bool = False, verify: bool = False, targets: bool = True, prefetch: int = 0):
        self.scenes = list(scenes)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.by_node, self.by_worker = by_node, by_worker
        self.region, self.skip_bad, self.verify = region, skip_bad, verify
        self.targets, self.prefetch = targets, prefetch
        self.bad: list[BadSample] = []
        self.lost: list[LostRegions] = []

    @property
    def lost_regions(self) -> int:
        """Regions this pass did not deliver (``skip_bad``), over every scene read so far."""
        return sum(len(x) for x in self.lost)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes)

    def __iter__(self) -> Iterator[SceneStream]:
        self.bad, self.lost = [], []
        scenes, gone = (self._drop_unreadable() if self.skip_bad else (self.scenes, []))
        mine = self._split(scenes)
        for entry, errors in self._gone_share(gone, scenes):
            since = len(self.bad)
            self.bad.extend(errors)
            self._lose(entry.scene_id, 0, len(entry.grid), since)
        for entry in mine:
            # without a manifest the grid comes from the first readable sample; a scene with none
            # cannot be counted, so it is an error even with skip_bad
            grid = entry.grid or self._peek_grid(entry)
            if self.region is not None and grid.region != self.region:
                raise ShardError(f"{entry.shards[0]}: scene {entry.scene_id!r} was sharded with region "
                                 f"{grid.region}, expected {self.region}")
            yield SceneStream(entry.scene_id, grid, lambda e=entry, g=grid: self._regions(e, g),
                              bands=entry.bands, prefetch=self.prefetch, info={"shards": list(entry.shards), **(entry.georef or {})})
        if self.bad or self.lost:
            log.warning("skipped %d bad sample(s) or shard(s); %d region(s) not delivered:\n%s",
                        len(self.bad), self.lost_regions, self.report())

    def _split(self, scenes: Sequence[Any], info: tuple[int, int, int, int] | None = None,
               by_worker: bool | None = None) -> list[Any]:
        return split_scenes(scenes, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, by_node=self.by_node,
                            by_worker=self.by_worker if by_worker is None else by_worker, info=info)

    def _drop_unreadable(self) -> tuple[list[ShardedScene], list[tuple[ShardedScene, list[BadSample]]]]:
        """``(scenes to read, scenes none of whose shards is there whole)``, by the manifest's sizes.

        A scene wholly lost yields no chunk, so no chunk of its own could carry the count; found
        here, before splitting, its loss is told by a worker that has chunks (:meth:`_gone_share`).
        """
        keep, gone = [], []
        for entry in self.scenes:
            errors = []
            for url in entry.shards if entry.expected and entry.grid else []:
                try:
                    _check_size(url, entry.expected.get(url))
                except ShardError as err:
                    errors.append(BadSample(url, None, str(err)))
            if entry.shards and len(errors) == len(entry.shards):
                gone.append((entry, errors))
            else:
                keep.append(entry)
        return keep, gone

    def _gone_share(self, gone: list[tuple[ShardedScene, list[BadSample]]], scenes: list[ShardedScene]
                    ) -> list[tuple[ShardedScene, list[BadSample]]]:
        """The wholly lost scenes this process tells of: its node's share (as scenes are split over
        nodes), told by the first of the node's DataLoader workers that has scenes to read — every
        worker when each reads all scenes (``by_worker=False``)."""
        if not gone:
            return []
        share = self._split(gone, by_worker=False)
        rank, world, worker, workers = worker_info()
        if not self.by_worker or workers <= 1:
            return share
        teller = next((w for w in range(workers) if self._split(scenes, info=(rank, world, w, workers))), 0)
        return share if worker == teller else []

    def report(self) -> str:
        """One line per skipped sample or shard, then one per run of regions not delivered
        (empty when all was well)."""
        return "\n".join([f"{b.shard}: {b.key or '(shard)'}: {b.error}" for b in self.bad]
                         + [str(x) for x in self.lost])

    def _peek_grid(self, entry: ShardedScene) -> RegionGrid:
        for url in entry.shards:
            for key, files in _tar_samples(url):
                sample = decode_sample(files, f"{url}: sample {key}", targets=False)
                return sample.grid
        raise ShardError(f"scene {entry.scene_id!r}: its shards {entry.shards} hold no samples")

    def _fail(self, err: ShardError, shard: str, key: str | None) -> None:
        if not self.skip_bad:
            raise err
        self.bad.append(BadSample(shard, key, str(err)))

    def _lose(self, scene_id: str, start: int, stop: int, since: int) -> None:
        """Record regions ``start .. stop - 1`` as not delivered, blaming the bad samples or shards
        recorded since index ``since`` of :attr:`bad` (none: no shard held them)."""
        if stop <= start:
            return
        causes = [f"{Path(b.shard).name}: {b.key or '(shard)'}: {b.error}" for b in self.bad[since:]]
        cause = "; ".join(causes) if causes else (
            "no shard holds them (a shard missing from the manifest or the shard list, or cut between samples)")
        self.lost.append(LostRegions(scene_id, start, stop, cause))

    def _regions(self, entry: ShardedScene, grid: RegionGrid) -> Iterator[RegionSample]:
        last = -1
        since = len(self.bad)  # bad records since the last region delivered: the cause of a gap
        for url in entry.shards:
            expect = (entry.expected or {}).get(url)
            try:
                _check_size(url, expect)
            except ShardError as err:
                self._fail(err, url, None)
                continue
            digest = hashlib.sha256() if (self.verify and expect) else None
            key = None
            count = 0
            try:
                for key, files in _tar_samples(url, digest):
                    where = f"{url}: sample {key}"
                    try:
                        sample = decode_sample(files, where, region=grid.region, targets=self.targets)
                        _check_place(sample, entry.scene_id, grid, last, where, strict=not self.skip_bad)
                    except ShardError as err:
                        self._fail(err, url, key)
                        continue
                    if self.skip_bad:
                        self._lose(entry.scene_id, last + 1, sample.index, since)
                        since = len(self.bad)
                    last = sample.index
                    count += 1
                    yield sample
            except ShardError as err:
                self._fail(err, url, key)
                continue
            if expect is not None and not self.skip_bad and count != expect["stop"] - expect["start"]:
                raise ShardError(f"{url}: {count} samples, the manifest lists {expect['stop'] - expect['start']}")
            if digest is not None and digest.hexdigest() != expect["sha256"]:
                self._fail(ShardError(f"{url}: SHA-256 differs from the manifest (shard changed or corrupt)"), url, None)
                since = len(self.bad)  # its samples passed their own checks: it lost no region
        if self.skip_bad:
            self._lose(entry.scene_id, last + 1, len(grid), since)
        elif last != len(grid) - 1:
            raise ShardError(f"scene {entry.scene_id!r}: stream ended at region {last} of {len(grid)} "
                             f"(shards {entry.shards} incomplete?)")


def _check_size(url: str, expect: dict | None) -> None:
    if expect is None:
        return
    size = Path(url).stat().st_size if Path(url).exists() else None
    if size is None:
        raise ShardError(f"{url}: shard listed in the manifest is missing")
    if size != expect["bytes"]:
        raise ShardError(f"{url}: {size} bytes, the manifest lists {expect['bytes']} (truncated or replaced shard)")


def _check_place(sample: RegionSample, scene_id: str, grid: RegionGrid, last: int, where: str, strict: bool) -> None:
    if sample.scene_id != scene_id:
        raise ShardError(f"{where}: belongs to scene {sample.scene_id!r}, found among the shards of {scene_id!r}")
    if sample.grid != grid:
        g = sample.grid
        raise ShardError(f"{where}: from a {g.rows}x{g.cols} grid of {g.region}-px regions over "
                         f"{g.height}x{g.width} px, but scene {scene_id!r} has a {grid.rows}x{grid.cols} grid of "
                         f"{grid.region}-px regions over {grid.height}x{grid.width} px (a shard from another grid size?)")
    if (strict and sample.index != last + 1) or sample.index <= last:
        raise ShardError(f"{where}: region {sample.index} follows region {last}; regions must be "
                         "row-major and complete (shards out of order, or missing samples)")


class _HashingReader:
    def __init__(self, raw: Any, digest: Any):
        self.raw, self.digest = raw, digest

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data


def _tar_samples(url: str, digest: Any = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a tar, streamed member by member (WebDataset's keying).

    Tar-level damage raises :class:`ShardError` naming the shard and the last whole sample. Python's
    ``tarfile`` ends quietly at a cut or garbled header, so the end is checked too: a whole tar ends
    with at least two zero blocks and nothing else; a sample cut by damage is never yielded.
    """
    key, files, last_good = None, {}, None
    try:
        with open(url, "rb") as raw:
            src = _HashingReader(raw, digest) if digest is not None else raw
            with tarfile.open(fileobj=src, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    parts = split_member(member.name)
                    if parts is None:
                        raise ShardError(f"{url}: member {member.name!r} has no extension (not a WebDataset sample file)")
                    k, ext = parts
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise ShardError(f"{url}: member {member.name!r} is cut short")
                    if k != key:
                        if key is not None:
                            yield key, files
                            last_good = key
                        key, files = k, {}
                    if ext in files:
                        raise ShardError(f"{url}: sample {k} has two .{ext} files")
                    files[ext] = data
                end = tar.offset
            if digest is not None:
                while src.read(1 << 20):  # the end-of-archive padding counts in the checksum
                    pass
            _check_tail(raw, end, url, key)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"{url}: truncated or corrupt tar after sample {last_good or '(none)'}: {err}") from None
    if key is not None:
        yield key, files


def _check_tail(raw: Any, end: int, url: str, last_key: str | None) -> None:
    """Everything after the last member must be end-of-archive zeros, at least two blocks of them."""
    size = os.fstat(raw.fileno()).st_size
    raw.seek(end)
    pos = end
    while pos < size:
        block = raw.read(1 << 16)
        if not block:
            break
        if block.count(0) != len(block):
            raise ShardError(f"{url}: corrupt tar: unreadable member header at byte {end} "
                             f"(after sample {last_key or '(none)'}); the rest of the shard is lost")
        pos += len(block)
    if size - end < 1024:
        raise ShardError(f"{url}: truncated tar: ends at byte {size} without an end-of-archive marker "
                         f"(last sample read: {last_key or '(none)'})")


def _expand(urls: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(urls, (str, Path)):
        text = str(urls)
        if "{" in text:
            import braceexpand

            return [u for u in braceexpand.braceexpand(text)]
        if any(c in text for c in "*?["):
            return sorted(glob.glob(text))
        return [text]
    return [str(u) for u in urls]


def load_manifest(path: str | Path) -> list[ShardedScene]:
    """Scenes of a ``manifest.json`` (or a shard directory holding one), with expectations per shard."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    doc = read_manifest(path)
    root = path.parent
    by_name = {s["name"]: s for s in doc["shards"]}
    scenes = []
    for sc in doc["scenes"]:
        urls = [str(root / n) for n in sc["shards"]]
        grid = RegionGrid(int(sc["scene_shape"][0]), int(sc["scene_shape"][1]), int(sc["region"]))
        scenes.append(ShardedScene(sc["scene_id"], urls, grid, sc.get("bands"),
                                  {str(root / n): by_name[n] for n in sc["shards"]},
                                  {k: sc[k] for k in ("crs", "transform") if k in sc}))
    return scenes


def group_shards(urls: Sequence[str]) -> list[ShardedScene]:
    """Tar paths named ``{scene_key}-{n:05d}.tar`` → scenes, in order of first appearance."""
    scenes: dict[str, list[tuple[int, str]]] = {}
    for url in urls:
        m = SHARD_RE.match(Path(url).name)
        if not m:
            raise ShardError(f"{url}: not an xtstream shard name ({{scene_key}}-NNNNN.tar); pass the manifest instead")
        scenes.setdefault(m["scene"], []).append((int(m["n"]), url))
    return [ShardedScene(unescape_key(k), [u for _, u in sorted(v)]) for k, v in scenes.items()]


def read_scenes(urls: str | Path | Sequence[str | Path], *, chunk: int = DEFAULT_CHUNK, passes: int = 1,
                **kw: Any) -> "SceneChunks":
    """The scenes of a shard set as a ``torch.utils.data.IterableDataset`` of region chunks.

    ``urls``: a shard directory or its ``manifest.json`` (preferred: checks sizes and counts), or
    tar paths — a list, a glob or a brace pattern — named ``{scene_key}-NNNNN.tar``. Iterating
    yields :class:`~xtstream.data.chunk.RegionChunk` of ``chunk`` consecutive regions, scene after
    scene; ``.scenes()`` yields the scenes (:class:`~xtstream.data.streams.SceneStream`).
    ``passes=2``: each scene twice, the first pass marked ``info["prime"]`` (a model of
    ``order="two_pass"``; see :class:`~xtstream.data.dataset.SceneChunks`).
    ``kw``: see :class:`ShardSceneSet` (``shuffle``, ``seed``, ``skip_bad``, ``verify``, …).

    >>> loader = DataLoader(read_scenes("shards/", chunk=16, shuffle=True),   # doctest: +SKIP
    ...                     batch_size=None, num_workers=4)
    >>> for chunk in model.stream(loader): ...                                # doctest: +SKIP
    """
    from xtstream.data.dataset import SceneChunks

    expanded = _expand(urls)
    if len(expanded) == 1 and (Path(expanded[0]).is_dir() or expanded[0].endswith(".json")):
        scenes = load_manifest(expanded[0])
    else:
        if not expanded:
            raise ShardError(f"no shards match {urls!r}")
        scenes = group_shards(expanded)
    return SceneChunks(ShardSceneSet(scenes, **kw), chunk, passes)
