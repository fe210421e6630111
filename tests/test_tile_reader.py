"""Windows read from chunk files directly equal zarr's reads; damaged tiles are named, not decoded."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from xtstream.data.tile_reader import tile_reader
from xtstream.errors import StoreError

CODECS = {
    "none": None,
    "zstd+crc32c": [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()],
    "blosc+crc32c": [zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), zarr.codecs.Crc32cCodec()],
    "blosc-big-endian": [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
}
SHAPE, CHUNKS = (3, 100, 70), (3, 32, 32)


def _store(path, name, dtype="f4"):
    rng = np.random.default_rng(1)
    serializer = zarr.codecs.BytesCodec(endian="big" if "big" in name else "little")
    arr = zarr.open_group(path, mode="w", zarr_format=3).create_array(
        "image", shape=SHAPE, chunks=CHUNKS, dtype=dtype, compressors=CODECS[name], serializer=serializer,
        fill_value=np.nan if dtype == "f4" else 0)
    arr[:] = (rng.standard_normal(SHAPE) * 100).astype(dtype)
    arr[:, 96:, 64:] = arr.fill_value  # a tile of fill values, still written
    return arr


def _reader(path):
    def fetch(key):
        try:
            return (path / "image" / key).read_bytes()
        except FileNotFoundError:
            return None
    return tile_reader(path / "image", fetch, f"{path}: variable 'image'")


@pytest.fixture(scope="module", params=[(n, d) for n in CODECS for d in ("f4", "u2")], ids=lambda p: f"{p[0]}-{p[1]}")
def stores(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "s.zarr"
    return _store(path, *request.param), _reader(path)


@settings(max_examples=40, deadline=None)
@given(y=st.integers(0, 99), x=st.integers(0, 69), h=st.integers(1, 100), w=st.integers(1, 70),
       b=st.integers(1, 3))
def test_any_window_equals_zarr_s_read(stores, y, x, h, w, b):
    """Windows straddling chunk seams and the ragged edge chunks read as zarr reads them."""
    arr, reader = stores
    y1, x1 = min(y + h, SHAPE[1]), min(x + w, SHAPE[2])
    got = reader.read((0, y, x), (b, y1, x1))
    want = arr[:b, y:y1, x:x1]
    assert got.dtype == want.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, want)


def test_a_chunk_without_a_file_reads_as_the_fill_value(tmp_path):
    arr = _store(tmp_path / "s.zarr", "zstd+crc32c")
    (tmp_path / "s.zarr" / "image" / "c" / "0" / "1" / "1").unlink()
    got = _reader(tmp_path / "s.zarr").read((0, 32, 32), (3, 64, 64))
    assert np.isnan(got).all()
    np.testing.assert_array_equal(got, arr[:, 32:64, 32:64])


def test_an_undecodable_tile_is_named(tmp_path):
    """A tile that passed its fetch's checks but does not decode (no checksum to catch it) is an
    error naming the store and the tile, never garbage pixels."""
    _store(tmp_path / "s.zarr", "blosc-big-endian")
    tile = tmp_path / "s.zarr" / "image" / "c" / "0" / "0" / "1"
    data = bytearray(tile.read_bytes())
    data[20:40] = b"\xff" * 20
    tile.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"s\.zarr: variable 'image': tile c/0/0/1"):
        _reader(tmp_path / "s.zarr").read((0, 0, 0), (3, 32, 70))


def test_windows_outside_the_array_are_refused(tmp_path):
    _store(tmp_path / "s.zarr", "none")
    with pytest.raises(ValueError, match="outside"):
        _reader(tmp_path / "s.zarr").read((0, 0, 60), (3, 10, 80))


def test_layouts_it_cannot_read_are_left_to_zarr(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    g.create_array("image", shape=(4, 64), chunks=(2, 32), shards=(4, 64), dtype="f4")
    assert _reader(tmp_path / "s.zarr") is None
