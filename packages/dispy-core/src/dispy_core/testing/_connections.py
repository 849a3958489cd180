"""Two authenticated :class:`~dispy_core.aio.connection.Connection` objects, in memory.

The pair runs the real handshake code of :mod:`dispy_core.aio.connection` over
:func:`~dispy_core.testing.memory_stream_pair`, so a client, node or scheduler can talk to
a test (or to each other) in one event loop without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import TracebackType

from dispy_core.aio.connection import Connection
from dispy_core.aio.handshake import _handshake, accept_connection
from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE
from dispy_core.protocol.messages import Role
from dispy_core.testing._streams import MemoryWire, StreamEnd, memory_stream_pair


class PairHandshakeError(Exception):
    """The handshake of a memory pair failed on at least one side.

    Attributes:
        connector_error: what the connecting side raised (None if it succeeded).
        acceptor_error: what the accepting side raised (None if it succeeded).
    """

    def __init__(
        self, connector_error: BaseException | None, acceptor_error: BaseException | None
    ) -> None:
        parts = []
        if connector_error is not None:
            parts.append(f"connector: {type(connector_error).__name__}: {connector_error}")
        if acceptor_error is not None:
            parts.append(f"acceptor: {type(acceptor_error).__name__}: {acceptor_error}")
        super().__init__("handshake failed; " + "; ".join(parts))
        self.connector_error = connector_error
        self.acceptor_error = acceptor_error


@dataclass(eq=False)
class ConnectionPair:
    """A connected pair and the wires between them.

    ``connector`` opened the connection (a node connecting back to a client, say);
    ``acceptor`` accepted it. ``to_acceptor`` carries what the connector writes and
    ``to_connector`` the reverse; set their ``intercept`` to tamper with the traffic.
    Unpacks as ``connector, acceptor = pair``.
    """

    connector: Connection
    acceptor: Connection
    to_acceptor: MemoryWire
    to_connector: MemoryWire

    def __iter__(self) -> Iterator[Connection]:
        return iter((self.connector, self.acceptor))

    async def aclose(self) -> None:
        """Close both ends."""
        await self.connector.close()
        await self.acceptor.close()


async def _side(
    end: StreamEnd,
    *,
    connector: bool,
    secret: str,
    role: Role,
    name: str,
    timeout: float,
    max_message: int,
) -> Connection:
    reader, writer = end
    try:
        if connector:
            async with asyncio.timeout(timeout):
                return await _handshake(
                    reader,
                    writer,
                    connector=True,
                    secret=secret,
                    role=role,
                    name=name,
                    tls=False,
                    max_message=max_message,
                    allocate=None,
                )
        return await accept_connection(
            reader,
            writer,
            secret=secret,
            role=role,
            name=name,
            timeout=timeout,
            max_message=max_message,
        )
    except BaseException:
        writer.close()  # the peer sees EOF instead of waiting for its deadline
        raise


async def open_memory_connection_pair(
    secret_a: str,
    secret_b: str | None = None,
    *,
    role_a: Role = "node",
    role_b: Role = "client",
    name_a: str = "a",
    name_b: str = "b",
    timeout: float = 5.0,
    max_message: int = DEFAULT_MAX_MESSAGE,
    record: bool = False,
) -> ConnectionPair:
    """Run the real handshake between two in-memory ends; return the connected pair.

    Side A is the connector, side B the acceptor (as when a node connects back to a client).

    Args:
        secret_a: the connector's secret.
        secret_b: the acceptor's secret; the same as ``secret_a`` when None.
        role_a: the connector's role.
        role_b: the acceptor's role.
        name_a: the connector's name (the acceptor's ``peer_name``).
        name_b: the acceptor's name (the connector's ``peer_name``).
        timeout: handshake deadline of each side, seconds.
        max_message: the largest message either side accepts after the handshake.
        record: keep every byte that crosses each wire (``pair.to_acceptor.record``).

    Raises:
        PairHandshakeError: carrying what each side raised.
    """
    end_a, end_b, (to_b, to_a) = memory_stream_pair(names=((name_a, 1), (name_b, 2)), record=record)
    results = await asyncio.gather(
        _side(
            end_a,
            connector=True,
            secret=secret_a,
            role=role_a,
            name=name_a,
            timeout=timeout,
            max_message=max_message,
        ),
        _side(
            end_b,
            connector=False,
            secret=secret_a if secret_b is None else secret_b,
            role=role_b,
            name=name_b,
            timeout=timeout,
            max_message=max_message,
        ),
        return_exceptions=True,
    )
    conn_a, conn_b = results
    if isinstance(conn_a, Connection) and isinstance(conn_b, Connection):
        return ConnectionPair(conn_a, conn_b, to_b, to_a)
    for conn in results:
        if isinstance(conn, Connection):
            await conn.close()
    raise PairHandshakeError(
        None if isinstance(conn_a, Connection) else conn_a,
        None if isinstance(conn_b, Connection) else conn_b,
    )


class memory_connection_pair:  # lower case: used like a function (await it or `async with`)
    """Open an authenticated in-memory pair; see :func:`open_memory_connection_pair`.

    Await it for a :class:`ConnectionPair`, or use it as an async context manager, which
    closes both ends on exit.

    Example:
        >>> from dispy_core.protocol.messages import Notice
        >>> async def demo() -> str:
        ...     async with memory_connection_pair("secret") as (node, client):
        ...         await node.send(Notice(text="hi"), b"payload")
        ...         message, payload = await client.recv()
        ...         return f"{message.type} {payload!r}"
        >>> asyncio.run(demo())
        "notice b'payload'"
    """

    def __init__(
        self,
        secret_a: str,
        secret_b: str | None = None,
        *,
        role_a: Role = "node",
        role_b: Role = "client",
        name_a: str = "a",
        name_b: str = "b",
        timeout: float = 5.0,
        max_message: int = DEFAULT_MAX_MESSAGE,
        record: bool = False,
    ) -> None:
        self._open = functools.partial(
            open_memory_connection_pair,
            secret_a,
            secret_b,
            role_a=role_a,
            role_b=role_b,
            name_a=name_a,
            name_b=name_b,
            timeout=timeout,
            max_message=max_message,
            record=record,
        )
        self._pair: ConnectionPair | None = None

    def __await__(self) -> Generator[object, None, ConnectionPair]:
        return self._open().__await__()

    async def __aenter__(self) -> ConnectionPair:
        self._pair = await self._open()
        return self._pair

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pair is not None:
            with contextlib.suppress(Exception):
                await self._pair.aclose()
            self._pair = None
