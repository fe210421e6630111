"""Run an ``xtstream`` command the way a user does — its own process, its exit code, its stderr —
and classify how it ended; optionally kill it, or fill its disk, at a chosen moment.

Commands run in a child *forked* from the battery's process, which has imported xtstream, torch
and zarr once: a fresh interpreter spends 2-5 s importing per command, and the battery runs
hundreds. The child is what a killed run is: a process (and process group: dask workers too) that
receives SIGKILL, whose locks the kernel drops. The parent keeps torch to one thread (forked
children of a process with a running OpenMP pool can hang) and runs nothing multi-threaded.

Outcomes (what the battery counts):

* ``ok`` — the right result (or the damage repaired);
* ``clear_error`` — a documented exit code (2, 3, 4) and a last stderr line
  ``xtstream CMD: error: …`` naming the path, no traceback;
* ``silent_loss`` — success exit with wrong or missing data;
* ``unclear_error`` — a traceback, a crash (a signal), a hang, or an error that names no path.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import threading
import resource
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

OUTCOMES = ("ok", "clear_error", "silent_loss", "unclear_error")
DOCUMENTED_EXIT = {2, 3, 4}
#: address space a child may take: a bad input must not make the battery swap the machine
MEMORY_LIMIT = 6 << 30


@dataclass
class Run:
    """How one command ended. ``code``: exit status, or minus the signal that ended it."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    wall_s: float
    killed: bool = False  # by us, as asked (``kill_after``)
    timed_out: bool = False
    disk_full_at: str | None = None  # the file whose write ran out of the injected disk budget
    bytes_written: int = 0  # under the budget's root (a run without a budget counts too)
    files_written: int = 0  # files opened for writing there

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Case:
    """One fault tried: its kind (the table's row), what was done, and how it ended."""

    fault: str
    detail: str
    outcome: str
    note: str = ""
    runs: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.fault, "detail": self.detail, "outcome": self.outcome, "note": self.note,
                "runs": self.runs}


def preload() -> None:
    """Import once, in the battery's process, what the commands import (forked children inherit
    it), and keep torch to one thread so that forking stays safe."""
    import importlib

    import torch

    torch.set_num_threads(1)
    for name in ("xtstream.cli", "xtstream.cli.ingest", "xtstream.cli.shard", "xtstream.cli.predict",
                 "xtstream.cli.train", "xtstream.cli.synth", "xtstream.engine.run", "xtstream.engine.predict",
                 "xtstream.tasks.xview3", "xtstream.tasks.classification", "xtstream.data.ingest",
                 "xtstream.data.shards", "timm.models.convnext", "distributed", "matplotlib.pyplot"):
        importlib.import_module(name)
    import matplotlib

    matplotlib.use("Agg")


def classify_error(run: Run, *paths: str | Path) -> tuple[str, str]:
    """``(outcome, note)`` of a run that did not succeed: ``clear_error`` when it ended with a
    documented exit code and one ``xtstream …: error:`` line naming one of ``paths`` (any path,
    when none is given), else ``unclear_error`` saying why."""
    if run.timed_out:
        return "unclear_error", f"hung (killed after {run.wall_s:.0f} s)"
    if run.code < 0:
        return "unclear_error", f"crashed: signal {-run.code}"
    if "Traceback (most recent call last)" in run.stderr:
        return "unclear_error", "traceback: " + run.last_line[:300]
    if run.code not in DOCUMENTED_EXIT:
        return "unclear_error", f"exit {run.code}: {run.last_line[:300]}"
    line = run.last_line
    if not line.startswith("xtstream ") or ": error: " not in line:
        return "unclear_error", f"exit {run.code} without an error line: {line[:300]}"
    # the full path, or a file's own name (``1.tar``, ``zarr.json``; not a bare directory name
    # like ``run``, which a message might hold by chance)
    named = [str(p) for p in paths] + [Path(p).name for p in paths if Path(p).suffix]
    if paths and not any(p in line for p in named):
        return "unclear_error", f"error names none of {named}: {line[:300]}"
    return "clear_error", line[:300]


def summary(run: Run) -> dict[str, Any]:
    """What the JSON keeps of a run."""
    return {"argv": run.argv, "code": run.code, "wall_s": round(run.wall_s, 2), "killed": run.killed,
            "timed_out": run.timed_out, "disk_full_at": run.disk_full_at, "last_line": run.last_line[:400]}


