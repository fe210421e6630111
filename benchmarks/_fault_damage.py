"""Damaged outputs and bad inputs: bit flips and truncations in stores, shards, manifests,
checkpoints and prediction outputs; GeoTIFFs cut, flipped, of the wrong band count, full of NaN,
inf or nodata, 1 x 1, empty or declaring a huge size; shard tars with path-traversal names or a
pickled payload; checkpoints holding pickled code; labels that make no sense.

A damaged output is read by the command that consumes it (an error naming it, or the right
result) and then repaired by rerunning the command that wrote it. Nothing here may run code from
a file: a payload that would leave a marker file behind counts as ``silent_loss`` if it does.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from _fault_cases import Workspace, judge_rerun, same_output
from _fault_runner import Case, Run, classify_error, run_command, summary

WORST = ("ok", "clear_error", "unclear_error", "silent_loss")  # from best to worst


def worst(*outcomes: tuple[str, str]) -> tuple[str, str]:
    return max(outcomes, key=lambda o: WORST.index(o[0]))


def flip_bytes(path: Path, rng: random.Random, n: int = 1, start: int = 0) -> list[int]:
    """Flip one random bit in each of ``n`` random bytes of ``path`` at offsets >= ``start``."""
    data = bytearray(path.read_bytes())
    where = [rng.randrange(min(start, len(data) - 1), len(data)) for _ in range(n)]
    for k in where:
        data[k] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return where


def cut(path: Path, rng: random.Random) -> int:
    size = path.stat().st_size
    keep = rng.randrange(0, max(1, size))
    with open(path, "r+b") as f:
        f.truncate(keep)
    return keep


def damage(path: Path, kind: str, rng: random.Random) -> str:
    if kind == "flip":
        return f"bit flipped at byte {flip_bytes(path, rng)[0]} of {path.name}"
    if kind == "truncate":
        size = path.stat().st_size
        return f"{path.name} cut to {cut(path, rng)} of {size} B"
    path.unlink()
    return f"{path.name} deleted"


def read_outcome(command: str, run: Run, got: Path, ref: Path, *named: Path) -> tuple[str, str]:
    """A consumer of damaged data: the right output, or an error naming the damaged file."""
    if run.code == 0:
        same, why = same_output(command, got, ref)
        return ("ok", "") if same else ("silent_loss", why)
    return classify_error(run, *named)


# -- damaged outputs -------------------------------------------------------------------------------

def store_damage(ws: Workspace, rng: random.Random, case_dir: Path, kind: str, target: str) -> list[Case]:
    """Damage a copy of the reference store (a tile, or the group's or array's zarr.json); shard
    it; then rerun ``xtstream ingest --verify`` on it."""
    store = Path(shutil.copytree(ws.store, case_dir / "store.zarr"))
    if target == "tile":
        victim = rng.choice(sorted(p for p in (store / "image" / "c").rglob("*") if p.is_file()))
    else:
        victim = store / ("zarr.json" if target == "group metadata" else "image/zarr.json")
    what = damage(victim, kind, rng)
    shards = case_dir / "shards"
    argv = ws.argv("shard", shards)
    argv[1] = store
    read = run_command(argv)
    r = read_outcome("shard", read, shards, ws.shards, victim, store)
    repair = run_command(ws.argv("ingest", store, "--verify"))
    f = judge_rerun("ingest", repair, store, ws.store)
    label = {"flip": "bit flip in", "truncate": "truncated", "delete": "deleted"}[kind]
    return [Case(f"{label} store {target}: read (shard)", what, *r, [summary(read)]),
            Case(f"{label} store {target}: rerun ingest --verify", what, *f, [summary(repair)])]


def shard_damage(ws: Workspace, rng: random.Random, case_dir: Path, kind: str, target: str,
                 reader: str = "predict") -> list[Case]:
    """Damage a copy of the reference shards (a tar or the manifest); read them (``predict`` or
    ``train``); then rerun ``xtstream shard`` into them."""
    shards = Path(shutil.copytree(ws.shards, case_dir / "shards"))
    victim = rng.choice(sorted(shards.glob("*.tar"))) if target == "tar" else shards / "manifest.json"
    what = damage(victim, kind, rng)
    if reader == "predict":
        out = case_dir / "pred"
        read = run_command(["predict", ws.checkpoint, shards, "--out", out, "--device", "cpu", "--threshold",
                            "0.3", "--quiet"])
        r = read_outcome("predict", read, out, ws.pred_shards, victim, shards)
    else:
        out = case_dir / "run"
        read = run_command(["train", "--config", ws.config(out, data={"shards": str(shards), "workers": 0}),
                            "--quiet"])
        r = read_outcome("train", read, out, ws.run, victim, shards)
    repair = run_command(ws.argv("shard", shards))
    f = judge_rerun("shard", repair, shards, ws.shards)
    label = {"flip": "bit flip in", "truncate": "truncated", "delete": "deleted"}[kind]
    name = "shard" if target == "tar" else "manifest"
    return [Case(f"{label} {name}: read ({reader})", what, *r, [summary(read)]),
            Case(f"{label} {name}: rerun shard", what, *f, [summary(repair)])]


def checkpoint_damage(ws: Workspace, rng: random.Random, case_dir: Path, kind: str) -> list[Case]:
    """Damage a copy of the trained model; predict with it."""
    ck = Path(shutil.copy(ws.checkpoint, case_dir / "model.pt"))
    what = damage(ck, kind, rng)
    out = case_dir / "pred"
    argv = ws.argv("predict", out)
    argv[1] = ck
    run = run_command(argv)
    r = read_outcome("predict", run, out, ws.pred, ck)
    label = {"flip": "bit flip in", "truncate": "truncated"}[kind]
    return [Case(f"{label} model checkpoint: predict", what, *r, [summary(run)])]


def resume_damage(ws: Workspace, rng: random.Random, case_dir: Path, kind: str) -> list[Case]:
    """Kill a training run once it has a resumable checkpoint, damage that checkpoint, resume."""
    out = case_dir / "run"
    last = out / "checkpoints" / "last.pt"

    def watch(pid: int, elapsed: float) -> None:
        import os
        import signal

        if last.is_file() and (out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().count('"step"') >= 4:
            os.killpg(pid, signal.SIGKILL)

    first = run_command(ws.argv("train", out), watch=watch)
    if not last.is_file():
        return [Case("damaged training checkpoint: resume", "the run ended before a checkpoint", "ok",
                     "not tried", [summary(first)])]
    what = damage(last, kind, rng)
    again = run_command(ws.argv("train", out))
    r = judge_rerun("train", again, out, ws.run) if again.code == 0 else classify_error(again, last, out)
    label = {"flip": "bit flip in", "truncate": "truncated"}[kind]
    return [Case(f"{label} training checkpoint: resume", what, *r, [summary(first), summary(again)])]


def prediction_damage(ws: Workspace, rng: random.Random, case_dir: Path, kind: str) -> list[Case]:
    """Damage a finished scene's CSV in a copy of the reference predictions; rerun predict."""
    pred = Path(shutil.copytree(ws.pred, case_dir / "pred"))
    victim = next((pred / "scenes").glob("*.csv"))
    what = damage(victim, kind, rng)
    run = run_command(ws.argv("predict", pred))
    r = judge_rerun("predict", run, pred, ws.pred)
    label = {"flip": "bit flip in", "truncate": "truncated", "delete": "deleted"}[kind]
    return [Case(f"{label} a finished scene's predictions: rerun predict", what, *r, [summary(run)])]


