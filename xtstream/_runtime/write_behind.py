"""Run writes in one background thread, a bounded number behind their producer.

Why: streaming prediction alternates model forwards with Zarr writes of the outputs; written in
line, the writes (encoding, checksums, zarr-python's own event loop) took a fifth of the time on
CPU while the model waited. A writer thread a few calls behind overlaps them with the next
forward; the bound keeps at most ``depth`` chunks' outputs alive, and :meth:`WriteBehind.flush`
waits for every write (and re-raises the first error) before anything relies on them.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_STOP = object()


class WriteBehind:
    """``submit(fn, *args)`` returns at once (blocking only while ``depth`` calls wait); calls run
    in submission order on one thread. ``flush()`` waits for all of them and raises the first
    error of any; after an error every later call is skipped, never half-applied out of order.

    >>> with WriteBehind(depth=2) as w:        # doctest: +SKIP
    ...     for chunk in chunks:
    ...         w.submit(writer.write, chunk)
    ...     w.flush()                          # the writes are all done here
    """

    def __init__(self, depth: int = 2, name: str = "xtstream-writer") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                fn, args = item
                if self._error is None:
                    try:
                        fn(*args)
                    except BaseException as err:  # noqa: BLE001 - re-raised by flush() / submit()
                        self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises an earlier call's error instead, if one failed."""
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("WriteBehind: the writer thread has stopped")
        self._queue.put((fn, args))

    def flush(self) -> None:
        """Wait until every submitted call has run; raise the first error of any."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Finish the queued calls and stop the thread (errors: see :meth:`flush`)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: stop quietly, keep the first error
            self._error = None
            try:
                self.close()
            except BaseException:  # noqa: BLE001
                pass
