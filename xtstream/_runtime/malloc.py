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
import os
import sys
from typing import Any, Mapping

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2
#: how a local cluster's worker processes set glibc's allocator (see :func:`worker_malloc_environ`)
WORKER_MALLOC = {
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",  # glibc 2.35+: madvise(MADV_HUGEPAGE) on its maps
    "MALLOC_MMAP_THRESHOLD_": 32 * 2**20,  # glibc's largest: blocks below it come from the heap
    "MALLOC_TRIM_THRESHOLD_": 64 * 2**20,  # the heap's free top kept up to this
}
#: dask's own ``distributed.nanny.pre-spawn-environ`` value, replaced where it is still this
DASK_TRIM_THRESHOLD = 65536

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


def worker_malloc_environ(environ: Mapping[str, Any], inherited: Mapping[str, str] | None = None
                          ) -> dict[str, Any]:
    """``environ`` (the variables a worker process starts with, dask's pre-spawn environment)
    with :data:`WORKER_MALLOC`'s allocator settings, except those the user set: in ``inherited``
    (default ``os.environ``; dask's nanny lets these win anyway), or in ``environ`` with another
    value than dask's default.

    Why: per tile, an ingest worker allocates and frees ~90 MB of ``malloc`` blocks (blosc's
    output, the compressed copies, the mask). With dask's ``MALLOC_TRIM_THRESHOLD_=65536`` glibc's
    mmap threshold stays at 128 KiB: every such block was mapped fresh and faulted in 4 KiB at a
    time, and the heap's top handed back after each tile. Here blocks under 32 MiB come from a heap
    that keeps up to 64 MiB free between tiles, and those mapped anyway (the tile-sized ones) are
    asked for as huge pages. Workers ingesting a 29,400 x 24,400 scene on ``local:2``: 34-77 k page
    faults instead of 538-590 k, 11.6-12.7 s instead of 13.8-14.7 s (3 alternating runs each, the
    cluster up), each worker's peak RSS 307 instead of 271 MiB: a fixed cost, not one that grows
    with the scene. Settings are read when a process starts, hence the pre-spawn environment;
    other C libraries ignore them, glibc before 2.35 ignores the tunable.
    """
    inherited = os.environ if inherited is None else inherited
    dask_default = {"MALLOC_TRIM_THRESHOLD_": DASK_TRIM_THRESHOLD}
    users = {key for key in WORKER_MALLOC if key in inherited
             or (key in environ and str(environ[key]) != str(dask_default.get(key)))}
    return {**environ, **{key: value for key, value in WORKER_MALLOC.items() if key not in users}}


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

