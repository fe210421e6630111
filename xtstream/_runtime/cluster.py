"""Where a dask graph runs: the same graph on local threads, a LocalCluster, or a remote scheduler."""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import dask

from xtstream import errors
from xtstream._runtime import fork_server
from xtstream._runtime.malloc import heap_reuse_environ, huge_page_environ

#: ``Name('message')``: how dask.distributed hands back an exception it could not unpickle
_FLATTENED = re.compile(r"(?P<name>[A-Za-z_]\w*)\((?P<args>.*)\)", re.S)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, preload: Sequence[str] = ()) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for the local threaded scheduler).

    ``scheduler``: ``None``/``"threads"`` — threads in this process; ``"sync"`` — one thread,
    for debugging; ``"local"`` or ``"local:N"`` — a ``LocalCluster`` of N single-threaded worker
    processes (default: one per core); ``"tcp://host:port"`` (or any address) — an existing
    ``dask.distributed`` scheduler. Workers of a remote cluster must see the same file paths.
    With a distributed scheduler, its dashboard's address is printed to stderr (a local
    cluster's dashboard runs on a free port when ``bokeh`` is installed). ``preload``: modules
    a local cluster's workers import as they start (:func:`local_cluster`).
    """
    if scheduler in (None, "", "threads"):
        yield None
        return
    if scheduler == "sync":
        with dask.config.set(scheduler="sync"):
            yield None
        return
    from distributed import Client

    if scheduler == "local" or scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1]) if ":" in scheduler else (os.cpu_count() or 1)
        with local_cluster(n, preload, dashboard=_has_bokeh()) as cluster, Client(cluster) as client:
            announce_dashboard(client, scheduler)
            yield client
        return
    with Client(scheduler) as client:
        announce_dashboard(client, scheduler)
        yield client


@contextlib.contextmanager
def local_cluster(n: int, preload: Sequence[str] = (), *, dashboard: bool = False) -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of ``n`` single-threaded worker processes, as ``local:N`` runs
    start it: its workers' malloc backs large blocks by huge pages (:func:`worker_environ`), they
    import the ``preload`` modules before they count as up, and they are forked from a server that
    has imported them already (:mod:`xtstream._runtime.fork_server`; spawned where there is none,
    or where dask's ``distributed.worker.multiprocessing-method`` is set to other than its default).

    Why preload: a worker otherwise imports the task's modules (xarray, zarr, rasterio: 0.5 s
    here) when it unpickles its first task, so the first tasks of a run started 0.6 s after the
    planning ended; an archive of four 8,192² scenes took 4.2-4.5 s on ``local:2`` instead of
    5.0-5.2 s, once the cluster was up.
    """
    from distributed import LocalCluster

    environ = worker_environ()
    config = {"distributed.nanny.pre-spawn-environ": environ}
    if prestart(f"local:{n}", preload):
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    with dask.config.set(config), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, preload=list(preload),
                         dashboard_address=":0" if dashboard else None, silence_logs=logging.ERROR) as cluster:
        yield cluster


def prestart(scheduler: str | None, preload: Sequence[str] = ()) -> bool:
    """For a ``local``/``local:N`` scheduler, start the process its workers will be forked from
    (importing ``preload``) and return at once, so that the imports overlap what the caller does
    next (an ingest's planning); return whether the workers will be forked. Anything else: ``False``."""
    if not (scheduler == "local" or (scheduler or "").startswith("local:")):
        return False
    if dask.config.get("distributed.worker.multiprocessing-method", "spawn") != "spawn":
        return False  # the user's choice of how workers start
    return fork_server.start(worker_environ(), preload)


def worker_environ() -> dict[str, Any]:
    """The variables a local cluster's workers start with: dask's ``pre-spawn-environ``, the huge
    pages tunable (:func:`~xtstream._runtime.malloc.huge_page_environ`), malloc thresholds that
    let a heap reuse what it freed (:func:`~xtstream._runtime.malloc.heap_reuse_environ`) and, as
    dask's nanny sets it for spawned workers, ``PYTHONHASHSEED`` (the same string hashes in every
    worker)."""
    _distributed_defaults()
    environ = heap_reuse_environ(huge_page_environ(dask.config.get("distributed.nanny.pre-spawn-environ", {})))
    if environ.get("PYTHONHASHSEED") in (None, "0"):
        environ["PYTHONHASHSEED"] = "6640"  # dask's own choice
    return environ


@functools.lru_cache(maxsize=None)
def _distributed_defaults() -> None:
    """Load distributed's configuration defaults (the workers' ``pre-spawn-environ`` among them)
    as importing it does, without the import (0.25-0.6 s, 14 ms for its YAML): the fork server
    starts with them before this process has imported distributed."""
    if "distributed" in sys.modules:
        return
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("distributed")
    if spec is None or not spec.submodule_search_locations:
        return
    with open(os.path.join(spec.submodule_search_locations[0], "distributed.yaml")) as f:
        dask.config.update_defaults(yaml.safe_load(f))


