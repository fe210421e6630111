"""Dask → Zarr ingest: exact parallel writes, normalisation, metadata, resumption, refusals."""

import json
import os
import re

import numpy as np
import pytest
import rasterio
import xarray as xr

from xtstream.errors import IncompleteStoreError, SourceError, StoreError
from xtstream.data.ingest import ingest, ingest_archive, plan_ingest
from xtstream.data.grid import Window
from xtstream.data.sources import WindowedSource
from xtstream.data.specs import load_spec
from xtstream.data.store import DONE_DIR, open_store, read_status
from xtstream.tasks.xview3.synth import synth_scene


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_parallel_ingest_is_bit_exact_and_plain_xarray(small_scene, tmp_path):
    store = ingest(small_scene.directory, tmp_path / "raw.zarr", tile=128, progress=False)
    ds = xr.open_zarr(store, consolidated=False)  # any xarray user can read it
    image = ds["image"]
    assert image.dims == ("band", "y", "x") and image.shape == (3, 700, 900)  # full size, no padding
    assert image.data.chunksize == (3, 128, 128)
    assert list(ds.band.values) == ["VH_dB", "VV_dB", "bathymetry"]  # sorted files, no spec
    expected = np.stack([_read(small_scene.bands[n]) for n in ("VH_dB", "VV_dB", "bathymetry")])
    assert np.array_equal(image.values, expected)


