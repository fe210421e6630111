"""Chunks written directly are the files zarr writes itself, and read back through zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from xtstream.data.tile_writer import tile_writer

CODECS = {
    "none": None,
    "zstd": [zarr.codecs.ZstdCodec(level=3)],
    "zstd+crc32c": [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()],
    "blosc+crc32c": [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), zarr.codecs.Crc32cCodec()],
}


def _array(path, compressors, dtype="f4"):
    g = zarr.open_group(path, mode="w", zarr_format=3)
    return g.create_array("m", shape=(100, 70), chunks=(32, 32), dtype=dtype, compressors=compressors,
                          fill_value=np.nan if dtype == "f4" else 0)


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("dtype", ["f4", "u2"])
def test_direct_chunks_are_byte_identical_to_zarr_s_and_read_back(tmp_path, name, dtype):
    rng = np.random.default_rng(0)
    ref = _array(tmp_path / "ref", CODECS[name], dtype)
    _array(tmp_path / "ours", CODECS[name], dtype)
    writer = tile_writer(tmp_path / "ours" / "m")
    assert writer is not None
    data = (rng.random((100, 70)) * 1000).astype(dtype)
    for i in range(4):
        for j in range(3):
            block = data[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32]  # edge blocks are smaller
            ref[i * 32:i * 32 + block.shape[0], j * 32:j * 32 + block.shape[1]] = block
            writer.write((i, j), block)
            assert writer.key_path((i, j)).read_bytes() == (tmp_path / "ref" / "m" / "c" / str(i) / str(j)).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours" / "m", mode="r")[:], data)
    assert not list((tmp_path / "ours").rglob("*.partial"))


def test_layouts_it_does_not_write_are_left_to_zarr(tmp_path):
    g = zarr.open_group(tmp_path / "s", mode="w", zarr_format=3)
    g.create_array("gz", shape=(8, 8), chunks=(4, 4), dtype="f4", compressors=[zarr.codecs.GzipCodec()])
    g.create_array("sharded", shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype="f4")
    assert tile_writer(tmp_path / "s" / "gz") is None
    assert tile_writer(tmp_path / "s" / "sharded") is None
    assert tile_writer(tmp_path / "s" / "nothing") is None


@pytest.mark.parametrize("cname", ["lz4", "zstd", "blosclz"])
@pytest.mark.parametrize("shuffle", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["f4", "u1"])
def test_blosc_into_a_kept_buffer_gives_numcodecs_bytes(cname, shuffle, dtype):
    """The ingest's blosc (c-blosc called into a buffer the thread keeps) is numcodecs' encoding
    as zarr runs it (in a worker thread), on data that compresses and data that does not (stored
    as it is), larger than blosc's blocks, and after a larger chunk left the buffer larger."""
    from concurrent.futures import ThreadPoolExecutor

    from numcodecs import Blosc

    from xtstream.data.chunk_codecs import blosc_into

    dt = np.dtype(dtype)
    compress = blosc_into(cname=cname, clevel=5, shuffle=shuffle, typesize=dt.itemsize)
    assert compress is not None  # numcodecs' wheels export c-blosc
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 50, 300_000).astype(dt)
    noise = rng.integers(0, 255, 300_000 * dt.itemsize, dtype=np.uint8).view(dt)
    with ThreadPoolExecutor(1) as zarr_s_thread:
        for data in (smooth, noise, noise[:1000], smooth[:10]):
            expected = zarr_s_thread.submit(Blosc(cname=cname, clevel=5, shuffle=shuffle).encode, data).result()
            assert bytes(compress(data)) == bytes(expected)


def test_without_c_blosc_s_function_numcodecs_encodes_the_same_file(tmp_path, monkeypatch):
    from xtstream.data import chunk_codecs

    ref = _array(tmp_path / "ref", CODECS["blosc+crc32c"])
    _array(tmp_path / "ours", CODECS["blosc+crc32c"])
    monkeypatch.setattr(chunk_codecs, "_blosc_compress_ctx", lambda: None)
    assert chunk_codecs.blosc_into(cname="lz4", clevel=5, shuffle=1, typesize=4) is None
    data = np.random.default_rng(2).random((32, 32)).astype("f4")
    ref[:32, :32] = data
    tile_writer(tmp_path / "ours" / "m").write((0, 0), data)
    assert (tmp_path / "ours" / "m" / "c" / "0" / "0").read_bytes() == (tmp_path / "ref" / "m" / "c" / "0" / "0").read_bytes()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_an_edge_chunk_is_the_block_in_its_corner_and_fill_elsewhere_even_in_a_reused_buffer(data):
    """Edge chunks are padded in a buffer each thread keeps: whatever the last edge chunk left
    there, the next one is its block and the fill value, nothing stale."""
    from xtstream.data.tile_writer import _padded

    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    for _ in range(3):  # the same kept buffer, blocks of different sizes one after the other
        sub = tuple(data.draw(st.integers(1, n)) for n in shape)
        block = np.arange(1, int(np.prod(sub)) + 1, dtype="f4").reshape(sub)
        fill = data.draw(st.sampled_from([0.0, -1.0, np.nan]))
        expected = np.full(shape, fill, "f4")
        expected[tuple(slice(0, n) for n in sub)] = block
        np.testing.assert_array_equal(_padded(block, shape, np.dtype("f4"), fill), expected)
