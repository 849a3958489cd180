"""Reuse of large receive buffers (dispy_core.buffers)."""

from __future__ import annotations

import pytest

from dispy_core.buffers import BufferPool

SIZE = 1 << 20


def owner(view: bytearray | memoryview) -> int:
    """Which kept buffer ``view`` is over (its id: holding the buffer would keep it busy)."""
    assert isinstance(view, memoryview)
    assert isinstance(view.obj, bytearray)
    return id(view.obj)


def test_buffer_has_the_size_asked_for():
    pool = BufferPool()
    buf = pool.take(SIZE + 5)
    assert len(buf) == SIZE + 5
    buf[-1] = 7  # writable


def test_idle_buffer_is_reused():
    pool = BufferPool()
    first = pool.take(SIZE)
    kept = owner(first)
    del first
    again = pool.take(SIZE)
    assert owner(again) == kept


def test_buffer_in_use_is_never_handed_out_again():
    pool = BufferPool()
    first = pool.take(SIZE)
    second = pool.take(SIZE)
    assert owner(first) != owner(second)


@pytest.mark.parametrize(
    "holder",
    [
        lambda buf: buf,  # the view itself
        lambda buf: buf[10:20],  # a slice of it
        lambda buf: [memoryview(buf)],  # a view in a container
        lambda buf: (1, buf),  # a tuple (untracked by the garbage collector)
    ],
    ids=["view", "slice", "list", "tuple"],
)
def test_any_remaining_reference_keeps_a_buffer_from_reuse(holder):
    pool = BufferPool()
    buf = pool.take(SIZE)
    kept = owner(buf)
    hold = holder(buf)
    del buf
    assert owner(pool.take(SIZE)) != kept
    del hold
    assert owner(pool.take(SIZE)) == kept


def test_nearly_equal_sizes_share_a_buffer():
    pool = BufferPool()
    first = pool.take(SIZE + 3)
    kept = owner(first)
    del first
    smaller = pool.take(SIZE)
    assert owner(smaller) == kept
    assert len(smaller) == SIZE


def test_much_smaller_request_gets_a_new_buffer():
    pool = BufferPool()
    first = pool.take(SIZE)
    kept = owner(first)
    del first
    assert owner(pool.take(SIZE // 2)) != kept


def test_small_sizes_are_not_pooled():
    pool = BufferPool(min_size=4096)
    small = pool.take(100)
    assert isinstance(small, bytearray)
    assert pool.kept_bytes == 0


def test_pool_keeps_at_most_max_bytes_dropping_idle_buffers_first():
    pool = BufferPool(max_bytes=3 * SIZE)
    held = [pool.take(SIZE), pool.take(SIZE)]
    assert pool.kept_bytes == 2 * SIZE
    del held[0]
    bigger = pool.take(2 * SIZE)  # drops the idle one to stay within max_bytes
    assert pool.kept_bytes == 3 * SIZE
    over = pool.take(2 * SIZE)  # nothing idle: served, but not kept
    assert pool.kept_bytes == 3 * SIZE
    assert len(over) == 2 * SIZE
    del bigger


def test_clear_forgets_buffers_but_leaves_them_valid():
    pool = BufferPool()
    buf = pool.take(SIZE)
    buf[0] = 1
    pool.clear()
    assert pool.kept_bytes == 0
    assert buf[0] == 1
    assert owner(pool.take(SIZE)) != owner(buf)


def test_trim_drops_idle_buffers_least_recently_used_first():
    pool = BufferPool()
    old, mid, new = pool.take(SIZE), pool.take(2 * SIZE), pool.take(3 * SIZE)
    ids = owner(old), owner(mid), owner(new)
    del old, new
    pool.trim(5 * SIZE)  # drops the least recently used idle one: the first
    assert pool.kept_bytes == 5 * SIZE
    pool.trim(0)  # the one in use stays
    assert pool.kept_bytes == 2 * SIZE
    assert owner(mid) == ids[1]
