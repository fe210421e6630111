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
