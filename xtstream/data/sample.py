"""The unit that flows between stages: one region of one scene, with where it belongs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xtstream.data.grid import RegionGrid, Window


@dataclass
class RegionSample:
    """One ``R x R`` region of a scene, zero-padded at the scene's edges.

    ``pixels`` is ``(bands, R, R)``; ``targets`` maps a name (the task's: xView3's ``"vessel"``,
    ``"centre"``, …, classification's ``"label"``) to a ``(R, R)`` array in the same frame or a
    ``()`` scalar; ``objects`` lists the labelled objects inside the region as dicts with
    region-relative pixel coordinates.
    """

    scene_id: str
    index: int
    grid: RegionGrid
    pixels: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def row(self) -> int:
        return self.grid.position(self.index)[0]

    @property
    def col(self) -> int:
        return self.grid.position(self.index)[1]

    @property
    def window(self) -> Window:
        return self.grid.window(self.index)

    @property
    def valid_window(self) -> Window:
        return self.grid.valid_window(self.index)

    @property
    def is_last(self) -> bool:
        return self.index == len(self.grid) - 1

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description (what the shard writer stores beside the pixels)."""
        return {
            "scene_id": self.scene_id,
            "index": self.index,
            "row": self.row,
            "col": self.col,
            "grid": [self.grid.rows, self.grid.cols],
            "region": self.grid.region,
            "scene_shape": [self.grid.height, self.grid.width],
            "window": list(self.window),
            "valid": list(self.valid_window),
        }
