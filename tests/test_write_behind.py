"""Writes behind the model: in order, bounded, and no error is lost."""

from __future__ import annotations

import threading
import time

import pytest

from xtstream._runtime.write_behind import WriteBehind


def test_calls_run_in_order_on_one_thread_and_flush_waits_for_them():
    seen, threads = [], set()

    def slow(k):
        time.sleep(0.002)
        seen.append(k)
        threads.add(threading.get_ident())

    with WriteBehind(depth=2) as w:
        for k in range(20):
            w.submit(slow, k)
        w.flush()
        assert seen == list(range(20))
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_an_error_is_raised_and_later_writes_are_not_applied():
    seen = []

    def write(k):
        if k == 3:
            raise OSError(28, "No space left on device")
        seen.append(k)

    w = WriteBehind(depth=1)
    with pytest.raises(OSError, match="No space"):
        for k in range(10):
            w.submit(write, k)
        w.flush()
    assert seen == [0, 1, 2]  # nothing after the failed write lands out of order
    w.close()


def test_the_queue_is_bounded():
    gate = threading.Event()
    w = WriteBehind(depth=2)
    w.submit(gate.wait)
    w.submit(lambda: None)
    w.submit(lambda: None)
    blocked = threading.Thread(target=w.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive()  # the producer waits: at most depth calls queued behind the running one
    gate.set()
    blocked.join(timeout=5)
    w.close()
