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
