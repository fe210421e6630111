"""Files written past the page cache (O_DIRECT) are the bytes written, whatever their length; where
O_DIRECT is refused, the caller is told and writes the usual way; an ingest writes its tiles so by
default (its output is not read back soon: filling the page cache with it cost more than the wait)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import zarr

from xtstream._runtime import direct_io
from xtstream._runtime.direct_io import ALIGN, write_direct
from xtstream.data.ingest import ingest
from xtstream.data.sources import ArraySource
from xtstream.data.store import open_store
from xtstream.data.tile_writer import tile_writer


def _direct_or_skip(path, parts) -> None:
    if not write_direct(path, parts):
        pytest.skip(f"{path.parent}: the file system refuses O_DIRECT")


@pytest.mark.parametrize("n", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 5, 1 << 20])
def test_the_file_is_the_parts_joined_at_any_length(tmp_path, n):
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, n, dtype=np.uint8)
    # parts of several kinds, as a chunk's encoder gives them: an array, a view, bytes
    cut = n // 3
    parts = [data[:cut].view(np.uint8), memoryview(data[cut: 2 * cut].tobytes()), data[2 * cut:].tobytes()]
    _direct_or_skip(tmp_path / "f", parts)
    assert (tmp_path / "f").read_bytes() == data.tobytes()


def test_a_shorter_file_over_a_longer_one_keeps_nothing_of_it(tmp_path):
    """The thread's buffer is reused from a larger write before; the file ends where its bytes do."""
    path = tmp_path / "f"
    _direct_or_skip(path, [b"\xff" * (5 * ALIGN + 7)])
    _direct_or_skip(path, [b"ab", np.arange(3, dtype="<f4")])
    assert path.read_bytes() == b"ab" + np.arange(3, dtype="<f4").tobytes()


def test_parts_already_in_the_thread_s_buffer_are_written_in_place_or_moved(tmp_path):
    """A compressor's output in the thread's scratch buffer is not copied; a part of that buffer
    somewhere else than where the file needs it is not overwritten before it is moved."""
    from xtstream._runtime.direct_io import aligned_scratch

    buf = aligned_scratch(10)
    buf[:5] = np.frombuffer(b"HELLO", np.uint8)
    _direct_or_skip(tmp_path / "a", [buf[:5], b"!"])
    assert (tmp_path / "a").read_bytes() == b"HELLO!"
    buf = aligned_scratch(10)
    buf[:5] = np.frombuffer(b"WORLD", np.uint8)
    _direct_or_skip(tmp_path / "b", [b"abc", buf[:5]])
    assert (tmp_path / "b").read_bytes() == b"abcWORLD"


def test_where_o_direct_is_refused_the_tile_is_written_buffered(tmp_path, monkeypatch):
    """A file system without O_DIRECT (EINVAL at open, as tmpfs before Linux 6.6 answers) or a
    platform without the flag: ``write_direct`` says so and the tile writer writes the same bytes
    the usual way."""
    g = zarr.open_group(tmp_path / "s", mode="w", zarr_format=3)
    g.create_array("m", shape=(64, 64), chunks=(32, 32), dtype="f4",
                   compressors=[zarr.codecs.BloscCodec(cname="lz4", clevel=5), zarr.codecs.Crc32cCodec()])
    block = np.random.default_rng(1).standard_normal((32, 32)).astype("f4")
    tile_writer(tmp_path / "s" / "m").write((0, 0), block)
    expected = (tmp_path / "s" / "m" / "c" / "0" / "0").read_bytes()

    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_io.os, "open", refusing_open)
    assert write_direct(tmp_path / "probe", [b"x"]) is False
    writer = tile_writer(tmp_path / "s" / "m", direct=True)
    writer.write((1, 1), block)
    assert (tmp_path / "s" / "m" / "c" / "1" / "1").read_bytes() == expected

    monkeypatch.delattr(direct_io.os, "O_DIRECT", raising=False)
    assert write_direct(tmp_path / "probe", [b"x"]) is False
    writer.write((0, 1), block)
    assert (tmp_path / "s" / "m" / "c" / "0" / "1").read_bytes() == expected
    assert not list((tmp_path / "s").rglob("*.partial"))


def test_other_write_errors_are_raised_not_swallowed(tmp_path, monkeypatch):
    """A full disk is not a file system without O_DIRECT: the error reaches the caller."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    _direct_or_skip(tmp_path / "probe", [b"x"])
    monkeypatch.setattr(direct_io.os, "write", full)
    with pytest.raises(OSError) as err:
        write_direct(tmp_path / "f", [b"abc"])
    assert err.value.errno == errno.ENOSPC


@pytest.mark.parametrize("direct_io_on", [True, False])
def test_ingest_writes_its_tiles_past_the_page_cache_by_default(tmp_path, monkeypatch, direct_io_on):
    calls = []

    def spy(path, parts):
        calls.append(path)
        return write_direct(path, parts)

    monkeypatch.setattr("xtstream.data.tile_writer.write_direct", spy)
    image = np.random.default_rng(2).standard_normal((2, 100, 150)).astype("f4")
    kw = {} if direct_io_on else {"direct_io": False}
    store = ingest(ArraySource(image, scene_id="d"), tmp_path / "d.zarr", tile=64, progress=False,
                   scheduler="sync", **kw)
    np.testing.assert_array_equal(open_store(store)["image"].values, image)
    assert len(calls) == (2 * 3 if direct_io_on else 0)  # one per tile of the image (no spec: no mask)


def test_cli_turns_direct_io_off(monkeypatch, tmp_path):
    from xtstream.cli import ingest as cli_ingest

    seen = {}
    monkeypatch.setattr(cli_ingest, "ingest", lambda src, out, **kw: seen.update(kw) or out)
    monkeypatch.setattr(cli_ingest, "describe_store", lambda store: "")
    import argparse

    for argv, expected in (([], True), (["--no-direct-io"], False), (["--direct-io"], True)):
        p = argparse.ArgumentParser()
        cli_ingest.configure_parser(p)
        args = p.parse_args(["scene.tif", "--out", str(tmp_path / "o.zarr"), *argv])
        assert cli_ingest.run(args) == 0
        assert seen["direct_io"] is expected


def test_crc32c_without_the_gil_is_google_crc32c_s_and_so_is_its_fallback(monkeypatch):
    """A chunk's checksum goes through ctypes (the GIL released) where google-crc32c's library
    exports its function, through its Python extension otherwise: the same 4 bytes zarr appends."""
    import google_crc32c

    from xtstream.data import store

    data = np.random.default_rng(3).integers(0, 256, (1 << 20) + 3, dtype=np.uint8)
    expected = google_crc32c.extend(0, data.tobytes()).to_bytes(4, "little")
    parts = [data[:7], memoryview(data[7:1000].tobytes()), data[1000:]]
    assert store.crc32c(*parts) == expected
    assert store.crc32c(b"") == bytes(4)
    monkeypatch.setattr(store, "_crc32c_extend", lambda: None)
    assert store.crc32c(*parts) == expected
