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


def test_worker_allocator_settings_join_the_environment_a_worker_starts_with():
    ours = malloc.WORKER_MALLOC
    got = malloc.worker_malloc_environ({"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}, inherited={})
    assert got == {**ours, "OMP_NUM_THREADS": 1}  # dask's default trim threshold is replaced
    # what the user set stands: in the shell, or in dask's configuration
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "MALLOC_TRIM_THRESHOLD_": "0"}
    assert malloc.worker_malloc_environ({}, inherited=mine) == {"MALLOC_MMAP_THRESHOLD_": ours["MALLOC_MMAP_THRESHOLD_"]}
    assert malloc.worker_malloc_environ(mine, inherited={}) == {**mine, "MALLOC_MMAP_THRESHOLD_": ours["MALLOC_MMAP_THRESHOLD_"]}


def test_local_cluster_workers_start_with_the_allocator_settings(monkeypatch):
    """The ``local:N`` workers an ingest or sharding starts are spawned with them (glibc reads
    them once, when a process starts)."""
    import os

    from xtstream._runtime.cluster import dask_client

    for key in malloc.WORKER_MALLOC:
        monkeypatch.delenv(key, raising=False)
    try:
        with dask_client("local:1") as client:
            seen = client.run(lambda: {k: os.environ.get(k) for k in malloc.WORKER_MALLOC})
    finally:
        for key in malloc.WORKER_MALLOC:  # dask's nanny writes the workers' variables here too
            os.environ.pop(key, None)
    assert list(seen.values()) == [{k: str(v) for k, v in malloc.WORKER_MALLOC.items()}]
