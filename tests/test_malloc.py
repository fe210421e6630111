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


def test_worker_allocator_settings_join_the_environment_a_process_starts_with():
    """Local-cluster workers start with glibc tunables that keep tile-sized blocks in the heap
    (dask's MALLOC_TRIM_THRESHOLD_, which made every tile's buffers fresh mappings, is dropped)."""
    assert malloc.worker_malloc_environ({"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}, inherited={}) == {
        "OMP_NUM_THREADS": 1, "GLIBC_TUNABLES": malloc.WORKER_TUNABLES}
    assert "glibc.malloc.mmap_threshold=67108864" in malloc.WORKER_TUNABLES
    # allocator settings the user chose (in the shell, or in dask's configuration) stand as they are
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert malloc.worker_malloc_environ({}, inherited=mine) == {}
    assert malloc.worker_malloc_environ(mine, inherited={}) == mine
    dasks = {"MALLOC_TRIM_THRESHOLD_": 65536}
    assert malloc.worker_malloc_environ(dasks, inherited={"MALLOC_MMAP_THRESHOLD_": "1"}) == dasks
    # ours, left in the environment by an earlier cluster's nanny, is applied again in full
    assert malloc.worker_malloc_environ(dasks, inherited={"GLIBC_TUNABLES": malloc.WORKER_TUNABLES}) == {
        "GLIBC_TUNABLES": malloc.WORKER_TUNABLES}


def test_local_cluster_workers_start_with_the_allocator_settings(monkeypatch):
    """The ``local:N`` workers an ingest or sharding starts are spawned with the tunables and
    without dask's trim threshold (a tunable set once a process runs has no effect)."""
    import os

    from xtstream._runtime.cluster import dask_client

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    try:
        with dask_client("local:1") as client:
            seen = client.run(lambda: (os.environ.get("GLIBC_TUNABLES"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)  # dask's nanny writes the workers' variables here too
    assert list(seen.values()) == [(malloc.WORKER_TUNABLES, None)]
