"""The process a local cluster's workers are forked from, started while the caller plans its graph.

Why: a ``local:N`` worker spawned afresh imports distributed, xarray, zarr and rasterio before it
counts as up (1.1-1.2 s for two workers here, on top of 0.3 s to close them after the run).
multiprocessing's fork server imports them once, in a process started from a clean interpreter
(no threads, no open files of ours), and forks each worker from it: two workers were up in 0.13 s
and closed in 0.02 s. Started before an ingest plans, its imports overlap the planning.

Variables such as ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` are read when a process starts,
so a forked worker has those its server started with. The server is started with the environment
a spawned worker would get, and is used only while that environment is still the one wanted.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Mapping, Sequence

#: (pid, environment) of the fork server this module started; None before
_started: tuple[int, dict[str, str]] | None = None
_lock = threading.Lock()


def available() -> bool:
    """Whether this platform has multiprocessing's fork server (not Windows)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def start(environ: Mapping[str, object], preload: Sequence[str] = ()) -> bool:
    """Start (once per process) the fork server with ``os.environ`` plus ``environ``, importing
    ``preload`` and distributed; return whether workers forked from it now start with exactly that
    environment. ``False`` where there is no fork server, or one runs that another caller started
    or that started with other variables (the caller then spawns its workers).

    Returns without waiting for the imports: the first fork waits for them.
    """
    global _started
    if not available():
        return False
    from multiprocessing import forkserver

    wanted = {**os.environ, **{k: str(v) for k, v in environ.items()}}
    with _lock:
        server = forkserver._forkserver
        pid = getattr(server, "_forkserver_pid", None)
        if _started is None and pid is None:
            server.set_forkserver_preload(["distributed", *preload])
            changed = {k: os.environ.get(k) for k, v in wanted.items() if os.environ.get(k) != v}
            os.environ.update(wanted)  # the server inherits the environment it is started with
            try:
                forkserver.ensure_running()
            finally:
                for k, old in changed.items():
                    if old is None:
                        del os.environ[k]
                    else:
                        os.environ[k] = old
            _started = (server._forkserver_pid, wanted)
            return True
        if _started is None or pid != _started[0] or not _alive(pid):
            return False  # not ours, or restarted by multiprocessing with whatever environment it had
        return _started[1] == wanted


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False
