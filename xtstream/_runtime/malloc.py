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
#: glibc (2.35+) tunables a local cluster's workers start with: ``madvise(MADV_HUGEPAGE)`` on the
#: blocks malloc maps; blocks up to 64 MiB (a 2,048² two-band float32 tile is 32 MiB) served from
#: the heap instead of mapped afresh; up to 256 MiB of freed heap kept for the next tile
WORKER_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=67108864"
                   ":glibc.malloc.trim_threshold=268435456")
#: variables by which someone chose a process's allocator settings: left as they are
_CHOSEN = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

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


def worker_malloc_environ(environ: Mapping[str, Any], inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``environ`` (variables a dask worker process starts with: dask's ``pre-spawn-environ``) with
    ``GLIBC_TUNABLES=``:data:`WORKER_TUNABLES` and without dask's ``MALLOC_TRIM_THRESHOLD_`` —
    unless allocator settings (:data:`_CHOSEN`) are set already, there or in ``inherited`` (default
    ``os.environ``): whoever set them chose (and dask's nanny lets the environment's value win over
    its configuration's anyway).

    Why: a worker's tile-sized buffers (a tile read, its mask, an edge tile's padding) were
    ``malloc`` blocks mapped fresh for each tile and unmapped after it: dask sets
    ``MALLOC_TRIM_THRESHOLD_``, which also turns off glibc's rising mmap threshold, so each tile's
    32 MiB were faulted in again (on this VM, from the host). Huge pages first cut that (the
    ``local:2`` workers ingesting a 29,400 x 24,400 scene: 0.6 M page faults instead of 1.7 M, 15.1
    vs 17.2 s); serving them from the heap and keeping them, the same ingest took 10.1-10.7 s
    instead of 10.9-12.8 with 3.2-3.9 s of system time instead of 5.0-6.0 (2 alternating rounds,
    tiles written past the page cache), its peak RSS 820-870 MiB instead of 726 (the two workers'
    kept heaps). A tunable is read when a process starts, so it goes in the environment of
    processes still to be started; glibc before 2.35 ignores ``hugetlb``, other C libraries all.
    """
    inherited = os.environ if inherited is None else inherited
    chosen = {k: environ.get(k, inherited.get(k)) for k in _CHOSEN if k in environ or k in inherited}
    # (ours, left in this process's environment by the nanny of a cluster started before, is not a choice)
    if chosen and chosen != {"GLIBC_TUNABLES": WORKER_TUNABLES}:
        return dict(environ)
    return {**{k: v for k, v in environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}, "GLIBC_TUNABLES": WORKER_TUNABLES}


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

