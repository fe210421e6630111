"""Failed file-system writes as one clear line: an ``OSError`` becomes an :class:`OutputError`.

A full disk, a read-only mount or a missing permission surface deep inside zarr, tarfile or
torch as a bare ``OSError`` — often without a file name (``write()`` failing with ENOSPC names
none). :func:`writing` wraps a command's writes and turns such an error into an
:class:`~xtstream.errors.OutputError` (exit code 3) that names the file, or else the output, says
what happened in words and what to do; the ``OSError`` stays as its ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from xtstream.errors import OutputError

_FREE = "free some space, then rerun the same command: it resumes where it stopped"
_WRITABLE = "choose an output you can write to, or fix its permissions"
#: errno -> (what happened, what to do)
REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device (disk full)", _FREE),
    errno.EDQUOT: ("disk quota exceeded", _FREE),
    errno.EFBIG: ("file too large for this file system", "write to another file system"),
    errno.EROFS: ("read-only file system", _WRITABLE),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose another output path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter output path"),
    errno.EIO: ("input/output error", "check the disk (dmesg), then rerun the same command"),
}


def output_error(err: OSError, out: str | Path | None = None) -> OutputError | None:
    """The :class:`OutputError` for ``err`` (``None`` when its errno is not a file-system refusal
    listed in :data:`REASONS`). Names ``err.filename``, else ``out``."""
    reason = REASONS.get(err.errno) if isinstance(err, OSError) else None
    if reason is None:
        return None
    what, todo = reason
    path = err.filename if err.filename is not None else out
    where = f"{path}: " if path is not None else ""
    writing = f" (writing {out})" if out is not None and path is not None and str(path) != str(out) else ""
    return OutputError(f"{where}{what}{writing}; {todo}")


@contextlib.contextmanager
def writing(out: str | Path) -> Iterator[None]:
    """Run the block; re-raise a file-system refusal (:data:`REASONS`) as an :class:`OutputError`
    naming the file or ``out``. Other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        new = output_error(err, out)
        if new is None:
            raise
        raise new from err
