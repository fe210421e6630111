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
#: glibc (2.35+) tunable: ``madvise(MADV_HUGEPAGE)`` on the blocks malloc maps
HUGE_PAGES = "glibc.malloc.hugetlb=1"
#: dask's ``pre-spawn-environ`` default for a worker's ``MALLOC_TRIM_THRESHOLD_``
DASK_TRIM_THRESHOLD = 65536
#: a worker's malloc: blocks below this come from its heap, larger ones are mapped (and unmapped
#: when freed); GDAL's decoded blocks (1 MiB for a 512² float32 block) fall below it
WORKER_MMAP_THRESHOLD = 4 << 20
#: … and this much free memory may stay at the top of a heap: the blocks GDAL's cache holds for one
#: read (``geotiff.GDAL_CACHE_MB``, freed when the read closes its file) are reused by the next
WORKER_TRIM_THRESHOLD = 64 << 20

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


def huge_page_environ(environ: Mapping[str, Any], inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``environ`` (variables a new process starts with) plus ``GLIBC_TUNABLES=``:data:`HUGE_PAGES`,
    unless ``GLIBC_TUNABLES`` is set already, there or in ``inherited`` (default ``os.environ``):
    whoever set it chose their allocator's settings (and dask's nanny lets the environment's
    value win over its configuration's anyway).

    Why: a worker's per-tile codec buffers (blosc's ~32-MB output for a 2,048² two-band tile, the
    compressed copies) are ``malloc`` blocks mapped fresh for each tile and faulted in 4 KiB at a
    time; numpy already asks for huge pages for its arrays, glibc does not by default. With the
    tunable, the ``local:2`` workers ingesting a 29,400 x 24,400 scene took 0.6 M page faults
    instead of 1.7 M, and 12 % less time (15.1 vs 17.2 s, medians of 4 alternating runs).
    A tunable is read when a process starts, so it goes in the environment of processes still to
    be started; glibc before 2.35, other C libraries and kernels without transparent huge pages
    ignore it.
    """
    inherited = os.environ if inherited is None else inherited
    if "GLIBC_TUNABLES" in environ or "GLIBC_TUNABLES" in inherited:
        return dict(environ)
    return {**environ, "GLIBC_TUNABLES": HUGE_PAGES}


def heap_reuse_environ(environ: Mapping[str, Any], inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``environ`` (variables a dask worker starts with) with dask's ``MALLOC_TRIM_THRESHOLD_``
    (:data:`DASK_TRIM_THRESHOLD`) replaced by :data:`WORKER_TRIM_THRESHOLD` and
    ``MALLOC_MMAP_THRESHOLD_`` set to :data:`WORKER_MMAP_THRESHOLD`; as it is where the user set
    either (there, or in ``inherited``, default ``os.environ``) or removed dask's.

    Why: dask's 64 KiB makes a worker hand back every freed heap page at once (and, set at all,
    it stops glibc raising its mmap threshold). Each read of a GeoTIFF tile closes its file, and
    GDAL frees the blocks it decoded into its cache: the next tile's blocks were fresh memory,
    faulted in and zeroed by the kernel again: 1,600 page faults a 2,048² two-band tile in a
    ``local:N`` worker, 70-140 with these two. A 29,400 × 24,400 scene, cluster up, 2 alternating
    rounds: the workers' system time 1.3-1.6 s instead of 2.2-2.4 s, their GDAL reads 12-15 % shorter;
    ``local:1`` 12.4-12.5 s instead of 12.9-13.1, ``local:2`` 7.3-7.5 s instead of 7.9-8.3; each
    worker's peak RSS 195-199 MiB instead of 193-196. What a heap may keep is bounded (64 MiB at
    its top), and buffers of 4 MiB and more (a tile's) are unmapped when freed, as before.
    """
    inherited = os.environ if inherited is None else inherited
    mine = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
    if any(k in inherited for k in mine) or "MALLOC_MMAP_THRESHOLD_" in environ or \
            str(environ.get("MALLOC_TRIM_THRESHOLD_")) != str(DASK_TRIM_THRESHOLD):
        return dict(environ)
    return {**environ, "MALLOC_TRIM_THRESHOLD_": WORKER_TRIM_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_": WORKER_MMAP_THRESHOLD}


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