# -- bad inputs ------------------------------------------------------------------------------------

def _geotiff(path: Path, data: np.ndarray, **profile: Any) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    bands, h, w = data.shape
    kw = dict(driver="GTiff", height=h, width=w, count=bands, dtype=str(data.dtype), crs="EPSG:32631",
              transform=from_origin(500000, 6000000, 10, 10))
    if h >= 16 and w >= 16:
        kw.update(tiled=True, blockxsize=16 * max(1, min(h, w) // 64), blockysize=16 * max(1, min(h, w) // 64))
    kw.update(profile)
    with rasterio.open(path, "w", **kw) as ds:
        ds.write(data)
    return path


def _store_matches_file(store: Path, tif: Path) -> tuple[bool, str]:
    """Does a store ingested without a spec hold exactly what rasterio reads from ``tif``?"""
    import rasterio

    from xtstream.data.store import open_store

    try:
        with rasterio.open(tif) as ds:
            want = ds.read()
    except Exception as err:  # noqa: BLE001
        return False, f"ingest succeeded, but rasterio cannot read {tif.name} whole ({err})"
    got = open_store(store)["image"].values
    if got.shape != want.shape or not np.array_equal(got, want.astype(got.dtype), equal_nan=True):
        return False, f"{store}: pixels differ from what {tif.name} holds"
    return True, ""


def _ingest_file(tif: Path, case_dir: Path, *extra: str) -> tuple[Run, Path]:
    out = case_dir / "in.zarr"
    return run_command(["ingest", tif, "--out", out, "--tile", 64, "--allow-small", "--quiet", *extra]), out


def bad_geotiff(ws: Workspace, rng: random.Random, case_dir: Path, kind: str) -> list[Case]:
    """An ingest of a damaged or degenerate GeoTIFF: a clear error naming it, or a store holding
    exactly its pixels."""
    src = ws.scene / "VV_dB.tif"
    tif = case_dir / f"{kind.replace(' ', '_')}.tif"
    if kind == "truncated":
        shutil.copy(src, tif)
        what = f"cut to {cut(tif, rng)} of {src.stat().st_size} B"
    elif kind == "bit-flipped":
        shutil.copy(src, tif)
        what = f"{rng.randint(1, 8)} byte(s) flipped"
        flip_bytes(tif, rng, n=int(what.split()[0]))
    elif kind == "NaN and inf":
        data = rng.random() * np.ones((1, 70, 90), "f4")
        data[0, 5:20, 5:30], data[0, 40:50, 60:80], data[0, 60:, :10] = np.nan, np.inf, -np.inf
        _geotiff(tif, data)
        what = "float32 with NaN, +inf and -inf patches"
    elif kind == "all nodata":
        _geotiff(tif, np.full((2, 50, 300), 7, "u2"), nodata=7)
        what = "2-band uint16, every pixel nodata"
    elif kind == "1x1":
        _geotiff(tif, np.asarray([[[3.5]], [[1.0]], [[-2.0]]], "f4"))
        what = "3 bands of 1 x 1 px"
    elif kind == "huge declared size":
        _geotiff(tif, np.zeros((1, 64, 64), "f4"), tiled=True, blockxsize=64, blockysize=64, compress="deflate")
        raw = bytearray(tif.read_bytes())
        # rewrite ImageWidth/ImageLength (tags 256/257, SHORT or LONG) to 200,000: a tiny file claiming 40 Gpx
        _patch_size(raw, 200_000)
        tif.write_bytes(bytes(raw))
        what = "a 64 x 64 file whose header says 200,000 x 200,000"
    else:
        raise ValueError(kind)
    run, out = _ingest_file(tif, case_dir)
    if run.code == 0:
        same, why = _store_matches_file(out, tif)
        r = ("ok", "") if same else ("silent_loss", why)
        if same and kind == "1x1":  # and the rest of the pipeline takes it
            r = _one_pixel_downstream(ws, out, case_dir)
    else:
        r = classify_error(run, tif)
    return [Case(f"bad input: {kind} GeoTIFF", what, *r, [summary(run)])]


def _patch_size(raw: bytearray, size: int) -> None:
    """Set the width and height tags of a little-endian classic TIFF's first IFD to ``size``."""
    assert raw[:2] == b"II"
    ifd = int.from_bytes(raw[4:8], "little")
    for i in range(int.from_bytes(raw[ifd:ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        tag, kind = (int.from_bytes(raw[entry + k:entry + k + 2], "little") for k in (0, 2))
        if tag in (256, 257):
            if kind == 3:  # SHORT cannot hold 200,000: make it LONG
                raw[entry + 2:entry + 4] = (4).to_bytes(2, "little")
            raw[entry + 8:entry + 12] = size.to_bytes(4, "little")


def _one_pixel_downstream(ws: Workspace, store: Path, case_dir: Path) -> tuple[str, str]:
    shards, pred = case_dir / "shards", case_dir / "pred"
    for run in (run_command(["shard", store, "--out", shards, "--region", 64, "--quiet"]),
                run_command(["predict", ws.checkpoint, store, "--out", pred, "--device", "cpu", "--quiet"])):
        if run.code != 0:
            return classify_error(run, store, shards, pred)
    manifest = json.loads((shards / "manifest.json").read_text())
    if manifest["totals"]["regions"] != 1 or not (pred / "detections.csv").is_file():
        return "silent_loss", "a 1 x 1 scene did not give one region and a detections CSV"
    return "ok", ""


def wrong_band_count(ws: Workspace, rng: random.Random, case_dir: Path) -> list[Case]:
    """A scene directory whose VH file has two bands; a 2-band store given to a 3-band model."""
    scene = Path(shutil.copytree(ws.scene, case_dir / "scene"))
    import rasterio

    with rasterio.open(scene / "VH_dB.tif") as ds:
        data, profile = ds.read(), ds.profile
    profile.update(count=2)
    with rasterio.open(scene / "VH_dB.tif", "w", **profile) as ds:
        ds.write(np.concatenate([data, data]))
    out = case_dir / "s.zarr"
    run = run_command(["ingest", scene, "--out", out, "--spec", "xview3", "--tile", 64, "--allow-small", "--quiet"])
    a = classify_error(run, scene / "VH_dB.tif", scene) if run.code else ("silent_loss", "a 2-band VH file was ingested")
    two = case_dir / "two.zarr"
    run2 = run_command(["ingest", scene, "--out", two, "--spec", "xview3", "--bands", "VV", "--tile", 64,
                        "--allow-small", "--quiet"])
    pred = run_command(["predict", ws.checkpoint, two, "--out", case_dir / "p", "--device", "cpu", "--quiet"])
    b = classify_error(pred, two) if pred.code else ("silent_loss", "a 3-band model predicted a 1-band scene")
    return [Case("bad input: wrong band count (ingest)", "VH_dB.tif with 2 bands", *a, [summary(run)]),
            Case("bad input: wrong band count (predict)", "1-band store, 3-band model", *b,
                 [summary(run2), summary(pred)])]


def empty_scene(ws: Workspace, rng: random.Random, case_dir: Path) -> list[Case]:
    """A 0-size scene: asked of synth, and given to ingest as an array through the Python API."""
    run = run_command(["synth", case_dir / "s", "--height", 0, "--width", 32, "--quiet"])
    a = classify_error(run) if run.code else ("silent_loss", "synth wrote a 0-size scene")
    from xtstream.data.ingest import ingest
    from xtstream.data.sources import ArraySource
    from xtstream.errors import XTStreamError

    try:
        ingest(ArraySource(np.zeros((1, 0, 8), "f4"), scene_id="empty"), case_dir / "e.zarr", progress=False)
        b = ("silent_loss", "a 0 x 8 array was ingested")
    except XTStreamError as err:
        b = ("clear_error", str(err)[:300]) if "empty" in str(err) else ("unclear_error", str(err)[:300])
    except Exception as err:  # noqa: BLE001
        b = ("unclear_error", f"{type(err).__name__}: {err}"[:300])
    return [Case("bad input: 0-size scene (synth)", "--height 0", *a, [summary(run)]),
            Case("bad input: 0-size scene (ingest API)", "ArraySource (1, 0, 8)", *b)]


def bad_labels(ws: Workspace, rng: random.Random, case_dir: Path) -> list[Case]:
    """A labels CSV row with an impossible value: shard with it."""
    lines = ws.labels.read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    column = rng.choice(["detect_scene_row", "detect_scene_column", "is_vessel", "vessel_length_m"])
    value = rng.choice(["nan", "-5", "1e12", "abc", "", "inf"])
    row[header.index(column)] = value
    labels = case_dir / "labels.csv"
    labels.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    out = case_dir / "shards"
    argv = ws.argv("shard", out)
    argv[argv.index("--labels") + 1] = labels
    run = run_command(argv)
    if run.code == 0:
        r = ("ok", f"{column}={value!r} accepted (an optional or in-range value)")
        if column in ("detect_scene_row", "detect_scene_column") and value not in ("",):
            r = ("silent_loss", f"{column}={value!r} accepted")
    else:
        r = classify_error(run, labels)
    return [Case("bad input: impossible labels CSV value", f"{column}={value!r}", *r, [summary(run)])]


# -- payloads that must never run or escape ----------------------------------------------------------

class _Marker:
    """Unpickling this runs code: it writes a marker file (``exec``)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pickled code ran')",)


def _replace_shard(shards: Path, name: str, members: list[tuple[str, bytes]]) -> Path:
    """Write ``name`` with these members and make the manifest agree with its size and hash (and
    its own checksum): only the readers' rules on names and pickles stand in the way."""
    import hashlib

    from xtstream.data.shards.format import manifest_text

    path = shards / name
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    doc = json.loads((shards / "manifest.json").read_text())
    for entry in doc["shards"]:
        if entry["name"] == name:
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    doc.pop("crc32c", None)
    (shards / "manifest.json").write_text(manifest_text(doc))
    return path


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def hostile_shard(ws: Workspace, rng: random.Random, case_dir: Path, kind: str) -> list[Case]:
    """A shard whose sample names climb out of the directory, or whose pixels are a pickle that
    would run code (checksums made to match, so only those rules stop it): read it with predict."""
    from xtstream.data.shards.format import _json_with_sums

    root = case_dir / "inside"
    shards = Path(shutil.copytree(ws.shards, root / "shards"))
    name = sorted(p.name for p in shards.glob("*.tar"))[0]
    members = _members(shards / name)
    marker = case_dir / "marker"
    if kind == "path traversal":
        escape = rng.choice(["../../escaped", "/tmp/xtstream-escaped", "../escaped"])
        members = [(m.replace(m.split("/")[0], escape, 1), d) if i < 3 else (m, d)
                   for i, (m, d) in enumerate(members)]
        what = f"first sample's members renamed under {escape!r}"
    else:
        key = members[0][0].rsplit(".", 1)[0].split(".")[0]
        files = {m[len(key) + 1:]: d for m, d in members if m.startswith(key + ".")}
        buf = io.BytesIO()
        np.save(buf, np.array([_Marker(marker)], dtype=object), allow_pickle=True)
        files["npy"] = buf.getvalue()
        meta = json.loads(files["json"])
        meta.pop("crc32c", None)
        body = json.dumps(meta, separators=(",", ":")).encode()
        files["json"] = _json_with_sums(body, {k: v for k, v in files.items() if k != "json"})
        members = [(f"{key}.{ext}", files[ext]) for ext in sorted(files)] + \
                  [(m, d) for m, d in members if not m.startswith(key + ".")]
        what = "first sample's .npy replaced by a pickled object array, checksums recomputed"
    _replace_shard(shards, name, members)
    out = case_dir / "pred"
    run = run_command(["predict", ws.checkpoint, shards, "--out", out, "--device", "cpu", "--quiet"])
    escaped = [p for p in (case_dir.rglob("*escaped*")) if root not in p.parents] + \
        [p for p in Path("/tmp").glob("xtstream-escaped*")]
    if marker.exists():
        r = ("silent_loss", "the pickled payload ran")
    elif escaped:
        r = ("silent_loss", f"wrote outside the shard directory: {escaped}")
    elif run.code == 0:
        r = ("silent_loss", "a hostile shard was read without complaint")
    else:
        r = classify_error(run, shards / name, shards)
    return [Case(f"hostile shard: {kind}", what, *r, [summary(run)])]


def pickled_checkpoint(ws: Workspace, rng: random.Random, case_dir: Path) -> list[Case]:
    """A checkpoint whose payload is pickled code: predict must refuse it without running it."""
    import torch

    marker = case_dir / "marker"
    payload = torch.load(ws.checkpoint, weights_only=True)
    payload[rng.choice(["extra", "config"])] = _Marker(marker)
    ck = case_dir / "evil.pt"
    torch.save(payload, ck)
    out = case_dir / "pred"
    argv = ws.argv("predict", out)
    argv[1] = ck
    run = run_command(argv)
    if marker.exists():
        r = ("silent_loss", "the checkpoint's pickled code ran")
    elif run.code == 0:
        r = ("silent_loss", "a checkpoint holding pickled code was loaded")
    else:
        r = classify_error(run, ck)
    return [Case("checkpoint holding pickled code: predict", "a payload entry pickles exec(...)", *r, [summary(run)])]
