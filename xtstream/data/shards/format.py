"""The on-disk format of region shards: keys, file names, one sample's files, and their checks.

A shard is a plain (uncompressed) POSIX tar that any WebDataset reader and ``tar tf`` can list.
One sample per region, its files adjacent, keyed ``{scene_key}/{row:05d}_{col:05d}``:

* ``KEY.npy``        — pixels ``(bands, R, R)`` in the store's dtype, zero-padded (``.npy`` v1, no pickle);
* ``KEY.json``       — ``format``, ``key``, ``scene_id``, ``index``, ``row``, ``col``, ``grid`` =
  ``[rows, cols]``, ``region``, ``scene_shape`` = ``[H, W]``, ``window`` = ``[y0, x0, y1, x1]``
  (may reach past the scene: padding), ``valid`` (the part inside), ``bands``, ``dtype``; with
  labels also ``task`` (the :mod:`xtstream.tasks` name), ``objects`` (labelled objects inside the
  region, region-relative) and ``labels`` (whatever else the task keeps, e.g. xView3's ``nearby``
  objects and ``radius``/``sigma``);
* ``KEY.<name>.npy`` — one per target the task stores: an ``(R, R)`` map or a ``()`` scalar, in
  the dtype the task chose (xView3: ``vessel`` uint8, ``centre`` float16; classification: ``label``
  int64). Reading gives back every such member, then lets the task rebuild what it did not store.

Checksums (format ``/3``): the JSON ends with ``"crc32c": {EXT: HEX, ..., "json": HEX}``, the
crc32c (8 hex digits) of every other member of the sample and of the JSON text itself without that
field (the bytes before ``,"crc32c":``, then ``}``). Readers check them all before decoding
anything (:func:`check_sample`), so a flipped byte is refused before the sample is handed on, at
~10 GB/s. Samples of formats ``xtstream-region/2`` (no checksums) and ``/1`` (xView3 labels
implied, ``nearby`` at the top level) are still read.

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

from xtstream.errors import ShardError, TaskError
from xtstream.data.grid import RegionGrid
from xtstream.data.sample import RegionSample

SAMPLE_FORMAT = "xtstream-region/3"
#: earlier sample formats still read: /2 had no checksums, /1 stored xView3 targets only, without a task name
OLD_FORMATS = ("xtstream-region/2", "xtstream-region/1")
CHECKSUMS = "crc32c"
_SUMS_MARK = b',"crc32c":{'
MANIFEST_FORMAT = "xtstream-shards/1"
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^(?P<scene>[A-Za-z0-9_%-]+)-(?P<n>\d{5})\.tar$")
REQUIRED_KEYS = ("scene_id", "index", "row", "col", "grid", "region", "scene_shape", "window")
_SAFE = re.compile(r"[A-Za-z0-9_-]")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # no dots: WebDataset keys end at the first one


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
    array = np.asarray(array, order="C")  # not ascontiguousarray: it turns a () scalar into (1,)
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


def encode_sample(sample: RegionSample, bands: list[str], task: str | None = None,
                  labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """A RegionSample → ``{"__key__": KEY, ext: bytes}`` for ``webdataset.TarWriter(encoder=False)``.

    Every target of the sample becomes ``KEY.<name>.npy`` in its own dtype (the task packed it:
    :meth:`xtstream.tasks.Task.pack_targets`); ``task`` and ``labels`` (the task's extra record)
    go into the JSON with the sample's objects.
    """
    key = sample_key(sample.scene_id, sample.row, sample.col)
    meta = {"format": SAMPLE_FORMAT, "key": key, **sample.metadata(), "bands": list(bands),
            "dtype": str(sample.pixels.dtype)}
    files: dict[str, Any] = {"__key__": key, "npy": npy_bytes(sample.pixels)}
    if task is not None:
        meta.update(task=task, objects=sample.objects, labels=labels or {})
    for name, target in sample.targets.items():
        if not TARGET_NAME.match(name):
            raise ShardError(f"target name {name!r}: shards take names of letters, digits, '_' and '-'")
        files[f"{name}.npy"] = npy_bytes(np.asarray(target))
    files["json"] = _json_with_sums(json.dumps(meta, separators=(",", ":")).encode(), files)
    return files


def _json_with_sums(body: bytes, files: dict[str, Any]) -> bytes:
    """The sample's JSON ``body`` with the crc32c of every member and of ``body`` itself appended
    as its last field (see the module docstring)."""
    sums = {ext: crc_hex(data) for ext, data in files.items() if not ext.startswith("_") and ext != "json"}
    sums["json"] = crc_hex(body)
    return body[:-1] + _SUMS_MARK[:-1] + json.dumps(sums, separators=(",", ":"), sort_keys=True).encode() + b"}"


def crc_hex(data: Any) -> str:
    """crc32c of ``data`` as 8 hex digits (the hardware instruction where there is one)."""
    import google_crc32c

    # a uint8 view, not a copy: the C extension takes arrays but refuses memoryviews
    return f"{google_crc32c.value(np.frombuffer(data, np.uint8)):08x}"


def check_sample(files: dict[str, bytes], meta: dict[str, Any], where: str) -> None:
    """Raise :class:`ShardError` unless every member of a ``/3`` sample matches its checksum and
    the checksums list exactly the members there are; samples of older formats pass unchecked."""
    if meta.get("format") != SAMPLE_FORMAT:
        return
    sums = meta.get(CHECKSUMS)
    raw = files["json"]
    cut = raw.rfind(_SUMS_MARK)
    if not isinstance(sums, dict) or cut < 0:
        raise ShardError(f"{where}: .json of a {SAMPLE_FORMAT} sample has no {CHECKSUMS} checksums (damaged)")
    if crc_hex(raw[:cut] + b"}") != sums.get("json"):
        raise ShardError(f"{where}: .json fails its crc32c checksum (a damaged byte: the sample is corrupt)")
    listed = set(sums) - {"json"}
    present = {ext for ext in files if ext != "json" and not ext.startswith("_")}  # not __key__, __url__
    if listed != present:
        raise ShardError(f"{where}: members {sorted(present)}, but its checksums list {sorted(listed)} "
                         "(a member lost or added)")
    for ext in sorted(present):
        if crc_hex(files[ext]) != sums[ext]:
            raise ShardError(f"{where}.{ext}: fails its crc32c checksum (a damaged byte: the sample is corrupt)")


def decode_sample(files: dict[str, bytes], where: str, *, region: int | None = None,
                  targets: bool = True) -> RegionSample:
    """``{ext: bytes}`` of one sample → a RegionSample, checking it is whole and consistent.

    Checksums (format ``/3``) are checked first, over every member, before anything is decoded.

    ``where`` names the shard and key in errors; ``region`` (if given) is the region size every
    sample must have. Targets: every ``.<name>.npy`` member (an ``(R, R)`` map or a scalar), then
    the sample's task (:meth:`xtstream.tasks.Task.unpack_targets`) rebuilds any it drew from its
    objects instead of storing — the task's module is imported only for labelled samples.
    """
    if "json" not in files:
        raise ShardError(f"{where}: sample has no .json (files: {sorted(files)})")
    if "npy" not in files:
        raise ShardError(f"{where}: sample has no .npy pixels (files: {sorted(files)})")
    try:
        meta = json.loads(files["json"])
    except ValueError as err:
        raise ShardError(f"{where}: .json is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or (meta.get("format") != SAMPLE_FORMAT and meta.get("format") not in OLD_FORMATS):
        raise ShardError(f"{where}: .json is not an {SAMPLE_FORMAT} record")
    check_sample(files, meta, where)
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
    if targets:
        stored = {}
        for ext in sorted(files):
            if ext.endswith(".npy") and ext != "npy":
                name = ext[:-len(".npy")]
                stored[name] = npy_load(files[ext], f"{where}.{ext}")
                if stored[name].shape not in ((grid.region, grid.region), ()):
                    raise ShardError(f"{where}.{ext}: shape {stored[name].shape}, expected "
                                     f"{(grid.region, grid.region)} or a scalar")
        sample.targets = stored
        task, extra = _task_record(meta)
        if task is not None:
            sample.objects = list(meta.get("objects") or [])
            sample.targets = _unpack(task, stored, sample, extra, where)
    return sample


def _task_record(meta: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(task name, its extra record)`` of a sample's JSON; ``(None, {})`` when unlabelled."""
    if meta.get("task") is not None:
        return str(meta["task"]), dict(meta.get("labels") or {})
    if meta.get("labels") is not None:  # format /1: xView3 labels, ``nearby`` beside them
        return "xview3", {**meta["labels"], "nearby": list(meta.get("nearby") or [])}
    return None, {}


def _unpack(name: str, stored: dict[str, np.ndarray], sample: RegionSample, extra: dict[str, Any],
            where: str) -> dict[str, np.ndarray]:
    from xtstream.tasks.base import get_task  # the task's module, only for labelled samples

    try:
        task = get_task(name)
    except TaskError as err:
        raise ShardError(f"{where}: written for task {name!r}: {err}") from None
    try:
        return task.unpack_targets(stored, sample.objects, extra, sample.grid, sample.index)
    except (KeyError, ValueError, TypeError) as err:
        raise ShardError(f"{where}: task {name!r} cannot read the sample's targets: {err}") from None


def split_member(name: str) -> tuple[str, str] | None:
    """``"a/b.vessel.npy"`` → ``("a/b", "vessel.npy")`` — WebDataset's rule (key ends at the first dot)."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else None


def tar_member_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar: a 512-byte header plus data in 512-byte blocks."""
    return 512 + -(-size // 512) * 512


#: what a manifest entry must hold, and of which type (more keys are allowed)
MANIFEST_SHARD_KEYS: dict[str, type | tuple[type, ...]] = {"name": str, "start": int, "stop": int, "bytes": int}
MANIFEST_SCENE_KEYS: dict[str, type | tuple[type, ...]] = {"scene_id": str, "scene_shape": list, "region": int,
                                                           "shards": list}


def manifest_text(doc: dict[str, Any]) -> str:
    """``doc`` as the text of a ``manifest.json``, its last field the crc32c of the text before it
    (``"crc32c"``): a flipped byte anywhere — a scene id, a georeference — is detected on read."""
    body = {k: v for k, v in doc.items() if k != CHECKSUMS}
    return json.dumps({**body, CHECKSUMS: crc_hex(json.dumps(body, indent=1).encode())}, indent=1)


def read_manifest(path: Any) -> dict[str, Any]:
    """The ``manifest.json`` at ``path``, checked before anyone indexes into it: its crc32c
    (:func:`manifest_text`; manifests from before it have none), its format, every key readers use
    (:data:`MANIFEST_SHARD_KEYS`, :data:`MANIFEST_SCENE_KEYS`) with its type, shard names that are
    plain ``{scene_key}-NNNNN.tar`` file names (never a path out of the directory), each scene's
    shards listed. Raises :class:`ShardError` naming the manifest and the entry."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: cannot read shard manifest ({err}); was the shard run finished?") from None
    if isinstance(doc, dict) and CHECKSUMS in doc:
        stored = doc.pop(CHECKSUMS)
        if stored != crc_hex(json.dumps(doc, indent=1).encode()):
            raise ShardError(f"{path}: fails its crc32c checksum (a damaged byte); rerun `xtstream shard` "
                             "with the same arguments to write it again")
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: not an {MANIFEST_FORMAT} manifest")
    for key in ("shards", "scenes"):
        if not isinstance(doc.get(key), list):
            raise ShardError(f"{path}: manifest {'has no' if key not in doc else 'has a bad'} key '{key}' "
                             "(a list); rerun `xtstream shard` to write it again")
    names = set()
    for i, entry in enumerate(doc["shards"]):
        _check_entry(path, f"shards[{i}]", entry, MANIFEST_SHARD_KEYS)
        if not SHARD_RE.match(entry["name"]):
            raise ShardError(f"{path}: shards[{i}] name {entry['name']!r} is not a shard name "
                             "({scene_key}-NNNNN.tar in the manifest's directory)")
        if not 0 <= entry["start"] <= entry["stop"] or entry["bytes"] < 0:
            raise ShardError(f"{path}: shards[{i}] has an impossible range or size {entry}")
        names.add(entry["name"])
    for i, entry in enumerate(doc["scenes"]):
        _check_entry(path, f"scenes[{i}]", entry, MANIFEST_SCENE_KEYS)
        shape = entry["scene_shape"]
        if len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            raise ShardError(f"{path}: scenes[{i}] 'scene_shape' is not [height, width] in pixels: {shape!r}")
        if entry["region"] < 1:
            raise ShardError(f"{path}: scenes[{i}] 'region' must be positive, got {entry['region']}")
        unknown = [n for n in entry["shards"] if n not in names]
        if unknown:
            raise ShardError(f"{path}: scenes[{i}] lists shard {unknown[0]!r}, which 'shards' does not")
    return doc


def _check_entry(path: Any, where: str, entry: Any, keys: dict[str, type | tuple[type, ...]]) -> None:
    if not isinstance(entry, dict):
        raise ShardError(f"{path}: {where} is not a mapping")
    for key, kind in keys.items():
        if key not in entry:
            raise ShardError(f"{path}: {where} has no key '{key}'; rerun `xtstream shard` to write it again")
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ShardError(f"{path}: {where} key '{key}' is {value!r}, not a {getattr(kind, '__name__', kind)}")
