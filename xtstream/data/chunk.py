"""The one unit that flows from the readers to the model and the training loop: a region chunk.

A :class:`RegionChunk` is ``C`` consecutive regions of *one* scene in row-major order — the
paper's context chunk. Readers build it (pixels and targets as numpy), DataLoader workers hand it
over unchanged (``batch_size=None``), the model fills in ``outputs`` (and ``features``, which it
drops again once the head has run), and the training loop reads ``targets`` against ``outputs``.

Vocabulary, one meaning each: a *region* is one ``R x R`` tile of the nested-tokenization grid; a
*chunk* is ``C`` consecutive regions of one scene (what the context encoder consumes at a time); a
store's Zarr chunk is called a *tile* of the store; a scan splits time into *blocks*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample


@dataclass
class RegionChunk:
    """Regions ``indices`` (consecutive, row-major) of scene ``scene_id`` on ``grid``.

    ``pixels``: ``(n, bands, R, R)`` (numpy from the readers, a tensor once on the device);
    ``targets``: ``{name: (n, R, R)}`` for the target maps every region has (``(n,)`` for
    scalar targets, e.g. a scene's class ``label``); ``objects``: ``n``
    lists of the labelled objects inside each region (region-relative pixels); ``outputs``: the
    head's outputs once the model ran (``{name: (n, 1, R, R)}`` for dense heads, ``(1,
    num_classes)`` scene logits so far for classification); ``info``: anything else a reader
    wants to pass on (source paths, worker id); ``features``: the region encoder's feature
    pyramid ``[(n, C_i, h_i, w_i)]`` between the encoder and the context stage.
    """

    scene_id: str
    grid: RegionGrid
    indices: list[int]
    pixels: Any = None
    targets: dict[str, Any] = field(default_factory=dict)
    objects: list[list[dict[str, Any]]] = field(default_factory=list)
    outputs: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    features: Any = None

    def __post_init__(self) -> None:
        self.indices = [int(i) for i in self.indices]
        if not self.indices:
            raise ValueError(f"scene {self.scene_id!r}: a chunk holds at least one region")
        if self.indices != list(range(self.indices[0], self.indices[0] + len(self.indices))):
            raise ValueError(f"scene {self.scene_id!r}: chunk regions {self.indices} are not consecutive")
        if self.indices[-1] >= len(self.grid):
            raise ValueError(f"scene {self.scene_id!r}: region {self.indices[-1]} is outside its "
                             f"{self.grid.rows}x{self.grid.cols} grid")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def start(self) -> int:
        """The first region's index."""
        return self.indices[0]

    @property
    def stop(self) -> int:
        """One past the last region's index."""
        return self.indices[-1] + 1

    @property
    def first(self) -> bool:
        """True when the chunk holds the scene's first region."""
        return self.indices[0] == 0

    @property
    def last(self) -> bool:
        """True when the chunk holds the scene's last region."""
        return self.indices[-1] == len(self.grid) - 1

    @property
    def ends_scene(self) -> bool:
        """True when no region of the scene comes after this chunk: it holds the scene's last
        region, or a reader lost every region after it (``info["skipped_after"]`` reaching the
        grid's end, see :func:`chunked`)."""
        after = self.info.get("skipped_after")
        return self.last or bool(after and after[-1] == len(self.grid) - 1)

    @property
    def positions(self) -> np.ndarray:
        """``(n, 2)`` int64 grid ``(row, col)`` of each region."""
        idx = np.asarray(self.indices, dtype=np.int64)
        return np.stack([idx // self.grid.cols, idx % self.grid.cols], axis=1)

    def regions(self) -> list[RegionSample]:
        """The chunk as one :class:`RegionSample` per region (pixels and targets are views)."""
        out = []
        for k, index in enumerate(self.indices):
            pixels = None if self.pixels is None else self.pixels[k]
            targets = {name: t[k] for name, t in self.targets.items()}
            objects = self.objects[k] if self.objects else []
            out.append(RegionSample(self.scene_id, index, self.grid, pixels, targets, objects))
        return out

    def without_data(self) -> "RegionChunk":
        """The same chunk with pixels and targets dropped (what a consumer keeps of a finished chunk)."""
        return RegionChunk(self.scene_id, self.grid, list(self.indices), None, {}, self.objects,
                           self.outputs, dict(self.info), None)

    @classmethod
    def from_regions(cls, samples: Sequence[RegionSample], **info: Any) -> "RegionChunk":
        """Stack consecutive :class:`RegionSample` of one scene into a chunk.

        Only targets every region has are kept (a chunk's targets are whole ``(n, R, R)`` stacks).
        """
        if not samples:
            raise ValueError("a chunk holds at least one region")
        first = samples[0]
        for s in samples[1:]:
            if s.scene_id != first.scene_id or s.grid != first.grid:
                raise ValueError(f"regions of scenes {first.scene_id!r} and {s.scene_id!r} in one chunk")
        names = [n for n in first.targets if all(n in s.targets for s in samples)]
        pixels = None if first.pixels is None else np.stack([np.asarray(s.pixels) for s in samples])
        return cls(first.scene_id, first.grid, [s.index for s in samples], pixels,
                   {n: np.stack([np.asarray(s.targets[n]) for s in samples]) for n in names},
                   [list(s.objects) for s in samples], None, info)

    def __repr__(self) -> str:
        shape = None if self.pixels is None else tuple(self.pixels.shape)
        return (f"RegionChunk({self.scene_id!r}, regions {self.start}..{self.stop - 1} of {len(self.grid)}, "
                f"pixels={shape}, targets={sorted(self.targets)})")


def chunked(items: Iterable[RegionChunk | RegionSample], size: int, *,
            grid_end: bool = False) -> Iterator[RegionChunk]:
    """Chunks pass through; loose :class:`RegionSample` are grouped into chunks of at most ``size``
    consecutive regions of one scene. A new scene closes a chunk; so does a gap inside a scene
    (regions a reader skipped as bad): the chunk after it lists the missing indices in
    ``info["skipped"]``, which the engine accepts in place of those regions, and the chunk before
    it (shorter than ``size``) lists them in ``info["skipped_after"]``. ``grid_end``: ``items``
    are one whole scene, so a last chunk short of the grid's end lists the lost tail in
    ``info["skipped_after"]`` too (the engine then closes the scene there)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    pending: list[RegionSample] = []
    skipped: list[int] = []
    prev: RegionSample | None = None  # the previous loose region, across chunk boundaries
    for item in items:
        if isinstance(item, RegionChunk):
            if pending:
                yield RegionChunk.from_regions(pending, **_skip_info(skipped))
                pending, skipped = [], []
            prev = None
            yield item
            continue
        same_scene = prev is not None and item.scene_id == prev.scene_id and item.grid == prev.grid
        start = prev.index + 1 if same_scene else 0
        if pending and (not same_scene or item.index != start or len(pending) == size):
            after = list(range(start, item.index)) if same_scene and item.index > start else []
            yield RegionChunk.from_regions(pending, **_skip_info(skipped, after))
            pending, skipped = [], []
        if item.index > start and not pending:
            skipped = list(range(start, item.index))
        pending.append(item)
        prev = item
    if pending:
        end = len(pending[-1].grid)
        after = list(range(pending[-1].index + 1, end)) if grid_end else []
        yield RegionChunk.from_regions(pending, **_skip_info(skipped, after))


def _skip_info(skipped: list[int], after: list[int] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"skipped": skipped} if skipped else {}
    if after:
        info["skipped_after"] = after
    return info