def announce_dashboard(client: Any, scheduler: str) -> str | None:
    """Print ``client``'s dashboard address to stderr (or that there is none); return it."""
    link = dashboard_link(client)
    if link:
        print(f"dask dashboard ({scheduler}): {link}", file=sys.stderr, flush=True)
    else:
        print(f"dask scheduler {scheduler}: no dashboard (install bokeh where the scheduler runs for one)",
              file=sys.stderr, flush=True)
    return link


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of ``client``'s scheduler, or ``None`` when it serves none.

    A scheduler without bokeh still runs its HTTP server (health, metrics) under the service
    name "dashboard", and dask's own link then leads to a 404: that answer drops it. A link this
    process cannot reach (a proxy, a firewall) is kept: it may still serve the user's browser.
    """
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - a scheduler that cannot say has no link to give
        return None
    if "dashboard" not in services:
        return None
    link = client.dashboard_link
    return None if _answers_not_found(link) else link


def _answers_not_found(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers HTTP 404, asked directly (past any proxy of the environment's) and
    by ``HEAD``: 2 ms, where a ``GET`` of the dashboard's page made bokeh render it (0.3 s)."""
    import urllib.error
    import urllib.request

    head = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(head, timeout=timeout):
            return False
    except urllib.error.HTTPError as err:
        return err.code == 404
    except (OSError, ValueError):
        return False


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


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
        sync = dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded")
        if progress:
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc=desc or None, unit="chunk"):
                return _local_get(graph, keys, sync, threads)
        return _local_get(graph, keys, sync, threads)
    futures = submit_graph(graph, keys, client)
    if progress:
        from distributed import progress as dist_progress

        dist_progress(futures)
    return gather_graph(futures, client)


def submit_graph(graph: dict, keys: Sequence[Any], client: Any) -> list[Any]:
    """Start computing ``keys`` of ``graph`` on ``client``'s cluster; their futures, in order."""
    return client.get(graph, list(keys), sync=False)


def gather_graph(futures: list[Any], client: Any) -> list[Any]:
    """The results of :func:`submit_graph`'s ``futures``; a worker's error is raised as the error it
    was (see :func:`unflatten`), a module it could not import named, and what has not started yet
    is cancelled."""
    try:
        return client.gather(futures)
    except Exception as err:
        client.cancel(futures)  # what has not started yet: the run has failed
        missing = missing_module(err)
        if missing is not None:
            raise errors.SourceError(
                f"dask workers cannot import module '{missing}' ({type(err).__name__}: {err}): a custom "
                "source's class must be importable where the workers run — install its module there or "
                "put its directory on their PYTHONPATH (a class defined in the script itself travels "
                "with the graph) — or run with --scheduler threads") from err
        original = unflatten(err)
        if original is err:
            raise
        raise original from err


def missing_module(err: BaseException) -> str | None:
    """The module a worker could not import when unpickling a task (``ModuleNotFoundError``, or
    the same flattened to text by dask.distributed), else ``None``."""
    if isinstance(err, ModuleNotFoundError):
        return err.name
    m = re.search(r"No module named '([\w.]+)'", str(err))
    return m.group(1) if m and (isinstance(err, ImportError) or type(err) is Exception) else None


def _local_get(graph: dict, keys: list, sync: bool, threads: int | None) -> list[Any]:
    """Compute ``keys`` in this process: one thread (``sync``) or a pool of its own.

    The pool is this call's, so that when a task fails, the tasks still running finish (a shard
    writer removes its partial file on failure) before the error is reported, instead of going on
    in the background of a command that has already returned.
    """
    if sync:
        return list(dask.get(graph, keys))
    from dask.system import CPU_COUNT
    from dask.threaded import get as threaded_get

    try:  # dask's own pool class carries context variables into its threads
        from dask.threaded import ContextAwareThreadPoolExecutor as Pool
    except ImportError:  # pragma: no cover - older dask
        Pool = ThreadPoolExecutor
    pool = Pool(threads or dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        result = list(threaded_get(graph, keys, pool=pool))
    except Exception:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:  # Ctrl-C: do not wait for the running tasks
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return result


def unflatten(err: BaseException) -> BaseException:
    """The exception a dask worker raised, rebuilt when dask.distributed could send only its text.

    A worker's exception travels pickled; when that fails (a chained third-party exception that
    does not unpickle, e.g. GDAL's ``CPLE_AppDefinedError`` behind a ``SourceError``) the client
    gets a bare ``Exception("SourceError('…')")``, and the command would end in a traceback instead
    of the error's one line. xtstream's own errors and the built-in ``OSError`` family are rebuilt
    from that text (class by name, arguments parsed as literals); anything else is returned as is.
    """
    if type(err) is not Exception or len(err.args) != 1 or not isinstance(err.args[0], str):
        return err
    m = _FLATTENED.fullmatch(err.args[0].strip())
    if m is None:
        return err
    cls = getattr(errors, m["name"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.XTStreamError)):
        cls = getattr(builtins, m["name"], None)
        if not (isinstance(cls, type) and issubclass(cls, OSError)):
            return err
    try:
        args = ast.literal_eval(f"({m['args']},)") if m["args"].strip() else ()
        return cls(*args)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return err
