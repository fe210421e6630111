"""Declarative dataset specs (``data_specs/*.yaml``): band files, dtype, nodata, normalisation, labels.

Loaded with :func:`load_spec` (a path, or the name of a spec shipped in ``data_specs/``) and
validated on load: an unknown key, a wrong type or a missing field raises
:class:`~xtstream.errors.SpecError` naming the file, the place and — for typos — the closest key.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xtstream.errors import SpecError

#: specs in a source checkout (the source of truth; installs ship them as ``xtstream.data_specs``)
SPEC_DIR = Path(__file__).resolve().parents[2] / "data_specs"


def shipped_specs() -> dict[str, Any]:
    """``{name: resource}`` of the specs shipped with the package (``importlib.resources``), or of
    the checkout's ``data_specs/`` when running from a source tree that is not installed."""
    try:
        from importlib.resources import files

        root: Any = files("xtstream.data_specs")
    except ModuleNotFoundError:
        root = SPEC_DIR
    return {p.name.removesuffix(".yaml"): p for p in root.iterdir() if p.name.endswith(".yaml")}


@dataclass(frozen=True)
class BandSpec:
    """One band: where it comes from and how it is normalised.

    Normalised value = ``(clip(x, *clip) - mean) / std``; ``nodata`` and NaN pixels become ``fill``.
    """

    name: str
    file: str
    optional: bool = False
    nodata: float | None = None
    clip: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = 1.0
    fill: float = 0.0
    resample: str | None = None


@dataclass(frozen=True)
class LabelSpec:
    """A labels table: file name (per archive or per scene), column types, required columns."""

    file: str
    columns: dict[str, str]
    required: tuple[str, ...]
    row_column: str = "detect_scene_row"
    col_column: str = "detect_scene_column"
    scene_column: str = "scene_id"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    bands: tuple[BandSpec, ...]
    description: str = ""
    dtype: str = "float32"
    tile: int = 2048
    region: int = 512
    pixel_size_m: float | None = None
    labels: LabelSpec | None = None
    source: str = "<memory>"

    def band(self, name: str) -> BandSpec:
        for b in self.bands:
            if b.name == name:
                return b
        raise SpecError(f"{self.source}: no band named {name!r} (bands: {[b.name for b in self.bands]})")

    def select(self, names: list[str] | None) -> "DatasetSpec":
        """The same spec restricted to ``names`` (in that order)."""
        if not names:
            return self
        return DatasetSpec(**{**self.__dict__, "bands": tuple(self.band(n) for n in names)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMN_TYPES = {"str", "int", "float", "bool"}
_RESAMPLING = {None, "nearest", "bilinear", "cubic", "average"}


def load_spec(spec: str | Path | DatasetSpec) -> DatasetSpec:
    """Load and validate a spec from a YAML path or a shipped name (``"xview3"``)."""
    if isinstance(spec, DatasetSpec):
        return spec
    path: Any = Path(spec)
    if not path.exists() and not path.suffix:
        path = shipped_specs().get(str(spec), path)
    if not path.is_file():
        raise SpecError(f"{spec}: no such spec file (shipped specs: {sorted(shipped_specs())})")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from err
    return parse_spec(doc, source=str(path))


def parse_spec(doc: Any, source: str = "<memory>") -> DatasetSpec:
    """Validate a spec given as a mapping (what the YAML holds)."""
    top = dict(_mapping(doc, source, "spec"))
    if "chunk" in top and "tile" not in top:  # its old name: "chunk" now means C regions only
        top["tile"] = top.pop("chunk")
    _check_keys(top, DatasetSpec, source, "spec", ignore={"source"})
    for key in ("name", "bands"):
        if key not in top:
            raise SpecError(f"{source}: spec: missing required key '{key}'")
    bands_doc = top["bands"]
    if not isinstance(bands_doc, list) or not bands_doc:
        raise SpecError(f"{source}: spec.bands: expected a non-empty list of bands")
    bands = tuple(_band(b, source, f"bands[{i}]") for i, b in enumerate(bands_doc))
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise SpecError(f"{source}: spec.bands: duplicate band names {names}")
    try:
        np.dtype(top.get("dtype", "float32"))
    except TypeError as err:
        raise SpecError(f"{source}: spec.dtype: {top.get('dtype')!r} is not a numpy dtype") from err
    for key in ("tile", "region"):
        if key in top and (not isinstance(top[key], int) or top[key] < 1):
            raise SpecError(f"{source}: spec.{key}: expected a positive integer, got {top[key]!r}")
    labels = _labels(top["labels"], source) if top.get("labels") is not None else None
    kw = {k: v for k, v in top.items() if k not in ("bands", "labels")}
    return DatasetSpec(bands=bands, labels=labels, source=source, **kw)


def _band(doc: Any, source: str, where: str) -> BandSpec:
    band = _mapping(doc, source, where)
    _check_keys(band, BandSpec, source, where)
    for key in ("name", "file"):
        if not isinstance(band.get(key), str) or not band[key]:
            raise SpecError(f"{source}: {where}: '{key}' must be a non-empty string")
    for key in ("nodata", "mean", "std", "fill"):
        if key in band and band[key] is not None and not isinstance(band[key], (int, float)):
            raise SpecError(f"{source}: {where}.{key}: expected a number, got {band[key]!r}")
    if band.get("std", 1.0) == 0:
        raise SpecError(f"{source}: {where}.std: must not be 0")
    clip = band.get("clip")
    if clip is not None:
        if not (isinstance(clip, list) and len(clip) == 2 and all(isinstance(c, (int, float)) for c in clip)
                and clip[0] < clip[1]):
            raise SpecError(f"{source}: {where}.clip: expected [low, high] with low < high, got {clip!r}")
        band["clip"] = (float(clip[0]), float(clip[1]))
    if band.get("resample") not in _RESAMPLING:
        raise SpecError(f"{source}: {where}.resample: {band['resample']!r} not one of "
                        f"{sorted(r for r in _RESAMPLING if r)}")
    return BandSpec(**band)


def _labels(doc: Any, source: str) -> LabelSpec:
    labels = _mapping(doc, source, "labels")
    _check_keys(labels, LabelSpec, source, "labels")
    columns = _mapping(labels.get("columns"), source, "labels.columns")
    for col, typ in columns.items():
        if typ not in _COLUMN_TYPES:
            raise SpecError(f"{source}: labels.columns.{col}: type {typ!r} not one of {sorted(_COLUMN_TYPES)}")
    required = tuple(labels.get("required", ()))
    unknown = [c for c in required if c not in columns]
    if unknown:
        raise SpecError(f"{source}: labels.required names columns not in labels.columns: {unknown}")
    if "file" not in labels:
        raise SpecError(f"{source}: labels: missing required key 'file'")
    return LabelSpec(**{**labels, "columns": dict(columns), "required": required})


def _mapping(doc: Any, source: str, where: str) -> dict:
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: {where}: expected a mapping, got {type(doc).__name__}")
    return dict(doc)


def _check_keys(doc: dict, cls: type, source: str, where: str, ignore: set[str] = frozenset()) -> None:
    check_keys(doc, [f.name for f in fields(cls) if f.name not in ignore], source, where)


def check_keys(doc: dict, allowed: list[str], source: str, where: str,
               error: type[Exception] = SpecError) -> None:
    """Raise ``error`` for the first key of ``doc`` not in ``allowed``, naming ``source`` (a file),
    ``where`` (the place in it) and the closest allowed key (a typo) or all of them.

    Shared by every validated YAML document (dataset specs, training configs)."""
    for key in doc:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {allowed})"
            raise error(f"{source}: {where}: unknown key '{key}'{hint}")
