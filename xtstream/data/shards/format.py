"""The on-disk format of region shards: keys, file names, one sample's files, and their checks.

A shard is a plain (uncompressed) POSIX tar that any WebDataset reader and ``tar tf`` can list.
One sample per region, its files adjacent, keyed ``{scene_key}/{row:05d}_{col:05d}``:

* ``KEY.npy``        — pixels ``(bands, R, R)`` in the store's dtype, zero-padded (``.npy`` v1, no pickle);
* ``KEY.json``       — ``format``, ``key``, ``scene_id``, ``index``, ``row``, ``col``, ``grid`` =
  ``[rows, cols]``, ``region``, ``scene_shape`` = ``[H, W]``, ``window`` = ``[y0, x0, y1, x1]``
  (may reach past the scene: padding), ``valid`` (the part inside), ``bands``, ``dtype``; with
  labels also ``objects`` (centres inside the region, region-relative), ``nearby`` (objects
  outside whose footprint reaches in) and ``labels`` = ``{radius, sigma}``;
* ``KEY.vessel.npy`` (uint8) and ``KEY.centre.npy`` (float16) — target crops ``(R, R)``, with labels.

``scene_key`` is the scene id with every character outside ``[A-Za-z0-9_-]`` percent-escaped
(``.`` → ``%2E``): WebDataset cuts a sample key at the first dot of the file name. Shards of one
scene are named ``{scene_key}-{n:05d}.tar``, hold only that scene, and list its regions in
row-major order; ``manifest.json`` beside them is written last and lists everything.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

from xtstream.errors import ShardError
from xtstream.tasks.xview3.labels import rasterise
from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample

SAMPLE_FORMAT = "xtstream-region/1"
MANIFEST_FORMAT = "xtstream-shards/1"
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^(?P<scene>[A-Za-z0-9_%-]+)-(?P<n>\d{5})\.tar$")
REQUIRED_KEYS = ("scene_id", "index", "row", "col", "grid", "region", "scene_shape", "window")
_SAFE = re.compile(r"[A-Za-z0-9_-]")


def scene_key(scene_id: str) -> str:
    """Scene id → a key/file-name part with no dots, slashes or other specials (percent-escaped)."""
    if not scene_id:
        raise ShardError("empty scene id")
    return "".join(ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in scene_id)


def unescape_key(key: str) -> str:
    """Inverse of :func:`scene_key`."""
    return re.sub(r"(%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), key)


def sample_key(scene_id: str, row: int, col: int) -> str:
    return f"{scene_key(scene_id)}/{row:05d}_{col:05d}"


def shard_name(scene_id: str, n: int) -> str:
    return f"{scene_key(scene_id)}-{n:05d}.tar"


def npy_bytes(array: np.ndarray) -> bytearray:
    """``array`` as ``.npy`` v1 file bytes (what ``np.save`` writes), with one copy of the data."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ShardError(f"refusing to store an object array ({array.dtype}): shards never pickle")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    head = header.getvalue()
    out = bytearray(len(head) + array.nbytes)
    out[:len(head)] = head
    out[len(head):] = memoryview(array.reshape(-1)).cast("B")
    return out


def npy_load(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any decode failure is a corrupt sample
        raise ShardError(f"{where}: not a valid .npy array ({err})") from None


def encode_sample(sample: RegionSample, bands: list[str], label_params: dict | None,
                  nearby: list[dict] | None = None) -> dict[str, Any]:
    """A RegionSample → ``{"__key__": KEY, ext: bytes}`` for ``webdataset.TarWriter(encoder=False)``."""
    key = sample_key(sample.scene_id, sample.row, sample.col)
    meta = {"format": SAMPLE_FORMAT, "key": key, **sample.metadata(), "bands": list(bands),
            "dtype": str(sample.pixels.dtype)}
    files: dict[str, Any] = {"__key__": key, "npy": npy_bytes(sample.pixels)}
    if label_params is not None:
        meta.update(objects=sample.objects, nearby=nearby or [], labels=label_params)
        files["vessel.npy"] = npy_bytes(sample.targets["vessel"].astype(np.uint8))
        files["centre.npy"] = npy_bytes(sample.targets["centre"].astype(np.float16))
    files["json"] = json.dumps(meta, separators=(",", ":")).encode()
    return files


def decode_sample(files: dict[str, bytes], where: str, *, region: int | None = None,
                  targets: bool = True) -> RegionSample:
    """``{ext: bytes}`` of one sample → a RegionSample, checking it is whole and consistent.

    ``where`` names the shard and key in errors; ``region`` (if given) is the region size every
    sample must have. Attribute targets (``length``, ``is_vessel``, ``is_fishing``) are drawn from
    the stored objects; ``vessel`` and ``centre`` come from the stored crops.
    """
    if "json" not in files:
        raise ShardError(f"{where}: sample has no .json (files: {sorted(files)})")
    if "npy" not in files:
        raise ShardError(f"{where}: sample has no .npy pixels (files: {sorted(files)})")
    try:
        meta = json.loads(files["json"])
    except ValueError as err:
        raise ShardError(f"{where}: .json is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != SAMPLE_FORMAT:
        raise ShardError(f"{where}: .json is not an {SAMPLE_FORMAT} record")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ShardError(f"{where}: .json lacks {missing}")
    h, w = meta["scene_shape"]
    grid = RegionGrid(int(h), int(w), int(meta["region"]))
    if region is not None and grid.region != region:
        raise ShardError(f"{where}: region size {grid.region}, expected {region} (a shard from another grid?)")
    if [grid.rows, grid.cols] != list(meta["grid"]) or grid.position(int(meta["index"])) != (meta["row"], meta["col"]):
        raise ShardError(f"{where}: inconsistent grid metadata {meta['grid']} / index {meta['index']}")
    pixels = npy_load(files["npy"], f"{where}.npy")
    if pixels.ndim != 3 or pixels.shape[1:] != (grid.region, grid.region):
        raise ShardError(f"{where}: pixels of shape {pixels.shape}, expected (bands, {grid.region}, {grid.region})")
    sample = RegionSample(str(meta["scene_id"]), int(meta["index"]), grid, pixels)
    if targets and meta.get("labels") is not None:
        sample.objects = list(meta.get("objects") or [])
        valid = grid.valid_window(sample.index)
        params = meta["labels"]
        sample.targets = rasterise(sample.objects + list(meta.get("nearby") or []), grid.region,
                                   (valid.height, valid.width), radius=int(params["radius"]),
                                   sigma=float(params["sigma"]), names=("length", "is_vessel", "is_fishing"))
        for name, dtype in (("vessel", np.uint8), ("centre", np.float32)):
            if f"{name}.npy" not in files:
                raise ShardError(f"{where}: labelled sample has no .{name}.npy")
            crop = npy_load(files[f"{name}.npy"], f"{where}.{name}.npy")
            if crop.shape != (grid.region, grid.region):
                raise ShardError(f"{where}.{name}.npy: shape {crop.shape}, expected {(grid.region, grid.region)}")
            sample.targets[name] = crop.astype(dtype)
    return sample


def split_member(name: str) -> tuple[str, str] | None:
    """``"a/b.vessel.npy"`` → ``("a/b", "vessel.npy")`` — WebDataset's rule (key ends at the first dot)."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else None


def tar_member_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar: a 512-byte header plus data in 512-byte blocks."""
    return 512 + -(-size // 512) * 512
