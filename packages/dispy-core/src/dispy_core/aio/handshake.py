"""The handshake of :mod:`dispy_core.protocol.handshake`, run on asyncio streams.

:func:`open_connection` (the connector) and :func:`accept_connection` (the acceptor) drive
the sans-I/O :class:`~dispy_core.protocol.handshake.Handshake` over a stream pair, under a
deadline, with a small frame buffer until the peer has authenticated; on success the
transport, with the keys of the session and any bytes already read, becomes a
:class:`~dispy_core.aio.connection.Connection`. Acceptors do not call
:func:`accept_connection` directly but through :class:`dispy_core.aio.admission.Admission`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from dispy_core.aio.connection import HANDSHAKE_READ_LIMIT, Connection, ConnectionClosed
from dispy_core.protocol import framing
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.framing import (
    DEFAULT_MAX_MESSAGE,
    Frame,
    FrameDecoder,
    FrameEncoder,
    MessageAuthenticator,
)
from dispy_core.protocol.handshake import Handshake, HandshakeFailed, LoopGuard, parse_handshake
from dispy_core.protocol.messages import Refused, Role, _Message, encode


async def _read_frame(reader: asyncio.StreamReader, decoder: FrameDecoder) -> Frame:
    """Read exactly one handshake frame, so no byte after it is taken from the stream."""
    prefix = await reader.readexactly(framing.PREFIX_SIZE)
    decoder.feed(prefix)
    _magic, _flags, hlen, plen = framing._PREFIX.unpack(prefix)
    frame = decoder.next_frame()  # validates magic and sizes from the prefix alone
    if frame is not None:
        return frame
    decoder.feed(await reader.readexactly(hlen + plen))
    frame = decoder.next_frame()
    if frame is None:
        raise RemoteProtocolError("incomplete handshake frame")
    return frame


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    connector: bool,
    secret: str,
    role: Role,
    name: str,
    tls: bool,
    max_message: int,
    allocate: Callable[[int], bytearray | memoryview] | None,
    guard: LoopGuard | None = None,
) -> Connection:
    peername = writer.get_extra_info("peername") or ("?", 0)
    peer = (str(peername[0]), int(peername[1]))
    shake = Handshake(connector=connector, secret=secret, role=role, name=name, guard=guard)
    # Before authentication only tiny, payload-free frames are accepted, into a small buffer.
    decoder = FrameDecoder(
        max_message=0,
        max_header=framing.HANDSHAKE_MAX_HEADER,
        scratch_size=framing.HANDSHAKE_SCRATCH,
    )
    encoder = FrameEncoder()

    def send_all(messages: list[_Message]) -> None:
        for m in messages:
            writer.writelines(encoder.encode(encode(m)))

    send_all(list(shake.initiate()))
    await writer.drain()
    while not shake.done:
        try:
            frame = await _read_frame(reader, decoder)
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(
                f"{peer[0]}:{peer[1]} closed the connection during the handshake"
            ) from None
        try:
            replies = shake.receive(parse_handshake(frame.header))
        except HandshakeFailed as exc:
            if exc.reply is not None:
                send_all([exc.reply])
                with contextlib.suppress(Exception):
                    await writer.drain()
            raise
        except RemoteProtocolError as exc:
            # e.g. a peer of another protocol version: tell it why before closing
            send_all([Refused(reason=str(exc))])
            with contextlib.suppress(Exception):
                await writer.drain()
            raise
        send_all(list(replies))
        await writer.drain()
    assert shake.peer_role is not None
    assert shake.peer_name is not None
    decoder.max_header = framing.MAX_HEADER
    decoder.max_message = max_message
    decoder.grow_scratch(framing.SCRATCH_SIZE)
    if allocate is not None:
        decoder.allocate = allocate
    if not tls:
        send_key, recv_key = shake.session_keys()
        encoder.authenticator = MessageAuthenticator(send_key)
        decoder.authenticator = MessageAuthenticator(recv_key)
    # Bytes the peer sent right after the handshake sit in the stream's buffer; they move
    # to the connection with the transport (no await in between, so none can slip by).
    leftover = bytes(getattr(reader, "_buffer", b""))
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    return Connection(
        transport,
        decoder,
        encoder,
        peer=peer,
        peer_role=shake.peer_role,
        peer_name=shake.peer_name,
        leftover=leftover,
        keep=(reader, writer),
    )


async def accept_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    secret: str,
    role: Role,
    name: str,
    timeout: float,
    max_message: int = DEFAULT_MAX_MESSAGE,
    allocate: Callable[[int], bytearray | memoryview] | None = None,
    guard: LoopGuard | None = None,
) -> Connection:
    """Run the acceptor's handshake on a fresh server-side stream.

    ``allocate(size)`` gives the buffers large payloads are received into (default: a new
    bytearray each). ``guard``: shared by every handshake of a service that both connects
    and accepts, so its own connections looped back to it are refused.

    Raises:
        HandshakeFailed, RemoteProtocolError, ConnectionClosed, TimeoutError.
    """
    tls = writer.get_extra_info("ssl_object") is not None
    async with asyncio.timeout(timeout):
        return await _handshake(
            reader,
            writer,
            connector=False,
            secret=secret,
            role=role,
            name=name,
            tls=tls,
            max_message=max_message,
            allocate=allocate,
            guard=guard,
        )


async def open_connection(
    host: str,
    port: int,
    *,
    secret: str,
    role: Role,
    name: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    local_addr: str | None = None,
    local_port: int = 0,
    max_message: int = DEFAULT_MAX_MESSAGE,
    allocate: Callable[[int], bytearray | memoryview] | None = None,
    guard: LoopGuard | None = None,
) -> Connection:
    """Connect to ``host:port`` and authenticate as the connector (``allocate`` and
    ``guard``: as :func:`accept_connection`). The connection leaves from ``local_addr``
    (any address when None) and ``local_port`` (any port when 0).

    Raises:
        OSError (unreachable), HandshakeFailed, RemoteProtocolError, ConnectionClosed,
        TimeoutError.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            local_addr=(local_addr or "0.0.0.0", local_port) if local_addr or local_port else None,
            limit=HANDSHAKE_READ_LIMIT,
        )
        try:
            return await _handshake(
                reader,
                writer,
                connector=True,
                secret=secret,
                role=role,
                name=name,
                tls=ssl_context is not None,
                max_message=max_message,
                allocate=allocate,
                guard=guard,
            )
        except BaseException:
            writer.close()
            raise


__all__ = ["accept_connection", "open_connection"]
