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
    assert list(seen.values()) == [("glibc.malloc.hugetlb=1", "65536")]