def run_command(argv: Sequence[str], *, kill_after: float | None = None, timeout: float = 180,
                disk_budget: int | None = None, budget_root: str | Path | None = None,
                full_at_file: int | None = None,
                setup: Callable[[], None] | None = None,
                watch: Callable[[int, float], None] | None = None) -> Run:
    """Run ``xtstream argv…`` in a forked child; wait for it, or SIGKILL its process group after
    ``kill_after`` seconds. ``disk_budget``: bytes the child may write under ``budget_root`` before
    every further write fails with ENOSPC (a disk filling up); or ``full_at_file``: the disk is full
    from the first write into the N-th file opened there on (so that small writers — markers,
    manifests, logs — get their turn as often as big ones); writes are counted either way.
    ``setup``: called in the child first (e.g. to inject a fault); ``watch(pid, seconds)``: called
    in the parent while the child runs (e.g. to kill one of its dask workers)."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="xtstream-fault-") as tmp:
        out_path, err_path, info_path = (Path(tmp) / n for n in ("stdout", "stderr", "info.json"))
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(argv, out_path, err_path, info_path, disk_budget, budget_root, setup, full_at_file)
        killed = timed_out = False
        status = 0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            elapsed = time.monotonic() - start
            if kill_after is not None and elapsed >= kill_after and not killed:
                _killpg(pid)
                killed = True
            elif elapsed >= timeout and not timed_out:
                _killpg(pid)
                timed_out = True
            elif watch is not None and not killed:
                watch(pid, elapsed)
            time.sleep(0.005)
        _killpg(pid)  # whatever the command started (dask workers) goes with it
        wall = time.monotonic() - start
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return Run(argv, code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                   wall, killed=killed, timed_out=timed_out, disk_full_at=info.get("disk_full_at"),
                   bytes_written=int(info.get("bytes_written", 0)), files_written=int(info.get("files_written", 0)))


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child(argv: list[str], out_path: Path, err_path: Path, info_path: Path, disk_budget: int | None,
           budget_root: str | Path | None, setup: Callable[[], None] | None, full_at_file: int | None) -> None:
    code = 1
    try:
        os.setsid()  # its own process group: a kill takes its dask workers too
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _vm_size() + MEMORY_LIMIT
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        if budget_root is not None:
            _install_budget(Path(budget_root), disk_budget, info_path, full_at_file)
        if setup is not None:
            setup()
        from xtstream.cli import main

        try:
            code = main(argv)
        except SystemExit as err:  # argparse, or a command's own exit
            code = err.code if isinstance(err.code, int) else 1
            if err.code is not None and not isinstance(err.code, int):
                print(err.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(int(code) if code is not None else 0)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


# -- a disk that fills up ------------------------------------------------------------------------

class _Budget:
    def __init__(self, root: Path, budget: int | None, info_path: Path, full_at_file: int | None):
        self.root, self.left, self.info_path, self.written = str(root.resolve()), budget, info_path, 0
        self.full_at_file, self.files = full_at_file, 0
        self.hit: str | None = None
        # the command's threads write at once: one at a time here (two saves at once left the
        # info file as one record over the tail of a longer one)
        self.lock = threading.RLock()

    def opened(self) -> int:
        with self.lock:
            self.files += 1
            self.save()
            return self.files

    def take(self, path: str, n: int, file_no: int) -> None:
        with self.lock:
            if self.full_at_file is not None and file_no >= self.full_at_file:
                self.left = 0
            if self.left is not None and n > self.left:
                self.left = 0
                if self.hit is None:
                    self.hit = path
                self.save()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self.left is not None:
                self.left -= n
            self.written += n
            self.save()

    def save(self) -> None:
        with self.lock:
            self.info_path.write_text(json.dumps({"disk_full_at": self.hit, "bytes_written": self.written,
                                                  "files_written": self.files}))


class _Limited:
    """A file object whose writes draw on the budget."""

    def __init__(self, f: Any, path: str, budget: _Budget):
        self._f, self._path, self._budget = f, path, budget
        self._no = budget.opened()

    def write(self, data: Any) -> int:
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        self._budget.take(self._path, n, self._no)
        return self._f.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_Limited":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self):
        return iter(self._f)


def _install_budget(root: Path, budget: int | None, info_path: Path, full_at_file: int | None) -> None:
    """Make every file opened for writing under ``root`` draw on ``budget`` bytes (``None``: count
    only); past it, a write raises ENOSPC — wherever the command writes: zarr tiles, markers, shard
    tars, manifests, CSVs, checkpoints, logs."""
    state = _Budget(root, budget, info_path, full_at_file)
    state.save()
    real_open = builtins.open

    def limited_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_open(file, mode, *args, **kw)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.abspath(os.fspath(file))
            if path.startswith(state.root + os.sep):
                return _Limited(f, path, state)
        return f

    builtins.open = limited_open
    io.open = limited_open

    # files written with os.open/os.write (the ingest's direct, O_DIRECT tile writes) draw on it too
    real_os_open, real_os_write, real_os_close = os.open, os.write, os.close
    tracked: dict[int, tuple[str, int]] = {}

    def limited_os_open(file: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = real_os_open(file, flags, mode, **kw)
        if flags & (os.O_WRONLY | os.O_RDWR) and isinstance(file, (str, os.PathLike)) and not kw:
            path = os.path.abspath(os.fspath(file))
            if path.startswith(state.root + os.sep):
                tracked[fd] = (path, state.opened())
        return fd

    def limited_os_write(fd: int, data: Any) -> int:
        if fd in tracked:
            path, no = tracked[fd]
            state.take(path, memoryview(data).nbytes, no)
        return real_os_write(fd, data)

    def limited_os_close(fd: int) -> None:
        tracked.pop(fd, None)
        real_os_close(fd)

    os.open, os.write, os.close = limited_os_open, limited_os_write, limited_os_close
