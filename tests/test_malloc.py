"""The allocator cap that keeps streaming threads' RSS near their live data (see xtstream._runtime.malloc)."""

import platform
import sys

import pytest

from xtstream._runtime import malloc


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt(M_ARENA_MAX) is glibc's")
def test_arena_cap_applies_once_on_glibc():
    assert malloc.limit_arenas() is True
    assert malloc.limit_arenas() is True  # idempotent: shard tasks call it every time


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_trim_never_starts_a_process(monkeypatch):
    """``trim()`` runs once per peak tile of a prediction: finding the C library with
    ``ctypes.util.find_library`` ran ``ldconfig`` in a subprocess each time — 180 forks of a
    1-GiB process for one large scene, whose copy-on-write pages doubled the process tree's
    sampled RSS (1.8 GiB for a process whose own peak was 1.0 GiB)."""
    import subprocess

    def no_process(*a, **k):
        raise AssertionError("trim() started a process")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    for _ in range(3):
        assert isinstance(malloc.trim(), bool)


def test_huge_pages_join_the_environment_a_process_starts_with():
    assert malloc.huge_page_environ({"MALLOC_TRIM_THRESHOLD_": 65536}, inherited={}) == {
        "MALLOC_TRIM_THRESHOLD_": 65536, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # tunables the user set (in the shell, or in dask's configuration) stand as they are
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert malloc.huge_page_environ({}, inherited=mine) == {}
    assert malloc.huge_page_environ(mine, inherited={}) == mine


def test_local_cluster_workers_start_with_huge_pages(monkeypatch):
    """The ``local:N`` workers an ingest or sharding starts are spawned with the tunable, beside
    dask's own settings (a tunable set once a process runs has no effect)."""
    import os

    from xtstream._runtime.cluster import dask_client

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    try:
        with dask_client("local:1") as client:
            seen = client.run(lambda: (os.environ.get("GLIBC_TUNABLES"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)  # dask's nanny writes the workers' variables here too
    assert list(seen.values()) == [("glibc.malloc.hugetlb=1", str(malloc.WORKER_TRIM_THRESHOLD))]


def test_worker_heaps_keep_what_a_read_freed_unless_the_user_chose():
    dask_default = {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}
    assert malloc.heap_reuse_environ(dask_default, inherited={}) == {
        "MALLOC_TRIM_THRESHOLD_": 64 << 20, "MALLOC_MMAP_THRESHOLD_": 4 << 20, "OMP_NUM_THREADS": 1}
    # the user's thresholds (dask's configuration, or the shell's) stand; so does dask's removed
    for environ, inherited in [({"MALLOC_TRIM_THRESHOLD_": "0"}, {}), ({**dask_default, "MALLOC_MMAP_THRESHOLD_": 1}, {}),
                               (dask_default, {"MALLOC_TRIM_THRESHOLD_": "131072"}),
                               (dask_default, {"MALLOC_MMAP_THRESHOLD_": "131072"}), ({"OMP_NUM_THREADS": 1}, {})]:
        assert malloc.heap_reuse_environ(environ, inherited=inherited) == environ


def _read_faults(path: str) -> float:
    """Minor page faults per read of ``path``'s first 1,024² window into a kept array, after a
    first read (in the process that runs it)."""
    import resource

    import numpy as np

    from xtstream.data.grid import Window
    from xtstream.data.sources.geotiff import GeoTIFFSource

    src = GeoTIFFSource([path])
    out = np.empty((1, 1024, 1024), src.dtype)
    src.read_window(Window(0, 0, 1024, 1024), out=out)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        src.read_window(Window(0, 0, 1024, 1024), out=out)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc thresholds")
def test_a_local_worker_reads_tile_after_tile_without_fresh_memory(tmp_path, monkeypatch):
    """Every read of a GeoTIFF window closes its file and GDAL frees the blocks it decoded; in a
    ``local:N`` worker (dask's 64-KiB trim threshold) the next read's blocks were fresh pages the
    kernel faulted in and zeroed again: ~600 faults per 4 MiB of 512² float32 blocks."""
    import os

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from xtstream._runtime.cluster import dask_client

    path = str(tmp_path / "scene.tif")
    pixels = np.random.default_rng(0).normal(size=(1, 1024, 1024)).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="float32",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate", crs="EPSG:32631",
                       transform=from_origin(500000, 6000000, 10, 10)) as dst:
        dst.write(pixels)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    try:
        with dask_client("local:1") as client:
            faults = list(client.run(_read_faults, path).values())
    finally:
        for name in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
            os.environ.pop(name, None)  # dask's nanny writes the workers' variables here too
    # the 4 MiB of blocks are 1,024 pages: a heap that kept them faults next to none in again
    assert faults[0] < 100, faults
