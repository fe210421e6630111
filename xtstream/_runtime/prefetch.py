"""Run an iterator in a background thread, a bounded number of items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, TypeVar

T = TypeVar("T")


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def prefetched(iterator: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``iterator`` in a background thread, at most ``depth`` items ahead; errors propagate."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Raised(err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="xtstream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


