"""Keep the C allocator from hoarding the multi-MiB buffers that streaming threads allocate and free.

Every region read, copied, encoded and written is a fresh buffer of a few MiB. After the first
frees, glibc serves such sizes from heaps ("arenas"), one per thread up to 8 per core, and an
arena keeps what it has held: with many threads, RSS creeps past the live data. Sharing two
arenas between all threads bounds that: sharding on 6 threads (16 MiB shards, output on tmpfs)
peaked at 302 MiB for a 29,400 × 24,400 scene and 237 MiB for a 4,096² one; with two arenas,
215 and 180 MiB, at the same speed (18.5 s vs 18.7 s). Our allocations are few and large, so
threads sharing an arena rarely wait on its lock. (Fixing the mmap threshold instead returned
the memory too, but page-faulting every fresh buffer cost 40% more time.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2

_done = False


def limit_arenas() -> bool:
    """Cap this process's glibc malloc arenas at :data:`ARENAS` (threads started later share them).

    Idempotent and process-wide; ``False`` (and nothing done) where the C library is not glibc.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _done = bool(mallopt(M_ARENA_MAX, ARENAS))
    return _done


def trim() -> bool:
    """Hand the C allocator's free heap memory back to the system (glibc ``malloc_trim(0)``).

    Why: tile-by-tile work that allocates and frees tens of MiB per tile (peak finding over a
    prediction map) left RSS growing with the number of tiles — glibc's mmap threshold rises to
    the size of the largest freed buffer, so later buffers come from heaps that keep their pages.
    ``False`` where the C library has no ``malloc_trim``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    """The C library, loaded once. Why by name first: ``ctypes.util.find_library`` runs
    ``ldconfig`` in a subprocess on every call — :func:`trim` once per peak tile forked the
    1-GiB prediction process 180 times for a 29,400 × 24,400 scene (each fork's copy-on-write
    pages counted again by anyone summing the process tree's RSS, and its page tables copied)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"))

