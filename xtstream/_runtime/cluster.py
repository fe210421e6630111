"""Where a dask graph runs: the same graph on local threads, a LocalCluster, or a remote scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from functools import partial
from typing import Any, Iterator, Sequence

import dask


@contextlib.contextmanager
def dask_client(scheduler: str | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for the local threaded scheduler).

    ``scheduler``: ``None``/``"threads"`` — threads in this process; ``"sync"`` — one thread,
    for debugging; ``"local"`` or ``"local:N"`` — a ``LocalCluster`` of N single-threaded worker
    processes (default: one per core); ``"tcp://host:port"`` (or any address) — an existing
    ``dask.distributed`` scheduler. Workers of a remote cluster must see the same file paths.
    """
    if scheduler in (None, "", "threads"):
        yield None
        return
    if scheduler == "sync":
        with dask.config.set(scheduler="sync"):
            yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local" or scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1]) if ":" in scheduler else (os.cpu_count() or 1)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    with Client(scheduler) as client:
        yield client


def run_graph(graph: dict, keys: Sequence[Any], client: Any = None, *, progress: bool = True,
              desc: str = "", threads: int | None = None) -> list[Any]:
    """Compute ``keys`` of a raw dask ``graph`` (culling the rest) with progress; return results.

    ``threads``: pool size of the local threaded scheduler (default: dask's, one per core);
    more than the cores pays off for tasks that wait on the disk.
    """
    if not keys:
        return []
    keys = list(keys)
    if client is None:
        from dask.threaded import get as threaded_get

        sync = dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded")
        getter = dask.get if sync else threaded_get
        if not sync and threads:
            getter = partial(threaded_get, num_workers=threads)
        if progress:
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc=desc or None, unit="chunk"):
                return list(getter(graph, keys))
        return list(getter(graph, keys))
    futures = client.get(graph, keys, sync=False)
    if progress:
        from distributed import progress as dist_progress

        dist_progress(futures)
    return client.gather(futures)
