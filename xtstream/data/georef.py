"""Where a scene's pixels are on Earth: its CRS and affine transform, carried next to the grid.

A scene's georeference travels with its stream (``SceneStream.info["crs"]`` as WKT,
``["transform"]`` as GDAL-ordered ``[a, b, c, d, e, f]``: ``x = a * col + b * row + c``,
``y = d * col + e * row + f``) so that outputs written at an output stride ``s`` can be placed
on the same ground (:meth:`Georef.scaled`) and detections get longitude/latitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Georef:
    """``crs`` (WKT or ``None``) and ``transform`` (six floats, or ``None``) of a pixel grid."""

    crs: str | None = None
    transform: tuple[float, ...] | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any] | None) -> "Georef":
        """From a stream's ``info`` (``crs``, ``transform`` keys; either may be missing)."""
        info = info or {}
        t = info.get("transform")
        return cls(to_wkt(info.get("crs")), tuple(float(v) for v in t[:6]) if t is not None else None)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def scaled(self, stride: int) -> "Georef":
        """The georeference of the grid whose cell ``(i, j)`` covers pixels ``[i*s, (i+1)*s)`` x
        ``[j*s, (j+1)*s)``: the same origin, ``stride`` times larger cells."""
        if self.transform is None or stride == 1:
            return self
        a, b, c, d, e, f = self.transform
        return Georef(self.crs, (a * stride, b * stride, c, d * stride, e * stride, f))

    def xy(self, rows: Sequence[float] | np.ndarray, cols: Sequence[float] | np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates in the CRS of the *centres* of pixels ``(rows, cols)``."""
        if self.transform is None:
            raise ValueError("no transform: the scene is not georeferenced")
        a, b, c, d, e, f = self.transform
        r = np.asarray(rows, dtype=np.float64) + 0.5
        q = np.asarray(cols, dtype=np.float64) + 0.5
        return a * q + b * r + c, d * q + e * r + f

    def lonlat(self, rows: Sequence[float] | np.ndarray, cols: Sequence[float] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """WGS 84 longitude and latitude of the centres of pixels ``(rows, cols)``; NaN when the
        scene is not georeferenced."""
        n = len(rows)
        if not self.georeferenced or n == 0:
            return np.full(n, np.nan), np.full(n, np.nan)
        from pyproj import CRS, Transformer

        x, y = self.xy(rows, cols)
        to_wgs84 = Transformer.from_crs(CRS.from_user_input(self.crs), CRS.from_epsg(4326), always_xy=True)
        lon, lat = to_wgs84.transform(x, y)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def to_wkt(crs: Any) -> str | None:
    """WKT of anything a CRS can be made from (a ``rasterio``/``pyproj`` CRS, EPSG code, WKT)."""
    if crs is None or crs == "":
        return None
    if isinstance(crs, str):
        return crs
    if hasattr(crs, "to_wkt"):
        return crs.to_wkt()
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def transform_list(transform: Any) -> list[float] | None:
    """An ``affine.Affine`` (or six numbers) as a plain ``[a, b, c, d, e, f]`` list."""
    if transform is None:
        return None
    return [float(v) for v in list(transform)[:6]]
