"""The direct path (Zarr store / raster source → ordered regions), read planning, splitting, prefetch."""

import threading
import time

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st

from xtstream.data.ingest import ingest
from xtstream.tasks.xview3.labels import read_labels
from xtstream.data.grid import RegionGrid, Window, assemble_regions
from xtstream.data.sources import ArraySource, WindowedSource
from xtstream._runtime.prefetch import prefetched
from xtstream.data.split import split_scenes
from xtstream.data.streams import open_scene, stream_scenes
from xtstream.data.windows import SourceWindows, ZarrWindows, decode_passes, open_windows, plan_reads


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).standard_normal((2, 203, 317)).astype("f4")


@pytest.fixture(scope="module")
def store(image, tmp_path_factory):
    # chunk 96 is neither a multiple nor a divisor of the regions used below
    return ingest(ArraySource(image, scene_id="direct"), tmp_path_factory.mktemp("s") / "d.zarr",
                  tile=96, progress=False)


@given(h=st.integers(1, 400), w=st.integers(1, 400), region=st.integers(8, 150),
       th=st.integers(8, 300), tw=st.integers(8, 300), budget=st.integers(1, 400_000))
def test_read_plan_covers_every_region_once_in_order(h, w, region, th, tw, budget):
    grid = RegionGrid(h, w, region)
    blocks = plan_reads(grid, (th, tw), 4, budget)
    assert blocks[0].start == 0 and blocks[-1].stop == len(grid)
    for a, b in zip(blocks, blocks[1:]):
        assert a.stop == b.start
    for blk in blocks:
        win = blk.window
        assert 0 <= win.y0 < win.y1 <= h and 0 <= win.x0 < win.x1 <= w
        valid = [grid.valid_window(i) for i in range(blk.start, blk.stop)]
        # the block is exactly the union of its regions' valid windows
        assert (win.y0, win.x0) == (min(v.y0 for v in valid), min(v.x0 for v in valid))
        assert (win.y1, win.x1) == (max(v.y1 for v in valid), max(v.x1 for v in valid))
        assert win.height * win.width * 4 <= budget or len(blk) == 1 or win.height > region


def test_read_plan_decodes_each_tile_row_once_when_it_fits():
    grid = RegionGrid(4096, 4096, 512)
    blocks = plan_reads(grid, (2048, 2048), 8, 2**30)
    assert [b.window for b in blocks] == [Window(0, 0, 2048, 4096), Window(2048, 0, 4096, 4096)]
    # a small budget: single rows, each run of regions a whole number of tile columns
    blocks = plan_reads(grid, (512, 1024), 8, 1024 * 512 * 8)
    assert all(b.window.height == 512 and b.window.x0 % 1024 == 0 and len(b) == 2 for b in blocks)


def test_decode_passes_counts_tile_decodes():
    grid = RegionGrid(4096, 4096, 512)
    assert decode_passes(plan_reads(grid, (2048, 2048), 8, 2**30), (2048, 2048), (4096, 4096)) == 1.0
    # a budget of one region row: 2048-tall tiles are decoded once per region row
    one_row = plan_reads(grid, (2048, 2048), 8, 4096 * 512 * 8)
    assert decode_passes(one_row, (2048, 2048), (4096, 4096)) == 4.0
    assert decode_passes(plan_reads(grid, (512, 512), 8, 2**22), (512, 512), (4096, 4096)) == 1.0


@pytest.mark.parametrize("region,budget", [(64, 64 * 2**20), (50, 64 * 2**20), (64, 10_000), (512, 64 * 2**20)])
def test_zarr_store_regions_reassemble_exactly(store, image, region, budget):
    scene = open_scene(store, region, max_read_bytes=budget)
    assert scene.scene_id == "direct" and scene.bands == ["band_1", "band_2"]
    regions = list(scene)
    assert [r.index for r in regions] == list(range(len(scene.grid)))
    assert all(r.pixels.shape == (2, region, region) for r in regions)
    assert np.array_equal(assemble_regions([r.pixels for r in regions], scene.grid), image)
    last = regions[-1]
    v = last.valid_window
    assert not last.pixels[:, v.height:, :].any() and not last.pixels[:, :, v.width:].any()  # zero padding


def test_every_window_reader_has_one_protocol(store, image):
    # stores, window sources and array sources all read (bands, h, w) through read_window
    win = Window(10, 20, 150, 300)
    readers = [open_windows(store), open_windows(ArraySource(image, scene_id="mem")),
               SourceWindows(Counting(image), tile=64)]
    assert [type(r) for r in readers] == [ZarrWindows, SourceWindows, SourceWindows]
    assert [r.tiles for r in readers] == [(96, 96), (203, 317), (64, 64)]  # dask clips a tile to the scene
    for reader in readers:
        assert reader.shape == image.shape
        assert np.array_equal(reader.read_window(win), image[:, 10:150, 20:300])


