"""Large receive buffers, reused once nothing refers to them any more.

A fresh large buffer costs a page fault per 4 KiB the first time it is written, and the
kernel zeroes each page first: on virtual machines that costs more than moving the bytes
themselves. A node receives job after job (and result after result) of the same size, so
it takes its buffers from a :class:`BufferPool`, which hands out a buffer again only when
its reference count shows that the pool alone holds it: no frame, queue, memoryview or
transport still refers to it, so its old contents can no longer be seen by anyone.
"""

from __future__ import annotations

import sys

from dispy_core.protocol.framing import DIRECT_PAYLOAD


def _idle(bufs: list[bytearray], low: int, high: int, idle_refs: int) -> bytearray | None:
    """The first buffer with ``low <= len <= high`` that nothing but the pool refers to."""
    # The pool's list, the loop variable and getrefcount's argument: nothing else.
    for buf in bufs:
        if low <= len(buf) <= high and sys.getrefcount(buf) <= idle_refs:
            return buf
    return None


def _calibrate() -> int:
    """The reference count :func:`_idle` sees for a buffer only the pool holds."""
    probe = [bytearray(1)]
    refs = 0

    def count(bufs: list[bytearray]) -> None:
        nonlocal refs
        for buf in bufs:
            refs = sys.getrefcount(buf)

    count(probe)
    return refs


class BufferPool:
    """Hands out writable buffers of a requested size, reusing idle ones of about that size.

    A pooled buffer comes as a memoryview of exactly the size asked for, over a kept
    bytearray up to 1/16 larger (so jobs and results of nearly the same size share them).
    Small sizes (below ``min_size``) are plain new bytearrays. At most ``max_bytes`` of
    buffers are kept; past that the least recently used idle one is dropped, or, if all
    are in use, the new buffer is not kept.
    """

    def __init__(self, max_bytes: int = 256 << 20, min_size: int = DIRECT_PAYLOAD) -> None:
        self.max_bytes = max_bytes
        self.min_size = min_size
        self._bufs: list[bytearray] = []  # most recently used last
        self._kept = 0
        # Reuse depends on CPython's reference counts; elsewhere the pool only allocates.
        self._idle_refs = _calibrate() if sys.implementation.name == "cpython" else 0

    @property
    def kept_bytes(self) -> int:
        return self._kept

    def take(self, size: int) -> bytearray | memoryview:
        """A writable buffer of exactly ``size`` bytes (its contents are not cleared)."""
        if size < self.min_size or not self._idle_refs:
            return bytearray(size)
        found = _idle(self._bufs, size, size + size // 16, self._idle_refs)
        if found is not None:
            self._forget(found)
            self._bufs.append(found)
            self._kept += len(found)
            return memoryview(found)[:size]
        buf = bytearray(size)
        while self._kept + size > self.max_bytes:
            victim = _idle(self._bufs, 0, self.max_bytes, self._idle_refs)
            if victim is None:
                return buf
            self._forget(victim)
        self._bufs.append(buf)
        self._kept += size
        return memoryview(buf)

    def _forget(self, buf: bytearray) -> None:
        for index, kept in enumerate(self._bufs):
            if kept is buf:
                del self._bufs[index]
                self._kept -= len(buf)
                return

    def trim(self, max_bytes: int) -> None:
        """Drop idle buffers, least recently used first, until at most ``max_bytes`` are kept."""
        while self._kept > max_bytes:
            victim = _idle(self._bufs, 0, self.max_bytes, self._idle_refs)
            if victim is None:
                return
            self._forget(victim)

    def clear(self) -> None:
        """Forget every buffer (those still in use stay valid for their holders)."""
        self._bufs.clear()
        self._kept = 0
