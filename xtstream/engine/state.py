"""Context state per open scene: what lets chunks of many scenes arrive interleaved.

DataLoader workers each read whole scenes, in order, but the loader interleaves their chunks. The
model's context state (XL memory, Mamba state, the classification pool) belongs to a scene, so it
is kept per scene id: taken when the scene's next chunk arrives, put back after it, dropped when
the scene's last chunk has passed. Within a scene chunks must arrive in order and without gaps;
anything else is an error naming the scene and the regions, never a silent reset. A scene read
twice (``order="two_pass"``) stays open after its first pass (``info["prime"]``) ends: its state
is kept and the scored pass starts over at region 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xtstream.data.chunk import RegionChunk
from xtstream.errors import StreamOrderError

#: open scenes kept at once by default: generous for DataLoader workers x interleaving
DEFAULT_MAX_OPEN = 64


@dataclass
class _Open:
    grid: Any
    next_index: int
    state: Any
    primed: bool = False  # its first pass has ended: the scored pass runs


class SceneStates:
    """The context state of every open scene, keyed by scene id.

    >>> states = SceneStates()
    >>> state = states.take(chunk)          # None at a scene's first chunk   # doctest: +SKIP
    >>> states.put(chunk, new_state)        # dropped after the last chunk     # doctest: +SKIP
    """

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._open: dict[str, _Open] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, scene_id: str) -> bool:
        return scene_id in self._open

    def open_scenes(self) -> dict[str, int]:
        """``{scene_id: next expected region index}`` of the scenes not finished yet."""
        return {sid: o.next_index for sid, o in self._open.items()}

    def check(self, chunk: RegionChunk) -> None:
        """Raise :class:`StreamOrderError` unless ``chunk`` is the next chunk of its scene."""
        sid, start = chunk.scene_id, chunk.start
        entry = self._open.get(sid)
        if entry is None:
            if start != 0 and not _skipped_to(chunk, 0):
                raise order_error(chunk, 0)
            if len(self._open) >= self.max_open:
                raise StreamOrderError(
                    f"scene {sid!r} would make {len(self._open) + 1} open scenes (max_open="
                    f"{self.max_open}): too many scenes interleaved at once; raise max_open or read "
                    f"fewer scenes in parallel (open: {sorted(self._open)[:8]})")
            return
        if chunk.grid != entry.grid:
            raise StreamOrderError(f"scene {sid!r}: chunk on a {chunk.grid.rows}x{chunk.grid.cols} grid, "
                                   f"but the scene is open on a {entry.grid.rows}x{entry.grid.cols} grid")
        if start != entry.next_index and not _skipped_to(chunk, entry.next_index):
            raise order_error(chunk, entry.next_index)

    def expected(self, scene_id: str) -> int:
        """The region index the scene's next chunk must start at (0 for a scene not open)."""
        entry = self._open.get(scene_id)
        return 0 if entry is None else entry.next_index

    def primed(self, scene_id: str) -> bool:
        """True when the scene's first pass (of two) has ended and its scored pass runs."""
        entry = self._open.get(scene_id)
        return entry is not None and entry.primed

    def take(self, chunk: RegionChunk) -> Any:
        """The state to process ``chunk`` with (``None`` at its scene's first chunk)."""
        self.check(chunk)
        entry = self._open.get(chunk.scene_id)
        state = None if entry is None else entry.state
        # the scene counts as open (and expects the next chunk) from now on, until put() closes it
        self._open[chunk.scene_id] = _Open(chunk.grid, chunk.stop, None, entry is not None and entry.primed)
        return state

    def put(self, chunk: RegionChunk, state: Any) -> None:
        """Record the state after ``chunk``; the scene closes (state dropped) at its last chunk —
        or at the last one a reader delivered, when it lost the rest (:attr:`RegionChunk.ends_scene`)
        — unless that ends a first pass: then the state waits for the scored pass, at region 0."""
        primed = self._open[chunk.scene_id].primed if chunk.scene_id in self._open else False
        if chunk.ends_scene and chunk.info.get("prime"):
            self._open[chunk.scene_id] = _Open(chunk.grid, 0, state, True)
        elif chunk.ends_scene:
            self._open.pop(chunk.scene_id, None)
        else:
            self._open[chunk.scene_id] = _Open(chunk.grid, chunk.stop, state, primed)

    def clear(self) -> None:
        self._open.clear()

    def detach(self) -> None:
        """Cut the gradient of every open scene's state (after a truncated-BPTT backward: the
        graph it pointed into is freed)."""
        from xtstream.models.context import detach_all

        for entry in self._open.values():
            entry.state = detach_all(entry.state)

    def export(self) -> list[dict[str, Any]]:
        """The open scenes as plain entries ``{scene_id, grid: [height, width, region],
        next_index, state, primed}`` (what a training checkpoint keeps to resume mid-scene)."""
        return [{"scene_id": sid, "grid": [o.grid.height, o.grid.width, o.grid.region],
                 "next_index": o.next_index, "state": o.state, "primed": o.primed}
                for sid, o in self._open.items()]

    def restore(self, entries: list[dict[str, Any]]) -> None:
        """Open the scenes of :meth:`export`'s ``entries`` (after any already open)."""
        from xtstream.data.grid import RegionGrid

        for e in entries:
            self._open[e["scene_id"]] = _Open(RegionGrid(*e["grid"]), int(e["next_index"]), e["state"],
                                              bool(e.get("primed", False)))


def order_error(chunk: RegionChunk, expected: int) -> StreamOrderError:
    """The error for ``chunk`` arriving when its scene's next region is ``expected``."""
    where = f"scene {chunk.scene_id!r}: chunk of regions {chunk.start}..{chunk.stop - 1} arrived"
    if expected == 0:
        return StreamOrderError(f"{where}, but the scene has not started (regions 0..{chunk.start - 1} "
                                "never came, or the scene already ended)")
    what = "a gap" if chunk.start > expected else "out of order (or repeated)"
    return StreamOrderError(f"{where}, expected region {expected} next: {what}. Chunks of one scene "
                            "must arrive in row-major order")


def _skipped_to(chunk: RegionChunk, expected: int) -> bool:
    """True when a reader skipped exactly the regions between ``expected`` and the chunk (bad
    samples with ``skip_bad=True``): the scene goes on without them."""
    return chunk.info.get("skipped") == list(range(expected, chunk.start))
