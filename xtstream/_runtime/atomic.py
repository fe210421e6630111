"""Files replaced whole: write a temporary file beside the target, rename it over the target.

Readers see the old file or the new one, never half of one; a writer that fails (a full disk, an
exception) removes its temporary file instead of leaving it to fill the disk further.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield ``PATH{suffix}`` to write; on success rename it over ``path``, on failure remove it.

    >>> with replacing("run/config.yaml") as tmp:          # doctest: +SKIP
    ...     tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