def test_finished_store_opens_in_plain_xarray_without_warnings(small_scene, tmp_path):
    """Issue 13: ``xarray.open_zarr(store)`` warned that metadata is not consolidated (and fell back
    to listing the store); a finished store opens quietly, consolidated, with the same values."""
    import warnings

    store = ingest(small_scene.directory, tmp_path / "plain.zarr", tile=128, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
        values = ds["image"].values
    assert json.loads((store / "zarr.json").read_text()).get("consolidated_metadata")
    np.testing.assert_array_equal(values, xr.open_zarr(store, consolidated=False)["image"].values)
    assert read_status(store).complete


def test_store_nodata_reads_as_rioxarray_expects(shared_data, tmp_path):
    """Issue 13: the per-band nodata list made ``img.rio.nodata`` raise ``TypeError``. One value
    shared by all bands is ``nodata`` (rioxarray's), the per-band list is ``band_nodata``."""
    import rioxarray  # noqa: F401 - the .rio accessor

    store = ingest(shared_data / "rasterio" / "RGB.byte.tif", tmp_path / "rgb.zarr", tile=256, progress=False)
    image = xr.open_zarr(store, decode_coords="all")["image"]
    assert image.rio.nodata == 0
    assert image.attrs["band_nodata"] == [0.0, 0.0, 0.0]
    assert image.rio.crs.to_epsg() == 32618


def test_bands_with_different_nodata_have_no_scalar_nodata(tmp_path):
    import rioxarray  # noqa: F401 - the .rio accessor
    from xtstream.data.sources import ArraySource

    data = np.arange(2 * 40 * 30, dtype="f4").reshape(2, 40, 30)
    store = ingest(ArraySource(data, scene_id="a", nodata=[-1.0, None]), tmp_path / "a.zarr", tile=32,
                   progress=False)
    image = xr.open_zarr(store)["image"]
    assert image.attrs["band_nodata"] == [-1.0, None] and "nodata" not in image.attrs
    assert image.rio.nodata is None or np.isnan(image.rio.nodata)  # never a TypeError


def test_spec_normalisation_metadata_and_crs(small_scene, tmp_path):
    store = ingest(small_scene.directory, tmp_path / "norm.zarr", spec="xview3", tile=256, progress=False)
    ds = open_store(store)
    vv = _read(small_scene.bands["VV_dB"])
    got = ds["image"].sel(band="VV").values
    valid = vv != -32768
    assert (~valid).any() and valid.any()
    np.testing.assert_allclose(got[valid], (np.clip(vv[valid], -50, 20) + 40) / 15, rtol=1e-6)
    assert (got[~valid] == -1.0).all()  # nodata -> the spec's fill value
    assert ds["image"].dtype == np.float32
    with rasterio.open(small_scene.bands["VV_dB"]) as src:
        assert ds["image"].rio.crs == src.crs
        assert ds["image"].rio.transform().almost_equals(src.transform)
    info = ds.attrs["xtstream"]
    assert info["complete"] is True and info["scene_id"] == "scene_a"
    assert info["band_names"] == ["VV", "VH", "bathymetry"]
    assert info["spec"]["name"] == "xview3" and info["version"]
    assert [os.path.basename(p) for p in info["source_paths"]] == ["VV_dB.tif", "VH_dB.tif", "bathymetry.tif"]
    assert not (store / DONE_DIR).exists()


def test_normalised_store_keeps_the_valid_data_mask(small_scene, tmp_path):
    """Issue 13: normalisation turns nodata into the spec's ``fill`` and the mask was lost (a fill of
    -1 is also a valid normalised value); ``valid`` keeps it, per band, for any xarray reader."""
    store = ingest(small_scene.directory, tmp_path / "norm.zarr", spec="xview3", tile=256, progress=False)
    ds = xr.open_zarr(store)
    assert ds["valid"].dims == ("band", "y", "x") and ds["valid"].dtype == np.uint8
    assert list(ds["valid"].band.values) == ["VV", "VH", "bathymetry"]
    for name, file in (("VV", "VV_dB"), ("VH", "VH_dB")):
        raw = _read(small_scene.bands[file])
        want = (raw != -32768) & ~np.isnan(raw)
        assert (~want).any() and want.any()
        np.testing.assert_array_equal(ds["valid"].sel(band=name).values, want.astype(np.uint8))
        assert (ds["image"].sel(band=name).values[~want] == -1.0).all()


def test_nan_becomes_fill_and_coarse_bathymetry_is_resampled(tmp_path):
    scene = synth_scene(tmp_path / "coarse", 600, 640, seed=5, bathymetry_factor=4, progress=False)
    with rasterio.open(scene.bands["VH_dB"], "r+") as ds:
        block = ds.read(1, window=rasterio.windows.Window(600, 590, 10, 10))
        block[:] = np.nan
        ds.write(block, 1, window=rasterio.windows.Window(600, 590, 10, 10))
    ds = open_store(ingest(scene.directory, tmp_path / "c.zarr", spec="xview3", tile=256, progress=False))
    vh = ds["image"].sel(band="VH").values
    assert (vh[590:600, 600:610] == -1.0).all() and not np.isnan(vh).any()
    bathy = ds["image"].sel(band="bathymetry").values
    assert bathy.shape == (600, 640) and np.isfinite(bathy).all() and bathy.std() > 0


class Flaky(WindowedSource):
    """A source that can be told to fail on one window, and counts its reads."""

    name, dtype, band_names = "flaky", np.dtype("f4"), ["a", "b"]

    def __init__(self, data):
        self.data, self.shape = data, data.shape
        self.fail_at, self.reads = None, []

    def read_window(self, window):
        if window == self.fail_at:
            raise OSError(f"disk vanished at {tuple(window)}")
        self.reads.append(window)
        return self.data[:, window.y0:window.y1, window.x0:window.x1].copy()


def test_interrupted_ingest_resumes_without_redoing_chunks(tmp_path):
    data = np.random.default_rng(2).random((2, 300, 500)).astype(np.float32)
    src = Flaky(data)
    src.fail_at = Window(200, 300, 300, 400)  # a chunk in the middle of the last row
    out = tmp_path / "flaky.zarr"
    with pytest.raises(OSError, match="disk vanished"):
        ingest(src, out, tile=100, scheduler="sync", progress=False)
    status = read_status(out)
    assert status.ours and not status.complete  # never mistaken for complete
    with pytest.raises(IncompleteStoreError, match="flaky.zarr: incomplete.*resume"):
        open_store(out)
    written_first = {tuple(w) for w in src.reads}
    assert 0 < len(written_first) < 15

    src.fail_at, src.reads = None, []
    ingest(src, out, tile=100, scheduler="sync", progress=False)
    reread = {tuple(w) for w in src.reads}
    assert reread == {tuple(Window(y, x, y + 100, x + 100)) for y in (0, 100, 200)
                      for x in (0, 100, 200, 300, 400)} - written_first  # only the missing chunks
    assert np.array_equal(open_store(out)["image"].values, data)


def test_complete_store_is_not_rewritten(tmp_path):
    data = np.ones((1, 64, 64), np.float32)
    src = Flaky(np.concatenate([data, data]))
    out = ingest(src, tmp_path / "done.zarr", tile=32, progress=False)
    src.reads = []
    plan = plan_ingest(src, out, tile=32)
    assert plan.keys == [] and plan.n_done == plan.n_chunks == 4
    ingest(src, out, tile=32, progress=False)
    assert src.reads == []


def test_existing_foreign_path_is_refused_untouched(tmp_path, small_scene):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="mine: exists and is not an xtstream scene store"):
        ingest(small_scene.directory, foreign, progress=False)
    assert os.listdir(foreign) == ["notes.txt"]
    other_zarr = tmp_path / "other.zarr"
    xr.Dataset({"v": ("x", np.arange(3))}).to_zarr(other_zarr, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="other.zarr: exists and is not an xtstream"):
        ingest(small_scene.directory, other_zarr, progress=False)


