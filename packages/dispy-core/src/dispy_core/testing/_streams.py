"""asyncio streams wired back-to-back in memory: no socket, no port, no network.

Each :class:`MemoryWire` is one direction of the pipe. Tests may watch it (``record``), or
change what crosses it (``intercept``) to tamper with, drop or inspect bytes on the wire.
Bytes reach the other end in order on a later loop iteration, with the flow control of a
real transport (pause/resume reading and writing), so code that takes over the transport
(``set_protocol``) works on it as on a socket.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

Intercept = Callable[[bytes], bytes]
StreamEnd = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class MemoryWire:
    """One direction of an in-memory connection.

    Attributes:
        intercept: if set, called with each write's bytes; what it returns goes on the wire
            instead (``b""`` drops the write). Set it at any time, e.g. after a handshake.
        record: when not None, every byte put on the wire is appended here.
        delivered: bytes handed to the receiving protocol so far.
        closed: the writing end closed (or wrote EOF).
    """

    def __init__(self, *, record: bool = False) -> None:
        self.intercept: Intercept | None = None
        self.record: bytearray | None = bytearray() if record else None
        self.closed = False
        self.delivered = 0


_EOF = None  # marks the end of the stream in a receive queue


class _MemoryTransport(asyncio.Transport):
    """One end of an in-memory connection, with asyncio's transport semantics.

    Bytes written go through the wire into the peer's receive queue and reach the peer's
    protocol on a later loop iteration, in order. The peer may pause reading; its queue then
    grows until the writer's high-water mark, where the writer's protocol is told to pause
    writing (so ``drain`` waits), as with a socket whose peer does not read.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        wire: MemoryWire,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._protocol = protocol
        self._wire = wire
        self._closing = False
        self._lost = False
        self._reading = True
        self._queue: deque[bytes | None] = deque()  # received, not yet delivered
        self._queued = 0
        self._flush_scheduled = False
        self._high = 1 << 20
        self._low = 1 << 18
        self._write_paused = False
        self.peer: _MemoryTransport | None = None

    # -- protocol -----------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._wire.closed:
            return  # like a socket already shut down: the bytes are lost
        chunk = bytes(data)
        if self._wire.intercept is not None:
            chunk = self._wire.intercept(chunk)
        if not chunk:
            return
        if self._wire.record is not None:
            self._wire.record += chunk
        peer = self.peer
        if peer is not None and not peer._lost:
            peer._receive(chunk)
            if peer._queued > self._high and not self._write_paused:
                self._write_paused = True
                self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._wire.closed:
            return
        self._wire.closed = True
        peer = self.peer
        if peer is not None and not peer._lost:
            peer._receive(_EOF)

    def get_write_buffer_size(self) -> int:
        peer = self.peer
        return peer._queued if peer is not None and not peer._lost else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = (1 << 20) if high is None else high
        self._low = self._high // 4 if low is None else low

    def _writable_again(self) -> None:
        if self._write_paused and self.get_write_buffer_size() <= self._low:
            self._write_paused = False
            if not self._lost:
                self._protocol.resume_writing()

    # -- reading ------------------------------------------------------------------------

    def _receive(self, item: bytes | None) -> None:
        self._queue.append(item)
        self._queued += len(item) if item is not None else 0
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._reading and self._queue:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queue and self._reading and not self._lost:
            item = self._queue.popleft()
            if item is _EOF:
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
                if not keep_open:
                    self.close()
                break
            self._queued -= len(item)
            self._wire_in().delivered += len(item)
            _deliver(self._protocol, item)
        if self.peer is not None:
            self.peer._writable_again()

    def _wire_in(self) -> MemoryWire:
        assert self.peer is not None
        return self.peer._wire

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule_flush()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- closing ------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.write_eof()
        self._loop.call_soon(self._connection_lost)

    def abort(self) -> None:
        self.close()

    def _connection_lost(self) -> None:
        if not self._lost:
            self._lost = True
            self._queue.clear()
            self._queued = 0
            if self.peer is not None:
                self.peer._writable_again()
            self._protocol.connection_lost(None)


def _deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand received bytes to a protocol, as asyncio's transports do for either kind."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        target = memoryview(protocol.get_buffer(len(view)))
        take = min(len(target), len(view))
        target[:take] = view[:take]
        protocol.buffer_updated(take)
        view = view[take:]


def memory_stream_pair(
    *,
    limit: int = 1 << 18,
    names: tuple[tuple[str, int], tuple[str, int]] = (("memory-a", 1), ("memory-b", 2)),
    record: bool = False,
) -> tuple[StreamEnd, StreamEnd, tuple[MemoryWire, MemoryWire]]:
    """Two connected ``(reader, writer)`` ends and the two wires between them.

    Must be called with an event loop running. What end A writes, end B reads (through
    ``wires[0]``) and vice versa (``wires[1]``). Closing a writer delivers EOF to the other
    end. ``names`` become each end's ``sockname`` (and the other end's ``peername``).

    Example:
        >>> async def demo() -> bytes:
        ...     (ra, wa), (rb, wb), _ = memory_stream_pair()
        ...     wa.write(b"ping")
        ...     return await rb.readexactly(4)
        >>> asyncio.run(demo())
        b'ping'
    """
    loop = asyncio.get_running_loop()
    wires = (MemoryWire(record=record), MemoryWire(record=record))
    ends: list[StreamEnd] = []
    transports: list[_MemoryTransport] = []
    for index in (0, 1):
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        extra = {"sockname": names[index], "peername": names[1 - index]}
        transport = _MemoryTransport(loop, protocol, wires[index], extra)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        ends.append((reader, writer))
        transports.append(transport)
    transports[0].peer, transports[1].peer = transports[1], transports[0]
    return ends[0], ends[1], wires
