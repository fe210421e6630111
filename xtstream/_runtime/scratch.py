"""Arrays a thread keeps from one tile to the next instead of allocating them afresh.

Why: a fresh tile-sized array is memory the kernel must find and zero again, page by page (or
2 MiB at a time: numpy asks for huge pages), every tile — after the arrays are freed, glibc hands
large blocks back at once, and a dask worker trims its heap after every free. Under ``perf``, 16-18 %
of an ingest's CPU time (threads and ``local:2`` workers alike) was ``clear_page_erms`` behind
GDAL's copy into each tile's fresh read array. A kept buffer is faulted in once.
"""

from __future__ import annotations

import threading
from typing import Hashable

import numpy as np

_kept = threading.local()
#: names kept per thread; a thread asking for more starts over (a long-lived worker thread that
#: served many layouts does not keep them all)
MAX_NAMES = 8


def thread_array(name: Hashable, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """A C-contiguous ``shape`` array of ``dtype``, its contents undefined: the front of a flat
    buffer this thread keeps under ``name``, grown when asked for more.

    Valid until this thread asks for ``name`` again: only for arrays that do not outlive the
    caller's step (an ingest task's read block and mask), never for what is returned or cached.
    """
    dtype = np.dtype(dtype)
    n = 1
    for side in shape:
        n *= int(side)
    buffers = getattr(_kept, "buffers", None)
    if buffers is None or (name not in buffers and len(buffers) >= MAX_NAMES):
        buffers = _kept.buffers = {}
    buf = buffers.get(name)
    if buf is None or buf.nbytes < n * dtype.itemsize:
        buf = buffers[name] = np.empty(max(n * dtype.itemsize, 1), np.uint8)
    return buf[: n * dtype.itemsize].view(dtype).reshape(shape)
