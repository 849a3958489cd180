"""asyncio streams wired back-to-back in memory: no socket, no port, no network.

Each :class:`MemoryWire` is one direction of the pipe. Tests may watch it (``record``), or
change what crosses it (``intercept``) to tamper with, drop or inspect bytes on the wire.
Writes are delivered immediately and in order; there is no flow control (``drain`` never
waits), which keeps tests fast and deterministic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Intercept = Callable[[bytes], bytes]
StreamEnd = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class MemoryWire:
    """One direction of an in-memory connection.

    Attributes:
        intercept: if set, called with each write's bytes; what it returns is delivered
            instead (``b""`` drops the write). Set it at any time, e.g. after a handshake.
        record: when not None, every delivered byte is appended here.
        closed: the writing end closed (or wrote EOF).
    """

    def __init__(self, *, record: bool = False) -> None:
        self.intercept: Intercept | None = None
        self.record: bytearray | None = bytearray() if record else None
        self.closed = False
        self.delivered = 0


class _MemoryTransport(asyncio.Transport):
    """The writing side of one end: bytes go through a wire into the peer's protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.StreamReaderProtocol,
        wire: MemoryWire,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._protocol = protocol
        self._wire = wire
        self._closing = False
        self._lost = False
        self.peer: _MemoryTransport | None = None

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._wire.closed:
            return  # like a socket whose peer is gone: the bytes are lost
        chunk = bytes(data)
        if self._wire.intercept is not None:
            chunk = self._wire.intercept(chunk)
        if not chunk:
            return
        if self._wire.record is not None:
            self._wire.record += chunk
        self._wire.delivered += len(chunk)
        peer = self.peer
        if peer is not None and not peer._lost:
            peer._protocol.data_received(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._wire.closed:
            return
        self._wire.closed = True
        peer = self.peer
        if peer is not None and not peer._lost:
            self._loop.call_soon(peer._protocol.eof_received)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        del high, low

    # -- reading (no flow control: the reader's buffer simply grows) ----------------------

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing

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
            self._protocol.connection_lost(None)


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
