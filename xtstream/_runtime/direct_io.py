"""Write a file past the page cache (``O_DIRECT``): for bulk output that is written once and not
read back soon — an ingest's tiles.

Why: a buffered write copies the bytes into page-cache pages the kernel must first find and zero;
writing a whole scene's store that way filled gigabytes of fresh pages, and on this machine's VM,
whose host takes back the guest's freed memory, each of them was faulted in anew: copying a tile's
bytes into the page cache (``copy_folio_from_iter_atomic``) was a quarter of all CPU time of an
ingest, and its system time varied two-fold from run to run. Written with ``O_DIRECT`` from one
buffer each thread keeps, the disk reads the bytes where they are: an ingest of a 29,400 x 24,400
scene spent 2.4-4.8 s of system time instead of 10-21 s (see the README's ingest benchmark).

The cost: the write waits for the disk (buffered writes return at memory speed and leave the disk
work to write-back), and the file is not in the page cache afterwards. Where ``O_DIRECT`` is not
available (the platform, or a file system that refuses it) nothing is written and the caller
writes the usual way.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: the file's length is written padded to this (and then truncated): a multiple of any disk's
#: logical block size that ``O_DIRECT`` requires of a write's length, offset and memory address
ALIGN = 4096

_scratch = threading.local()


def write_direct(path: str | Path, parts: Sequence[Any]) -> bool:
    """Write ``parts`` (bytes-like buffers) in order as the file ``path`` (created or truncated),
    with ``O_DIRECT``; ``True`` once written. ``False`` where ``O_DIRECT`` is refused (the platform
    has none, the file system does not take it): then ``path`` may exist, empty or partly
    written, and the caller writes it again without. Other errors (a full disk) are raised.

    The file is assembled in this thread's :func:`aligned_scratch` buffer — a part already in
    place there (a compressor's output written into it) is not copied — written whole, padded to
    :data:`ALIGN`, and the file then truncated to its length.
    """
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return False
    arrays = [np.frombuffer(p, np.uint8) for p in parts]
    n = sum(a.nbytes for a in arrays)
    padded = -(-n // ALIGN) * ALIGN
    buf = aligned_scratch(n)
    base, at = buf.ctypes.data, 0
    for i, a in enumerate(arrays):  # a part in the buffer but not where it goes: copied out first
        if base <= a.ctypes.data < base + buf.nbytes and a.ctypes.data != base + at:
            arrays[i] = a.copy()
        at += a.nbytes
    at = 0
    for a in arrays:
        if a.nbytes and a.ctypes.data != base + at:
            ctypes.memmove(base + at, a.ctypes.data, a.nbytes)  # without the GIL, unlike a slice copy
        at += a.nbytes
    buf[n:padded] = 0  # the tail past the file's end: cut off below, but not stale bytes meanwhile
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
    except OSError as err:
        if err.errno == errno.EINVAL:  # a file system without O_DIRECT
            return False
        raise
    try:
        view, done = memoryview(buf), 0
        while done < padded:
            done += os.write(fd, view[done:padded])
        os.ftruncate(fd, n)
    except OSError as err:
        if err.errno == errno.EINVAL:  # an alignment this file system's device does not take
            return False
        raise
    finally:
        os.close(fd)
    return True


def aligned_scratch(nbytes: int) -> np.ndarray:
    """This thread's page-aligned scratch buffer (``uint8``), room for ``nbytes`` rounded up to
    :data:`ALIGN` plus :data:`ALIGN` more: a compressor's output of up to ``nbytes`` written at its
    start leaves room for short trailing parts (a checksum) and the padding of a direct write.

    Kept for the thread's life and grown when asked for more (anonymous memory, page-aligned; its
    pages faulted in once). What it holds is valid until the thread uses it again."""
    need = -(-nbytes // ALIGN) * ALIGN + ALIGN
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.nbytes < need:
        buf = _scratch.buf = np.frombuffer(mmap.mmap(-1, need), np.uint8)
    return buf