def test_chunks_are_row_major_runs(store):
    scene = open_scene(store, 64)
    chunks = list(scene.chunks(5))
    assert [len(c) for c in chunks] == [5] * (len(scene) // 5) + ([len(scene) % 5] if len(scene) % 5 else [])
    assert [i for c in chunks for i in c.indices] == list(range(len(scene)))


class Counting(WindowedSource):
    name, dtype, band_names = "counting", np.dtype("f4"), ["a"]

    def __init__(self, data):
        self.data, self.shape, self.windows = data, data.shape, []

    def read_window(self, window):
        self.windows.append(window)
        return self.data[:, window.y0:window.y1, window.x0:window.x1].copy()


def test_window_source_and_array_source(image):
    src = Counting(image[:1])
    scene = open_scene(src, 100)
    got = assemble_regions([r.pixels for r in scene], scene.grid)
    assert np.array_equal(got, image[:1])
    assert src.windows == [Window(0, 0, 203, 317)]  # small enough for one block, never one read per region
    src.windows.clear()
    assert len(list(open_scene(src, 100, max_read_bytes=100 * 317 * 4))) == 12
    assert len(src.windows) == 3  # one read per region row under a small budget
    scene = open_scene(ArraySource(image, scene_id="mem"), 77)
    assert scene.scene_id == "mem"
    assert np.array_equal(assemble_regions([r.pixels for r in scene], scene.grid), image)


def test_geotiff_scene_directory_with_labels(small_scene):
    labels = read_labels(small_scene.labels, scene_ids=[small_scene.scene_id])[small_scene.scene_id]
    scene = open_scene(small_scene.directory, 256, labels=labels)
    regions = list(scene)
    with rasterio.open(small_scene.bands["VV_dB"]) as ds:
        vv = ds.read(1)
    band = scene.bands.index("VV_dB")
    assert np.array_equal(assemble_regions([r.pixels[band] for r in regions], scene.grid), vv)
    found = sorted((o["scene_row"], o["scene_col"]) for r in regions for o in r.objects)
    assert found == sorted(zip(labels.rows, labels.cols))
    for r in regions:
        for o in r.objects:
            assert r.targets["centre"][int(o["row"]), int(o["col"])] == pytest.approx(1.0)


def test_split_scenes_partitions_by_scene():
    scenes = list(range(11))
    parts = [split_scenes(scenes, info=(node, 2, worker, 3)) for node in range(2) for worker in range(3)]
    assert sorted(x for p in parts for x in p) == scenes  # each scene exactly once
    shuffled = [split_scenes(scenes, shuffle=True, seed=1, info=(node, 2, w, 3)) for node in range(2) for w in range(3)]
    assert sorted(x for p in shuffled for x in p) == scenes
    a = split_scenes(scenes, shuffle=True, seed=1, epoch=0, info=(0, 1, 0, 1))
    assert a == split_scenes(scenes, shuffle=True, seed=1, epoch=0, info=(0, 1, 0, 1))  # every rank agrees
    assert a != split_scenes(scenes, shuffle=True, seed=1, epoch=1, info=(0, 1, 0, 1))
    assert split_scenes(scenes, by_node=False, by_worker=False, info=(1, 2, 1, 3)) == scenes


def test_stream_scenes_interface(store, image):
    scenes = list(stream_scenes([store, ArraySource(image[:, :50, :60], scene_id="small")], 64).scenes())
    assert [s.scene_id for s in scenes] == ["direct", "small"]
    assert [len(list(s)) for s in scenes] == [len(RegionGrid(203, 317, 64)), 1]


def test_loader_workers_hand_pixels_over_as_tensors_with_the_same_values(store, image, tmp_path):
    # numpy pixels went through the loader's pipe by pickling: ~3x the trainer's time per chunk
    import torch

    other = ingest(ArraySource(image[:, :128, :192], scene_id="other"), tmp_path / "o.zarr", tile=64,
                   progress=False)
    dataset = stream_scenes([store, other], 64, chunk=3)
    expected = {(c.scene_id, c.start): c.pixels for c in dataset}
    assert all(isinstance(p, np.ndarray) for p in expected.values())  # in-process: numpy, as before
    got = list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2))
    assert sorted((c.scene_id, c.start) for c in got) == sorted(expected)
    for c in got:
        assert isinstance(c.pixels, torch.Tensor) and c.pixels.dtype == torch.float32
        np.testing.assert_array_equal(c.pixels.numpy(), expected[(c.scene_id, c.start)])


def test_prefetch_is_bounded_and_propagates_errors():
    produced = []

    def gen():
        for i in range(50):
            produced.append(i)
            yield i

    it = prefetched(gen(), 3)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 1  # consumed + queue + one waiting to be put
    assert list(it) == list(range(1, 50))

    def bad():
        yield 1
        raise ValueError("boom in reader")

    with pytest.raises(ValueError, match="boom in reader"):
        list(prefetched(bad(), 2))
    # abandoning a prefetched stream stops its thread
    it = prefetched(gen(), 2)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "xtstream-prefetch"]


def test_prefetched_scene_equals_plain(store):
    plain = [r.pixels for r in open_scene(store, 64)]
    ahead = [r.pixels for r in open_scene(store, 64, prefetch=4)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, ahead)) and len(plain) == len(ahead)


def test_chunks_of_zero_regions_are_refused(store):
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        next(open_scene(store, 64).chunks(0))
    with pytest.raises(ValueError, match="chunk must be a whole number of regions >= 1"):
        stream_scenes(store, 64, chunk=0)
