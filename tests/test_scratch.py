"""Arrays a thread keeps from one tile to the next (xtstream._runtime.scratch)."""

import threading

import numpy as np
import pytest

from xtstream._runtime import scratch


def test_a_kept_array_has_the_shape_and_dtype_asked_and_is_reused():
    a = scratch.thread_array("t-reuse", (2, 64, 48), "f4")
    assert a.shape == (2, 64, 48) and a.dtype == np.float32 and a.flags.c_contiguous
    a[...] = 7
    b = scratch.thread_array("t-reuse", (2, 30, 48), "f4")  # an edge tile: the front of the same memory
    assert b.shape == (2, 30, 48) and b.flags.c_contiguous
    assert np.shares_memory(a, b)
    assert scratch.thread_array("t-reuse", (3,), "u1").ctypes.data == a.ctypes.data  # any dtype, same buffer


def test_a_larger_request_grows_the_buffer_and_names_do_not_share():
    small = scratch.thread_array("t-grow", (4, 4), "f8")
    big = scratch.thread_array("t-grow", (64, 64), "f8")
    assert big.shape == (64, 64) and not np.shares_memory(small, big)
    other = scratch.thread_array("t-other", (64, 64), "f8")
    assert not np.shares_memory(big, other)


def test_each_thread_keeps_its_own():
    mine = scratch.thread_array("t-thread", (1024,), "f4")
    seen = []
    t = threading.Thread(target=lambda: seen.append(scratch.thread_array("t-thread", (1024,), "f4")))
    t.start()
    t.join()
    assert not np.shares_memory(mine, seen[0])


def test_a_thread_asking_for_many_names_starts_over():
    first = scratch.thread_array("t-many-0", (16,), "f4")
    for k in range(1, scratch.MAX_NAMES + 1):
        scratch.thread_array(f"t-many-{k}", (16,), "f4")
    assert not np.shares_memory(first, scratch.thread_array("t-many-0", (16,), "f4"))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), ()])
def test_empty_and_scalar_shapes(shape):
    a = scratch.thread_array("t-empty", shape, "f4")
    assert a.shape == shape

