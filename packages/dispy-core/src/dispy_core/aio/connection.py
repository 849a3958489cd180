"""An authenticated, framed, persistent connection over an asyncio transport.

:func:`~dispy_core.aio.handshake.open_connection` and
:func:`~dispy_core.aio.handshake.accept_connection` (in :mod:`dispy_core.aio.handshake`, and
importable from here too) run the handshake on asyncio streams, with a deadline; the
transport is then handed to a :class:`Connection`, an :class:`asyncio.Protocol` that parses
frames as bytes arrive. A caller either pulls messages with :meth:`Connection.recv`, or hands every
message, in order, to a handler with :meth:`Connection.serve`: the handler runs inside the
protocol callback, so a message is acted on in the same event-loop turn it arrives in.
Nothing is unpickled here: payloads come out as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dispy_core.protocol import framing
from dispy_core.protocol.errors import ProtocolError, RemoteProtocolError
from dispy_core.protocol.framing import (
    Frame,
    FrameDecoder,
    FrameEncoder,
    Outgoing,
    Payload,
)
from dispy_core.protocol.messages import (
    Message,
    Refused,
    Role,
    _Message,
    clip,
    decode,
    encode,
)

if TYPE_CHECKING:
    from dispy_core.aio.handshake import accept_connection, open_connection

log = logging.getLogger(__name__)

M = TypeVar("M", bound=_Message)

# What a stream reader may hold during the handshake (it stops reading at twice this): the
# handshake's frames are at most 4106 bytes, and a peer that has not authenticated must not
# make us buffer more (see dispy_core.aio.admission).
HANDSHAKE_READ_LIMIT = 8 << 10
# Stop reading from a peer when this much is received but not yet consumed.
PAUSE_READING_AT = 32 << 20
# A peer that does not take our bytes for this long is treated as gone.
WRITE_TIMEOUT = 60.0
# Frames above this are streamed, slice by slice, as the peer takes them.
STREAM_ABOVE = 256 << 10
STREAM_SLICE = 256 << 10
CLOSE_FLUSH_TIMEOUT = 5.0

Handler = Callable[[Message, Payload], Awaitable[Any] | None]


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (or it broke)."""