def test_store_of_another_configuration_needs_overwrite(tmp_path, small_scene):
    out = ingest(small_scene.directory, tmp_path / "s.zarr", tile=256, progress=False)
    with pytest.raises(StoreError, match="s.zarr: holds an ingest of another.*differs in chunk"):
        ingest(small_scene.directory, out, tile=128, progress=False)
    ingest(small_scene.directory, out, tile=128, progress=False, overwrite=True)
    assert open_store(out)["image"].data.chunksize == (3, 128, 128)


def test_bad_inputs_name_the_file(tmp_path, shared_data):
    with pytest.raises(SourceError, match="corrupt.tif"):
        ingest(shared_data / "rasterio" / "corrupt.tif", tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()
    empty_scene = tmp_path / "scene_without_bands"
    empty_scene.mkdir()
    with pytest.raises(SourceError, match="VV_dB.tif: band 'VV' of spec 'xview3' is missing"):
        ingest(empty_scene, tmp_path / "y.zarr", spec="xview3", progress=False)


def test_scene_smaller_than_a_region(tmp_path, shared_data):
    tiny = shared_data / "rasterio" / "float_nan.tif"
    spec = load_spec("xview3").select(["VV"])
    with pytest.raises(SourceError, match=r"float_nan.tif: scene is \d+x\d+ px, smaller than one 512x512 region"):
        ingest(tiny, tmp_path / "t.zarr", spec=spec, progress=False)
    store = ingest(tiny, tmp_path / "t.zarr", spec=spec, allow_small=True, progress=False)
    assert not np.isnan(open_store(store)["image"].values).any()
    raw = ingest(tiny, tmp_path / "raw.zarr", progress=False)  # no spec: stored as is, NaN kept
    assert np.isnan(open_store(raw)["image"].values).any()


def test_real_landsat_scene_round_trip(tmp_path, shared_data):
    path = shared_data / "landsat" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    ds = open_store(ingest(path, tmp_path / "landsat.zarr", tile=512, progress=False))
    with rasterio.open(path) as src:
        assert np.array_equal(ds["image"].values, src.read())
        assert ds["image"].rio.crs == src.crs


def test_archive_ingest_on_a_distributed_scheduler_by_address(tmp_path, capfd):
    from distributed import LocalCluster

    root = tmp_path / "archive"
    for k in range(3):
        synth_scene(root / f"s{k}", 300, 260, seed=k, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        stores = ingest_archive(root, tmp_path / "stores", spec="xview3", tile=128, allow_small=True,
                                scenes_in_flight=2, scheduler=cluster.scheduler_address, progress=False)
        link = cluster.dashboard_link
    assert [s.name for s in stores] == ["s0.zarr", "s1.zarr", "s2.zarr"]
    # the user is told where to watch the run
    assert f"dask dashboard ({cluster.scheduler_address}): {link}" in capfd.readouterr().err
    local = ingest(root / "s1", tmp_path / "threads.zarr", spec="xview3", tile=128, allow_small=True,
                   progress=False)
    assert np.array_equal(open_store(stores[1])["image"].values, open_store(local)["image"].values)
    assert json.loads((stores[2] / "zarr.json").read_text())["attributes"]["xtstream"]["scene_id"] == "s2"


def test_an_archive_on_a_cluster_stops_at_a_bad_scene_and_resumes_once_it_is_fixed(tmp_path):
    """On a cluster scenes are queued (the next submitted while the oldest finishes): a bad scene
    stops the run with its file named, the stores queued before it are left resumable (not
    complete, not locked), and the rerun finishes every scene."""
    from distributed import LocalCluster

    from xtstream.errors import XTStreamError

    root = tmp_path / "archive"
    for k in range(3):
        synth_scene(root / f"s{k}", 300, 260, seed=k, progress=False)
    good = (root / "s1" / "VH_dB.tif").read_bytes()
    (root / "s1" / "VH_dB.tif").write_bytes(b"not a tiff at all" * 50)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        kw = dict(spec="xview3", tile=128, allow_small=True, scenes_in_flight=2,
                  scheduler=cluster.scheduler_address, progress=False)
        with pytest.raises(XTStreamError, match="VH_dB.tif"):
            ingest_archive(root, tmp_path / "stores", **kw)
        assert not read_status(tmp_path / "stores" / "s0.zarr").complete
        (root / "s1" / "VH_dB.tif").write_bytes(good)
        stores = ingest_archive(root, tmp_path / "stores", **kw)
    assert [s.name for s in stores] == ["s0.zarr", "s1.zarr", "s2.zarr"]
    for k, store in enumerate(stores):
        assert read_status(store).complete
        alone = ingest(root / f"s{k}", tmp_path / f"alone{k}.zarr", spec="xview3", tile=128, allow_small=True,
                       progress=False)
        assert np.array_equal(open_store(store)["image"].values, open_store(alone)["image"].values)


def test_changed_source_file_is_not_resumed_into(tmp_path):
    scene = synth_scene(tmp_path / "changing", 300, 300, seed=1, progress=False)
    out = ingest(scene.directory, tmp_path / "c.zarr", tile=128, progress=False)
    synth_scene(scene.directory, 300, 300, seed=2, progress=False)  # the files are rewritten
    with pytest.raises(StoreError, match="c.zarr: holds an ingest of another.*source_stamps"):
        ingest(scene.directory, out, tile=128, progress=False)


def test_scene_thinner_than_a_chunk_keeps_square_chunks_and_every_pixel(tmp_path):
    # 40 rows but 250 columns: dask's first block is (40, 48); the store's chunks must stay 48x48
    # so that no two tasks ever write the same Zarr chunk
    from xtstream.data.sources import ArraySource

    data = np.random.default_rng(5).random((2, 40, 250)).astype(np.float32)
    store = ingest(ArraySource(data, scene_id="thin"), tmp_path / "thin.zarr", tile=48,
                   scheduler="threads", progress=False)
    image = xr.open_zarr(store, consolidated=False)["image"]
    assert image.encoding["chunks"] == (2, 48, 48)
    assert np.array_equal(image.values, data)


def test_the_old_name_chunk_still_sets_the_tile_with_a_warning(tmp_path):
    from xtstream.data.sources import ArraySource

    src = ArraySource(np.arange(2 * 64 * 80, dtype="f4").reshape(2, 64, 80), scene_id="old")
    with pytest.warns(DeprecationWarning, match=r"ingest\(tile=...\)"):
        out = ingest(src, tmp_path / "old.zarr", chunk=32, progress=False)
    assert open_store(out)["image"].data.chunksize == (2, 32, 32)
    with pytest.raises(StoreError, match="tile=16 and chunk=32 disagree"), pytest.warns(DeprecationWarning):
        ingest(src, tmp_path / "both.zarr", tile=16, chunk=32, progress=False)


def test_a_local_cluster_prints_its_dashboard_address(tmp_path, capfd):
    synth_scene(tmp_path / "s", 200, 200, seed=0, progress=False)
    ingest(tmp_path / "s", tmp_path / "s.zarr", spec="xview3", tile=128, allow_small=True, scheduler="local:1",
           progress=False)
    err = capfd.readouterr().err
    assert re.search(r"dask dashboard \(local:1\): http://[\w.]+:\d+/status", err), err


def test_an_ingest_on_threads_runs_one_thread_more_than_the_cores_unless_dask_says(tmp_path, monkeypatch):
    """Its tasks wait on the disk (direct writes): the extra thread computes meanwhile. dask's own
    ``num_workers`` setting still decides where a user set it."""
    import dask

    from xtstream._runtime import cluster
    from xtstream.data import ingest as ingest_module
    from xtstream.data.sources import ArraySource

    pools = []
    real = cluster._local_get

    def spy(graph, keys, sync, threads):
        pools.append(threads)
        return real(graph, keys, sync, threads)

    monkeypatch.setattr(cluster, "_local_get", spy)
    image = np.zeros((1, 64, 64), "f4")
    ingest_module.ingest(ArraySource(image, scene_id="t"), tmp_path / "a.zarr", tile=32, progress=False)
    with dask.config.set(num_workers=5):
        ingest_module.ingest(ArraySource(image, scene_id="t"), tmp_path / "b.zarr", tile=32, progress=False)
    assert pools == [(os.cpu_count() or 1) + 1, 5]


def test_an_archive_on_a_cluster_plans_the_next_scene_while_the_queue_runs(tmp_path, monkeypatch):
    """Planned only once the oldest scene was gathered, the next scene left the workers idle
    between scenes (the queued scenes tend to end together)."""
    from distributed import LocalCluster

    from xtstream._runtime import cluster as cluster_mod
    from xtstream.data import ingest as ingest_mod

    root = tmp_path / "archive"
    for k in range(3):
        synth_scene(root / f"s{k}", 300, 260, seed=k, progress=False)
    events = []
    real_plan, real_gather = ingest_mod.plan_ingest, cluster_mod.gather_graph

    def plan(src, out, **kw):
        events.append(("plan", os.path.basename(out)))
        return real_plan(src, out, **kw)

    def gather(futures, client):
        events.append(("gather",))
        return real_gather(futures, client)

    monkeypatch.setattr(ingest_mod, "plan_ingest", plan)
    monkeypatch.setattr(cluster_mod, "gather_graph", gather)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        stores = ingest_archive(root, tmp_path / "stores", spec="xview3", tile=128, allow_small=True,
                                scenes_in_flight=1, scheduler=cluster.scheduler_address, progress=False)
    assert [s.name for s in stores] == ["s0.zarr", "s1.zarr", "s2.zarr"]
    assert events == [("plan", "s0.zarr"), ("plan", "s1.zarr"), ("gather",), ("plan", "s2.zarr"), ("gather",),
                      ("gather",)]


def test_a_geotiff_ingest_reads_every_tile_into_the_buffer_its_thread_keeps(tmp_path, monkeypatch):
    """A fresh read array a tile was memory the kernel zeroed again every tile (16-18 % of an
    ingest's CPU under perf); read into a kept buffer, the store holds the same pixels."""
    from xtstream.data.sources.geotiff import GeoTIFFSource

    scene = synth_scene(tmp_path / "s", 300, 260, seed=3, progress=False)
    buffers = []
    real = GeoTIFFSource.read_window

    def spy(self, window, out=None):
        buffers.append(None if out is None else out.__array_interface__["data"][0])
        return real(self, window, out=out)

    monkeypatch.setattr(GeoTIFFSource, "read_window", spy)
    store = ingest(scene.directory, tmp_path / "s.zarr", spec="xview3", tile=128, allow_small=True,
                   scheduler="sync", progress=False)
    assert len(buffers) == 9 and len(set(buffers)) == 1 and None not in buffers  # 3 x 3 tiles, edges included
    monkeypatch.setattr(GeoTIFFSource, "read_window", real)
    with monkeypatch.context() as m:  # the same ingest from fresh arrays, as a plug-in source reads
        m.setattr(GeoTIFFSource, "reads_into", False)
        fresh = ingest(scene.directory, tmp_path / "fresh.zarr", spec="xview3", tile=128, allow_small=True,
                       scheduler="threads", progress=False)
    a, b = open_store(store), open_store(fresh)
    for var in ("image", "valid"):
        assert np.array_equal(a[var].values, b[var].values)


def test_a_geotiff_reads_into_a_given_array_or_a_tiles_corner_and_refuses_a_wrong_one(tmp_path):
    from xtstream.data.sources.geotiff import GeoTIFFSource

    scene = synth_scene(tmp_path / "s", 300, 260, seed=3, progress=False)
    src = GeoTIFFSource(sorted(scene.directory.glob("V*_dB.tif")))
    window = Window(0, 0, 100, 50)
    fresh = src.read_window(window)
    out = np.empty_like(fresh)
    assert src.read_window(window, out=out) is out and np.array_equal(out, fresh)
    room = np.zeros((fresh.shape[0], 128, 64), fresh.dtype)  # a whole tile's buffer: read into its corner
    corner = room[:, :100, :50]
    assert src.read_window(window, out=corner) is corner and np.array_equal(corner, fresh)
    assert not room[:, 100:].any() and not room[:, :, 50:].any()
    with pytest.raises(ValueError, match="writable"):
        src.read_window(window, out=np.empty((fresh.shape[0], 50, 100), fresh.dtype))


def test_a_geotiff_ingest_pads_its_edge_tiles_where_they_were_read(tmp_path, monkeypatch):
    """An edge tile is read into the corner of its thread's whole-tile buffer and padded there: the
    tile writer's own padded copy (another tile-sized buffer kept per thread, 40 MiB for a 2,048²
    two-band tile and its mask) is not made. The files are zarr's (test_ingest_codec)."""
    from xtstream.data import tile_writer

    def no_copy(*a, **k):
        raise AssertionError("an edge tile was copied into the tile writer's padded buffer")

    monkeypatch.setattr(tile_writer, "_padded", no_copy)
    scene = synth_scene(tmp_path / "s", 300, 260, seed=3, progress=False)
    store = ingest(scene.directory, tmp_path / "s.zarr", spec="xview3", tile=128, allow_small=True,
                   progress=False)
    with rasterio.open(scene.directory / "VV_dB.tif") as src:
        raw = src.read(1)
    valid = open_store(store)["valid"].values[0]
    assert valid.shape == raw.shape and np.array_equal(valid == 1, raw != src.nodata)
