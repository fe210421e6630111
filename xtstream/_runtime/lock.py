"""One run per output: an advisory lock file inside each output directory.

Two runs writing one output (a scene store, a shard directory, a prediction directory, a training
run directory) would interleave their writes: each resumes "its" run, marks units the other wrote,
or replaces files under the other's feet. :func:`output_lock` makes the second run refuse cleanly::

    OUT/.xtstream.lock     {"pid": 4121, "host": "node7", "what": "shards", "since": "…"}

The lock is ``fcntl.flock`` on that file, not the file's existence: the kernel releases it when the
holding process dies, however it dies (SIGKILL included), so a lock file left by a dead run never
blocks the next one. The JSON only names the holder in the loser's message. Processes forked while
a lock is held (DataLoader workers) close their copy at once, so that they do not keep a dead
parent's lock alive. Locks are advisory and local to what the file system honours (``flock`` on
NFS is emulated with POSIX locks since Linux 2.6.12).

A run removes its lock file when it ends (while still holding it: whoever opened the old file
finds it replaced and retries), so finished outputs hold none — zarr would warn about a stray file
in a store — and an output made only for the lock (the run failed before writing anything) is
removed too, so a refused command leaves no empty directory behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import stat
from pathlib import Path
from typing import Iterator

from xtstream.errors import OutputBusyError, XTStreamError

LOCK_FILE = ".xtstream.lock"

_held: set[int] = set()  # descriptors of locks this process holds (closed in forked children)


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holds_only_lock(path: str | Path) -> bool:
    """True when the directory ``path`` is empty but for a lock file: nothing of a run is there."""
    return all(p.name == LOCK_FILE for p in Path(path).iterdir())


@contextlib.contextmanager
def output_lock(path: str | Path, what: str, *, error: type[XTStreamError] = XTStreamError) -> Iterator[Path]:
    """Hold the lock of the output directory ``path`` (created if needed) while the block runs.

    ``what`` names the output in messages (``"scene store"``, ``"shard directory"``…); ``error``
    is raised when ``path`` exists and is not a directory. Raises
    :class:`~xtstream.errors.OutputBusyError` (exit code 4) when another live process holds it,
    naming its pid and host. Yields ``path``.

    >>> with output_lock("shards/", "shard directory"):   # doctest: +SKIP
    ...     write_shards()
    """
    path = Path(path)
    try:  # one stat, not exists() then is_dir(): a releasing racer may remove the directory between
        is_file = not stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        is_file = False
    if is_file:
        raise error(f"{path}: exists and is a file, not a directory; choose another output for the {what}")
    fd, created = _acquire(path, what)
    try:
        yield path
    finally:
        _release(fd, path, created)


def _acquire(out: Path, what: str) -> tuple[int, bool]:
    """Make ``out``, open and flock its lock file; ``(fd, whether out was made here)``. Retries when
    a releasing holder removed the file (or the directory it had made) under us."""
    lock = out / LOCK_FILE
    for _ in range(100):
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory went between mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputBusyError(f"{out}: the {what} is in use by {_holder(lock)}; wait for that run to "
                                  "finish or stop it (a lock left by a dead process never blocks)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we raced removed the file on release: lock the current one
    else:  # pragma: no cover - a hundred removals in a row
        raise OutputBusyError(f"{out}: could not take the lock of the {what} ({lock} keeps being replaced)")
    _held.add(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd, created


def _release(fd: int, out: Path, created: bool) -> None:
    try:
        (out / LOCK_FILE).unlink(missing_ok=True)  # still held: see the module docstring
        if created and not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass  # releasing must not hide the run's own outcome; closing releases the lock anyway
    finally:
        _held.discard(fd)
        os.close(fd)


def _holder(lock: Path) -> str:
    """``pid N on host H (since T)`` from the lock file, as far as it can be read."""
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process (it has not written its pid yet)"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')}{since}"
