"""An authenticated, framed, persistent connection over asyncio streams.

:func:`open_connection` and :func:`accept_connection` run the handshake of
:mod:`dispy_core.protocol.handshake` with a deadline, then return a :class:`Connection`
whose frames carry a MAC (or, under TLS, rely on TLS). Nothing is unpickled here: payloads
come out as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TypeVar

from dispy_core.protocol import framing
from dispy_core.protocol.errors import ProtocolError, RemoteProtocolError
from dispy_core.protocol.framing import (
    DEFAULT_MAX_MESSAGE,
    FrameDecoder,
    FrameEncoder,
    MessageAuthenticator,
)
from dispy_core.protocol.handshake import Handshake, HandshakeFailed, parse_handshake
from dispy_core.protocol.messages import Message, Refused, Role, _Message, decode, encode

log = logging.getLogger(__name__)

READ_SIZE = 1 << 18

M = TypeVar("M", bound=_Message)


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (or it broke)."""


class PeerRefused(RemoteProtocolError):
    """The peer ended the session with a reason (e.g. the client does not want this node)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"peer closed the session: {reason}")
        self.reason = reason


class Connection:
    """One authenticated connection: send messages with payloads, receive them in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
        encoder: FrameEncoder,
        *,
        peer: tuple[str, int],
        peer_role: Role,
        peer_name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = decoder
        self._encoder = encoder
        self.peer = peer
        self.peer_role = peer_role
        self.peer_name = peer_name
        self.closed = False

    def __repr__(self) -> str:
        return f"<Connection {self.peer_role} {self.peer_name} at {self.peer[0]}:{self.peer[1]}>"

    def send_nowait(self, message: _Message, payload: framing.Buffer = b"") -> None:
        """Queue one message for sending; call :meth:`drain` to respect flow control."""
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer[0]}:{self.peer[1]} is closed")
        self._writer.writelines(self._encoder.encode(encode(message), payload))

    async def send(self, message: _Message, payload: framing.Buffer = b"") -> None:
        self.send_nowait(message, payload)
        await self.drain()

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from None

    async def recv(self) -> tuple[Message, bytes]:
        """The next message and its payload.

        Raises:
            ConnectionClosed: the peer went away.
            RemoteProtocolError: the peer sent something invalid (the caller should close).
        """
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                message = decode(frame.header)
                if isinstance(message, Refused):
                    raise PeerRefused(message.reason)
                return message, frame.payload
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                self.closed = True
                raise ConnectionClosed(str(exc)) from None
            if not data:
                self.closed = True
                raise ConnectionClosed(f"{self.peer[0]}:{self.peer[1]} closed the connection")
            self._decoder.feed(data)

    async def refuse(self, reason: str) -> None:
        """Tell the peer why the session ends, then close."""
        with contextlib.suppress(Exception):
            self._writer.writelines(self._encoder.encode(encode(Refused(reason=reason))))
            await asyncio.wait_for(self._writer.drain(), 1.0)
        await self.close()

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


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
) -> Connection:
    peername = writer.get_extra_info("peername") or ("?", 0)
    peer = (str(peername[0]), int(peername[1]))
    shake = Handshake(connector=connector, secret=secret, role=role, name=name)
    # Before authentication only tiny, payload-free frames are accepted.
    decoder = FrameDecoder(max_chunk=0, max_message=0, max_header=framing.HANDSHAKE_MAX_HEADER)
    encoder = FrameEncoder()

    def send_all(messages: list[_Message]) -> None:
        for m in messages:
            writer.writelines(encoder.encode(encode(m)))

    send_all(list(shake.initiate()))
    await writer.drain()
    while not shake.done:
        frame = decoder.next_frame()
        if frame is None:
            data = await reader.read(4096)
            if not data:
                raise ConnectionClosed(
                    f"{peer[0]}:{peer[1]} closed the connection during the handshake"
                )
            decoder.feed(data)
            continue
        try:
            replies = shake.receive(parse_handshake(frame.header))
        except HandshakeFailed as exc:
            if exc.reply is not None:
                send_all([exc.reply])
                with contextlib.suppress(Exception):
                    await writer.drain()
            raise
        send_all(list(replies))
        await writer.drain()
    assert shake.peer_role is not None
    assert shake.peer_name is not None
    decoder.max_chunk = framing.DEFAULT_MAX_CHUNK
    decoder.max_header = framing.MAX_HEADER
    decoder.max_message = max_message
    if not tls:
        send_key, recv_key = shake.session_keys()
        encoder.authenticator = MessageAuthenticator(send_key)
        decoder.authenticator = MessageAuthenticator(recv_key)
    return Connection(
        reader,
        writer,
        decoder,
        encoder,
        peer=peer,
        peer_role=shake.peer_role,
        peer_name=shake.peer_name,
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
) -> Connection:
    """Run the acceptor's handshake on a fresh server-side stream.

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
    max_message: int = DEFAULT_MAX_MESSAGE,
) -> Connection:
    """Connect to ``host:port`` and authenticate as the connector.

    Raises:
        OSError (unreachable), HandshakeFailed, RemoteProtocolError, ConnectionClosed,
        TimeoutError.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            local_addr=(local_addr, 0) if local_addr else None,
            limit=READ_SIZE,
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
            )
        except BaseException:
            writer.close()
            raise


__all__ = [
    "Connection",
    "ConnectionClosed",
    "PeerRefused",
    "ProtocolError",
    "accept_connection",
    "open_connection",
]
