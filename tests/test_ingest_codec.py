"""Which codec an ingest writes with: blosc-lz4 for new stores (ingest's largest stage was the
codec), the store's own codec when a rerun resumes or repairs a store written before that default."""

import json

import numpy as np
import pytest

from xtstream.data.ingest import DEFAULT_CODEC, ingest, resolve_codec
from xtstream.data.sources import ArraySource
from xtstream.data.store import open_store
from xtstream.errors import StoreError


def _image() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((2, 100, 150)).astype("f4")


def _blosc(store) -> dict:
    meta = json.loads((store / "image" / "zarr.json").read_text())
    return next(c["configuration"] for c in meta["codecs"] if c["name"] == "blosc")


def test_new_stores_are_blosc_lz4_and_hold_the_source_exactly(tmp_path):
    store = ingest(ArraySource(_image(), scene_id="a"), tmp_path / "a.zarr", tile=64, progress=False)
    assert DEFAULT_CODEC == "blosc-lz4"
    assert (_blosc(store)["cname"], _blosc(store)["clevel"]) == ("lz4", 5)
    assert open_store(store).attrs["xtstream"]["codec"] == ["blosc-lz4", 5]
    np.testing.assert_array_equal(open_store(store)["image"].values, _image())


def test_a_rerun_without_codec_repairs_a_store_written_with_another_codec(tmp_path):
    out = tmp_path / "old.zarr"
    ingest(ArraySource(_image(), scene_id="old"), out, tile=64, codec="blosc-zstd", level=1, progress=False)
    (out / "image" / "c" / "0" / "1" / "1").unlink()  # a lost tile: the rerun writes it again
    with pytest.warns(UserWarning, match="writing them again"):
        ingest(ArraySource(_image(), scene_id="old"), out, tile=64, progress=False)
    assert (_blosc(out)["cname"], _blosc(out)["clevel"]) == ("zstd", 1)
    np.testing.assert_array_equal(open_store(out)["image"].values, _image())
    # asking for another codec on it is refused, naming the codec, unless overwriting
    with pytest.raises(StoreError, match="codec"):
        ingest(ArraySource(_image(), scene_id="old"), out, tile=64, codec="zstd", progress=False)
    ingest(ArraySource(_image(), scene_id="old"), out, tile=64, overwrite=True, progress=False)
    assert _blosc(out)["cname"] == "lz4"


def test_resolve_codec_defaults_and_refusals():
    assert resolve_codec(None, None) == ("blosc-lz4", 5)
    assert resolve_codec("zstd", None) == ("zstd", 1)
    assert resolve_codec(None, None, ["blosc-zstd", 3]) == ("blosc-zstd", 3)
    assert resolve_codec(None, 7, ["blosc-zstd", 3]) == ("blosc-zstd", 7)
    assert resolve_codec("none", None, ["blosc-zstd", 3]) == ("none", 0)
    with pytest.raises(StoreError, match="unknown codec 'lzma'"):
        resolve_codec("lzma", None)


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc-zstd", "zstd", "none"])
def test_ingested_tiles_are_the_files_zarr_writes(tmp_path, codec, direct_io):
    """The ingest writes its tiles itself (xtstream.data.tile_writer), not through zarr: each file,
    edge tiles and the valid mask included, is byte for byte the one zarr writes for its pixels,
    written past the page cache (the default) or not."""
    import shutil

    import zarr

    from xtstream.tasks.xview3.synth import synth_scene

    synth_scene(tmp_path / "s", 150, 200, seed=3, progress=False)
    store = ingest(tmp_path / "s", tmp_path / "a.zarr", spec="xview3", tile=64, codec=codec, allow_small=True,
                   progress=False, direct_io=direct_io)
    again = tmp_path / "b.zarr"
    shutil.copytree(store, again)
    for var in ("image", "valid"):
        shutil.rmtree(again / var / "c")
        with zarr.config.set({"array.write_empty_chunks": True}):
            zarr.open_array(again, path=var, mode="r+")[...] = zarr.open_array(store, path=var, mode="r")[...]
        ours = sorted(p.relative_to(store) for p in (store / var / "c").rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(again) for p in (again / var / "c").rglob("*") if p.is_file())
        assert ours == theirs and len(ours) == 3 * 4  # 150 x 200 in 64-px tiles: edges on both axes
        for key in ours:
            assert (store / key).read_bytes() == (again / key).read_bytes(), key