class PeerRefused(RemoteProtocolError):
    """The peer ended the session with a reason (e.g. the client does not want this node)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"peer closed the session: {reason}")
        self.reason = reason


class Connection(asyncio.BufferedProtocol):
    """One authenticated connection: send messages with payloads, receive them in order."""

    def __init__(
        self,
        transport: asyncio.Transport,
        decoder: FrameDecoder,
        encoder: FrameEncoder,
        *,
        peer: tuple[str, int],
        peer_role: Role,
        peer_name: str,
        leftover: bytes = b"",
        keep: object = None,
    ) -> None:
        self._transport = transport
        self._decoder = decoder
        self._encoder = encoder
        self._keep = keep  # the handshake's stream objects, kept alive with the transport
        self.peer = peer
        self.peer_role = peer_role
        self.peer_name = peer_name
        self.closed = False
        self._error: BaseException | None = None
        self._eof: ConnectionClosed | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._handler: Handler | None = None
        # A handler's pending work: holds back later frames; referenced (asyncio's is weak).
        self._handling: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[Any] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._flushed_waiters: deque[asyncio.Future[None]] = deque()
        self._outq: deque[framing.Buffer] = deque()
        self._streamer: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        transport.set_protocol(self)
        # Pause as soon as the transport holds anything (high=1, not 0: a TLS transport
        # pauses at size >= high): the next slice is written only once the socket has taken
        # the last, so large payloads are never copied into the transport's own buffer.
        transport.set_write_buffer_limits(high=1, low=0)
        if leftover:
            self._decoder.feed(leftover)
        if not transport.is_reading() and not transport.is_closing():
            transport.resume_reading()

    def __repr__(self) -> str:
        return f"<Connection {self.peer_role} {self.peer_name} at {self.peer[0]}:{self.peer[1]}>"

    @property
    def local_address(self) -> tuple[str, int] | None:
        name = self._transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1])) if name else None

    def screen_payloads(self, screen: framing.Screen | None) -> None:
        """Drop, unread, every large payload for which ``screen(header, length)`` is True
        (asked once the frame's header is in, before any of its payload; the message is
        then handed over with an empty payload). E.g. a file over the receiver's limit."""
        self._decoder.screen = screen

    # -- asyncio.Protocol ---------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._decoder.buffer_updated(nbytes)
        if self._handler is not None:
            self._dispatch()
        else:
            self._wake()
        if (
            not self._paused_reading
            and self._decoder.backlog > PAUSE_READING_AT
            and (self._handler is None or self._handling is not None)
        ):
            self._paused_reading = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        where = f"{self.peer[0]}:{self.peer[1]}"
        # Frames that arrived before the close are still handed over first (_dispatch and
        # recv() raise this only once the decoder is empty).
        self._eof = ConnectionClosed(f"{where} closed the connection" if exc is None else str(exc))
        if self._handler is not None:
            self._dispatch()
        else:
            self._wake()
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionClosed(f"connection to {where} lost"))
        self._outq.clear()
        self._wake_flushed()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- sending ------------------------------------------------------------------------

    def send_nowait(self, message: _Message, payload: Outgoing = b"") -> None:
        """Queue one message for sending; call :meth:`drain` to respect flow control.

        ``payload`` is one buffer or a sequence of buffers sent one after the other (none
        is copied). Small messages go straight to the transport. A large payload is
        streamed slice by slice as the peer takes it (messages queued after it wait their
        turn), so it is never buffered a second time.
        """
        if self.closed or self._transport.is_closing():
            raise ConnectionClosed(f"connection to {self.peer[0]}:{self.peer[1]} is closed")
        buffers = self._encoder.encode(encode(message), payload)
        # Straight to the transport only when nothing is being streamed: the streamer may
        # be between two slices of a payload with nothing left queued behind it.
        if self._streamer is None and not self._paused_writing:
            size = 0
            for buf in buffers:
                size += len(buf)
            if size <= STREAM_ABOVE:
                self._transport.write(b"".join(buffers))
                return
        self._outq.extend(buffers)
        if self._streamer is None:
            self._streamer = asyncio.get_running_loop().create_task(self._stream())

    async def _stream(self) -> None:
        try:
            outq = self._outq
            while outq:
                if self._paused_writing:
                    await self._wait_writable()
                buf = outq.popleft()
                if len(buf) <= STREAM_SLICE:
                    # gather the small buffers that follow into one write
                    small = [buf]
                    while outq and len(outq[0]) <= STREAM_SLICE:
                        small.append(outq.popleft())
                    self._transport.write(b"".join(small) if len(small) > 1 else buf)
                    continue
                with memoryview(buf) as view:
                    view = view.cast("B")
                    for start in range(0, len(view), STREAM_SLICE):
                        if self._paused_writing:
                            await self._wait_writable()
                        self._transport.write(view[start : start + STREAM_SLICE])
        except (ConnectionClosed, OSError) as exc:
            self._outq.clear()
            self._fail(ConnectionClosed(str(exc)))
        except Exception as exc:
            # Not the network: a bug. The connection is unusable now; its owner (serve() or
            # the next recv()) gets the error, with its traceback, rather than a silent task.
            self._outq.clear()
            self._transport.abort()
            self._fail(exc)
        finally:
            self._streamer = None
            if not self._outq:
                self._wake_flushed()

    def _wake_flushed(self) -> None:
        while self._flushed_waiters:
            waiter = self._flushed_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_writable(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await waiter
        except TimeoutError:
            self._transport.abort()
            raise ConnectionClosed(
                f"{self.peer[0]}:{self.peer[1]} took no data for {WRITE_TIMEOUT:.0f} s"
            ) from None

    async def send(self, message: _Message, payload: Outgoing = b"") -> None:
        self.send_nowait(message, payload)
        await self.drain()

    async def drain(self) -> None:
        """Wait until queued frames are handed to the transport and its buffer is below its
        limit (bounded by WRITE_TIMEOUT)."""
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer[0]}:{self.peer[1]} is closed")
        if self._outq:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._flushed_waiters.append(waiter)
            await waiter
        if self._paused_writing:
            await self._wait_writable()
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer[0]}:{self.peer[1]} is closed")

    # -- receiving ----------------------------------------------------------------------

    def _next_frame(self) -> Frame | None:
        try:
            return self._decoder.next_frame()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def _resume_reading(self) -> None:
        if self._paused_reading and self._decoder.backlog < PAUSE_READING_AT // 2:
            self._paused_reading = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def expect(
        self,
        kind: type[M],
        timeout: float,
        logger: logging.Logger,
        what: str,
        on_refused: Callable[[str], None] | None = None,
    ) -> M | None:
        """The peer's first message, which must be a ``kind`` and come within ``timeout``.

        Anything else ends the connection (a refusal naming what was expected, or a close
        when the peer went silent, refused or broke), is logged once on ``logger`` as
        ``what`` failing, and gives None. A refusal's reason is also given to
        ``on_refused``, if any (a client keeps it for its no-node warning).
        """
        try:
            async with asyncio.timeout(timeout):
                msg, _ = await self.recv()
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            if on_refused is not None and isinstance(exc, PeerRefused):
                on_refused(exc.reason)
            logger.warning("%s from %s failed: %r", what, self.peer_name, exc)
            await self.close()
            return None
        if not isinstance(msg, kind):
            expected = kind.model_fields["type"].default
            await self.refuse(f"expected {expected}, got {msg.type}")
            return None
        return msg

    async def recv(self) -> tuple[Message, Payload]:
        """The next message and its payload.

        Raises:
            ConnectionClosed: the peer went away.
            PeerRefused: the peer ended the session (with its reason).
            RemoteProtocolError: the peer sent something invalid (the caller should close).
        """
        if self._handler is not None:
            raise RuntimeError("recv() while serve() is running")
        while True:
            frame = self._next_frame()
            if frame is not None:
                self._resume_reading()
                message = decode(frame.header)
                if isinstance(message, Refused):
                    raise PeerRefused(message.reason)
                return message, frame.payload
            if self._error is not None:
                raise self._error
            if self._eof is not None:
                raise self._eof
            self._waiter = asyncio.get_running_loop().create_future()
            self._resume_reading()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def serve(self, handler: Handler) -> Any:
        """Hand every message to ``handler(message, payload)``, in order, until stopped.

        The handler runs inside the protocol callback. If it returns an awaitable, later
        messages wait until that finishes, so order is kept. Returns the value given to
        :meth:`finish`.

        Raises:
            ConnectionClosed, PeerRefused, RemoteProtocolError: as :meth:`recv`; also any
            exception the handler raised.
        """
        if self._error is not None:
            raise self._error
        self._handler = handler
        self._done = asyncio.get_running_loop().create_future()
        try:
            self._dispatch()
            return await self._done
        finally:
            self._handler = None
            self._done = None

    async def serve_until_end(
        self, handler: Handler, *, log: logging.Logger, peer: str, side: str
    ) -> str:
        """:meth:`serve` until the connection ends; return why, in words for a log line.

        A protocol error from the peer, or an exception in ``handler`` (a bug of this side,
        logged once with its traceback as ``"<side> error: ..."``), refuses the peer with the
        reason: that connection ends and whoever owns it goes on.
        """
        try:
            await self.serve(handler)
            return "connection closed"
        except ConnectionClosed as exc:
            return f"connection lost: {exc}"
        except PeerRefused as exc:
            return exc.reason
        except ProtocolError as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("%s: error while handling its messages", peer)
            reason = f"{side} error: {type(exc).__name__}: {exc}"
        await self.refuse(clip(reason, 1000))
        return reason

    def finish(self, value: Any = None) -> None:
        """End :meth:`serve`; messages after this stay queued for the next reader."""
        done = self._done
        self._handler = None
        if done is not None and not done.done():
            done.set_result(value)

    def _dispatch(self) -> None:
        while self._handler is not None and self._handling is None:
            try:
                frame = self._decoder.next_frame()
                if frame is None:
                    if self._eof is not None:
                        self._fail(self._eof)
                    break
                message = decode(frame.header)
            except RemoteProtocolError as exc:
                self._fail(exc)
                return
            if isinstance(message, Refused):
                self._fail(PeerRefused(message.reason))
                return
            try:
                pending = self._handler(message, frame.payload)
            except Exception as exc:
                self._fail(exc)
                return
            if pending is not None:
                self._handling = asyncio.ensure_future(pending)
                self._handling.add_done_callback(self._handler_done)
        self._resume_reading()

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._handling = None
        if task.cancelled():
            self._fail(ConnectionClosed("message handler cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)
            return
        self._dispatch()

    def fail(self, exc: BaseException) -> None:
        """End :meth:`serve` (or the next :meth:`recv`) with ``exc``, as if a handler had
        raised it: for work done outside the handler (a task) that must end the session."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        done = self._done
        if done is not None and not done.done():
            done.set_exception(self._error)
        self._handler = None
        self._wake()

    # -- closing ------------------------------------------------------------------------

    async def refuse(self, reason: str) -> None:
        """Tell the peer why the session ends, then close."""
        with contextlib.suppress(Exception):
            self.send_nowait(Refused(reason=clip(reason, 1024)))
        await self.close()

    async def close(self) -> None:
        """Close after handing over what is queued (briefly: a stuck peer is cut off)."""
        if self._outq and not self.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drain(), CLOSE_FLUSH_TIMEOUT)
        self.closed = True
        if not self._transport.is_closing():
            self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), 1.0)
        except TimeoutError:
            # The peer takes no more bytes (a stopped process): drop what is buffered.
            self._transport.abort()


def __getattr__(name: str) -> Any:
    # The handshake functions moved to dispy_core.aio.handshake, which builds Connections
    # and so imports this module; they stay importable from here, resolved on first use
    # so that neither module imports the other while it is being loaded.
    if name in _HANDSHAKE_NAMES:
        from dispy_core.aio import handshake

        return getattr(handshake, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HANDSHAKE_NAMES = frozenset({"accept_connection", "open_connection"})

__all__ = [
    "Connection",
    "ConnectionClosed",
    "PeerRefused",
    "ProtocolError",
    "accept_connection",
    "open_connection",
]
