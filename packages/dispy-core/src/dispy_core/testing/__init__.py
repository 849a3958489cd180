"""Helpers for testing dispy and code built on it, without a network.

* :func:`free_port` asks the kernel for an unused port (never hard-code one);
* :func:`wait_for` / :func:`async_wait_for` poll a condition with a deadline instead of
  sleeping a fixed time;
* :func:`memory_stream_pair` gives two asyncio stream ends wired back-to-back in memory,
  with hooks to record or tamper with the bytes on each wire;
* :func:`memory_connection_pair` runs the real handshake over such a pair and gives two
  authenticated :class:`~dispy_core.aio.connection.Connection` objects;
* :class:`HandshakePair` drives two sans-I/O handshakes to completion;
* :func:`async_test` runs an ``async def`` test in its own event loop with a deadline.

Example:
    >>> import asyncio
    >>> from dispy_core.protocol.messages import Notice
    >>> async def demo() -> str:
    ...     async with memory_connection_pair("secret") as (node, client):
    ...         await node.send(Notice(text="hello"))
    ...         message, _ = await client.recv()
    ...         return message.type
    >>> asyncio.run(demo())
    'notice'
"""

from dispy_core.testing._asyncio import async_test
from dispy_core.testing._connections import (
    ConnectionPair,
    PairHandshakeError,
    memory_connection_pair,
    open_memory_connection_pair,
)
from dispy_core.testing._handshake import HandshakePair, Sent
from dispy_core.testing._ports import free_port
from dispy_core.testing._streams import MemoryWire, memory_stream_pair
from dispy_core.testing._waiting import async_wait_for, wait_for

__all__ = [
    "ConnectionPair",
    "HandshakePair",
    "MemoryWire",
    "PairHandshakeError",
    "Sent",
    "async_test",
    "async_wait_for",
    "free_port",
    "memory_connection_pair",
    "memory_stream_pair",
    "open_memory_connection_pair",
    "wait_for",
]
