"""Per-band normalisation from a spec, applied lazily (one fused task per chunk)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from xtstream.errors import SpecError
from xtstream.data.specs import DatasetSpec


def normalize_block(block: np.ndarray, nodata: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    mean: np.ndarray, std: np.ndarray, fill: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``(bands, h, w)`` → ``(clip(x, lo, hi) - mean) / std``, nodata and NaN → ``fill``.

    Per-band parameters are ``(bands,)`` arrays; a NaN ``nodata`` means "no nodata value".
    """
    x = block.astype(np.float32 if np.dtype(dtype).itemsize <= 4 else np.float64, copy=True)
    shape = (-1, 1, 1)
    invalid = np.isnan(x) | (x == nodata.reshape(shape))
    np.clip(x, lo.reshape(shape), hi.reshape(shape), out=x)
    x -= mean.reshape(shape)
    x /= std.reshape(shape)
    np.copyto(x, np.broadcast_to(fill.reshape(shape), x.shape), where=invalid)
    return x.astype(dtype, copy=False)


def normalize(arr: xr.DataArray, spec: DatasetSpec) -> xr.DataArray:
    """Apply ``spec``'s band normalisation to a ``(band, y, x)`` array, lazily, matching by band name."""
    names = [str(b) for b in arr["band"].values]
    spec_names = [b.name for b in spec.bands]
    if names != spec_names:
        raise SpecError(f"{spec.source}: spec bands {spec_names} do not match the source's bands {names}")
    bands = spec.bands
    source_nodata = arr.attrs.get("nodata") or [None] * len(bands)
    params = dict(
        nodata=np.array([_first(b.nodata, n) for b, n in zip(bands, source_nodata)], dtype=np.float64),
        lo=np.array([b.clip[0] if b.clip else -np.inf for b in bands]),
        hi=np.array([b.clip[1] if b.clip else np.inf for b in bands]),
        mean=np.array([b.mean for b in bands]),
        std=np.array([b.std for b in bands]),
        fill=np.array([b.fill for b in bands]),
    )
    dtype = np.dtype(spec.dtype)
    data = arr.data.map_blocks(_normalize_kw, dtype=dtype, out_dtype=dtype.str, **params)
    out = arr.copy(data=data)
    out.attrs["normalization"] = [
        {"band": b.name, "clip": list(b.clip) if b.clip else None, "mean": b.mean, "std": b.std,
         "fill": b.fill, "nodata": None if np.isnan(nd) else float(nd)}
        for b, nd in zip(bands, params["nodata"])
    ]
    out.attrs.pop("nodata", None)  # normalised data has no nodata value left: it became `fill`
    return out


def _normalize_kw(block: np.ndarray, *, out_dtype: str, **params: np.ndarray) -> np.ndarray:
    return normalize_block(block, dtype=np.dtype(out_dtype), **params)


def _first(a: float | None, b: float | None) -> float:
    value = a if a is not None else b
    return np.nan if value is None else float(value)
