"""Scene stores under damage: a missing, bit-flipped or truncated tile is an error naming the store,
the variable and the tile — never fill values, wrong pixels or a crashed interpreter — and a rerun
of the ingest repairs what it can."""

import subprocess
import sys

import numpy as np
import pytest

from xtstream.data.grid import Window
from xtstream.data.ingest import ingest
from xtstream.data.shards import shard_stores
from xtstream.data.sources import ArraySource
from xtstream.data.store import open_store
from xtstream.data.streams import stream_scenes
from xtstream.data.windows import ZarrWindows
from xtstream.errors import StoreError

TILE = "image/c/0/1/1"  # band block 0, tile row 1, tile column 1


def _image(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 100, 150)).astype("f4")


def _store(tmp_path, name="s", codec="blosc-zstd", **kw):
    return ingest(ArraySource(_image(), scene_id=name), tmp_path / f"{name}.zarr", tile=64, codec=codec,
                  progress=False, **kw)


def _read_all(store):
    """Every path that reads a store's pixels, in turn (each must raise)."""
    yield lambda: open_store(store)["image"].values
    yield lambda: ZarrWindows(store).read_window(Window(0, 0, 100, 150))
    yield lambda: [c for c in stream_scenes([store], region=16)]


def test_missing_tile_is_named_on_every_read_path_and_ingest_rerun_repairs_it(tmp_path):
    store = _store(tmp_path)
    (store / TILE).unlink()
    for read in _read_all(store):
        with pytest.raises(StoreError, match=r"s\.zarr.*'image'.*c/0/1/1.*missing"):
            read()
    with pytest.raises(StoreError, match=r"c/0/1/1"):
        shard_stores([store], tmp_path / "shards", region=16, progress=False)
    assert not (tmp_path / "shards" / "manifest.json").exists()
    # the rerun finds the hole and writes that tile again, only that one
    others = {p: p.stat().st_mtime_ns for p in (store / "image" / "c").rglob("*") if p.is_file()}
    with pytest.warns(UserWarning, match=r"1 tile\(s\) missing or damaged \(image/c/0/1/1\)"):
        again = ingest(ArraySource(_image(), scene_id="s"), store, tile=64, progress=False)
    assert (store / TILE).is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == others
    assert np.array_equal(open_store(again)["image"].values, _image())


def test_ingest_rerun_with_verify_rewrites_a_corrupt_tile(tmp_path):
    store = _store(tmp_path)
    path = store / TILE
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    ingest(ArraySource(_image(), scene_id="s"), store, tile=64, progress=False)  # a listing alone: unseen
    with pytest.raises(StoreError, match="checksum"):
        open_store(store)["image"].values
    with pytest.warns(UserWarning, match=r"c/0/1/1"):
        ingest(ArraySource(_image(), scene_id="s"), store, tile=64, progress=False, verify=True)
    assert np.array_equal(open_store(store)["image"].values, _image())


def test_tile_deleted_after_opening_is_named_not_filled(tmp_path):
    store = _store(tmp_path)
    reader = ZarrWindows(store)
    lazy = open_store(store)["image"]
    (store / TILE).unlink()
    with pytest.raises(StoreError, match=r"'image'.*c/0/1/1.*missing"):
        reader.read_window(Window(64, 64, 100, 128))
    with pytest.raises(StoreError, match=r"c/0/1/1"):
        lazy.values


def test_all_fill_tile_is_written_so_absence_means_loss(tmp_path):
    data = _image()
    data[:, :64, :64] = np.nan  # one whole tile equals the array's fill value (NaN)
    store = ingest(ArraySource(data, scene_id="f"), tmp_path / "f.zarr", tile=64, progress=False)
    assert (store / "image/c/0/0/0").is_file()
    got = open_store(store)["image"].values
    assert np.isnan(got[:, :64, :64]).all() and np.array_equal(got[:, 64:], data[:, 64:])


@pytest.mark.parametrize("codec", ["blosc-zstd", "zstd", "none"])
def test_flipped_byte_in_a_tile_is_named(tmp_path, codec):
    store = _store(tmp_path, codec=codec)
    path = store / TILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    for read in _read_all(store):
        with pytest.raises(StoreError, match=r"s\.zarr.*'image'.*c/0/1/1.*checksum"):
            read()
    # a read that does not touch the damaged tile still works
    assert np.array_equal(ZarrWindows(store).read_window(Window(0, 0, 64, 64)), _image()[:, :64, :64])


def test_plain_zarr_readers_see_the_checksum_codec(tmp_path):
    import zarr

    store = _store(tmp_path)
    codecs = [type(c).__name__ for c in zarr.open_array(store, path="image", mode="r").metadata.codecs]
    assert codecs[-1] == "Crc32cCodec"


def test_stores_without_checksums_still_open(tmp_path, monkeypatch):
    import xtstream.data.ingest as ing

    real = ing.make_codec
    monkeypatch.setattr(ing, "make_codec", lambda codec="blosc-zstd", level=1, **kw: real(codec, level, checksum=False))
    store = _store(tmp_path, name="old")
    monkeypatch.undo()
    assert np.array_equal(open_store(store)["image"].values, _image())
    assert np.array_equal(ZarrWindows(store).read_window(Window(0, 0, 100, 150)), _image())


_CRASH = """
import sys
from xtstream.data.store import open_store
from xtstream.data.windows import ZarrWindows
from xtstream.data.grid import Window
try:
    if sys.argv[2] == "open":
        open_store(sys.argv[1])["image"].values
    else:
        ZarrWindows(sys.argv[1]).read_window(Window(0, 0, 100, 150))
except Exception as err:
    print(type(err).__name__, err)
    sys.exit(3)
"""


@pytest.mark.parametrize("cut", ["half", "last byte"])
@pytest.mark.parametrize("checksum", [True, False])
def test_truncated_tile_is_an_error_not_a_crash(tmp_path, monkeypatch, checksum, cut):
    import xtstream.data.ingest as ing

    if not checksum:  # a store from before checksums: the blosc header is checked instead
        real = ing.make_codec
        monkeypatch.setattr(ing, "make_codec",
                            lambda codec="blosc-zstd", level=1, **kw: real(codec, level, checksum=False))
    store = _store(tmp_path)
    monkeypatch.undo()
    path = store / TILE
    size = path.stat().st_size
    # one byte short decoded silently to wrong pixels; shorter ones crashed blosc's decoder
    path.write_bytes(path.read_bytes()[: size // 2 if cut == "half" else size - 1])
    for how in ("open", "windows"):
        proc = subprocess.run([sys.executable, "-c", _CRASH, str(store), how], capture_output=True, text=True)
        assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])  # -11 was a segfault
        assert "StoreError" in proc.stdout and "c/0/1/1" in proc.stdout, proc.stdout
