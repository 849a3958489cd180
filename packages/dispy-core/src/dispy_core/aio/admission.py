"""What a TCP acceptor spends on connections that have not authenticated yet.

:func:`start_server` gives every acceptor small stream buffers and, with TLS, a deadline on
the TLS handshake. :class:`Admission` caps unauthenticated connections per source address
and in all.

Every TCP acceptor (node, client, scheduler) asks :meth:`Admission.enter` as a connection
arrives, before the handshake, and calls :meth:`Admission.leave` once the handshake is over,
whether it succeeded or not. A connection over either cap is closed at once, so someone who
opens sockets and sends nothing holds at most ``per_source`` handshakes (each bounded by the
handshake deadline, ``msg_timeout``) and cannot crowd out other sources beyond ``total``.
Authenticated connections do not count: they hold a peer that knows the secret.

New connections are also rate-limited, per source and in all: each handshake costs the
acceptor a SPAKE2 computation (some milliseconds of CPU), so a source that opens and
closes connections as fast as it can would otherwise keep the acceptor busy computing.
The bursts are large enough for a client that hundreds of nodes connect back to at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from dispy_core.aio.connection import (
    HANDSHAKE_READ_LIMIT,
    Connection,
    ConnectionClosed,
)
from dispy_core.aio.handshake import accept_connection
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.errors import ProtocolError
from dispy_core.ratelimit import KeyedLimiter, TokenBucket

log = logging.getLogger(__name__)

PER_SOURCE = 8
TOTAL = 128
# New connections (handshakes) a second: per source, and in all, after a burst.
RATE_PER_SOURCE, BURST_PER_SOURCE = 16.0, 64
RATE_TOTAL, BURST_TOTAL = 100.0, 512
MAX_SOURCES = 4096  # sources whose rate is remembered (least recently seen forgotten)


class Admission:
    """Counts unauthenticated connections; ``enter`` says whether one more may start."""

    def __init__(
        self,
        per_source: int = PER_SOURCE,
        total: int = TOTAL,
        *,
        rate_per_source: float = RATE_PER_SOURCE,
        burst_per_source: int = BURST_PER_SOURCE,
        rate_total: float = RATE_TOTAL,
        burst_total: int = BURST_TOTAL,
    ) -> None:
        if per_source < 1 or total < per_source:
            raise ValueError("admission needs 1 <= per_source <= total")
        self.per_source = per_source
        self.total = total
        self._by_source: dict[str, int] = {}
        self._count = 0
        self._source_rate = KeyedLimiter(rate_per_source, burst_per_source, MAX_SOURCES)
        self._total_rate = TokenBucket(rate_total, burst_total)

    def enter(self, source: str, now: float | None = None) -> bool:
        """Count a new connection from ``source``; False (nothing counted) if over a cap or
        a rate (``now``: a monotonic time, the current one by default)."""
        held = self._by_source.get(source, 0)
        if held >= self.per_source or self._count >= self.total:
            return False
        when = time.monotonic() if now is None else now
        if not self._source_rate.take(source, when) or not self._total_rate.take(when):
            return False
        self._by_source[source] = held + 1
        self._count += 1
        return True

    def leave(self, source: str) -> None:
        """A connection counted by :meth:`enter` authenticated or ended."""
        held = self._by_source.get(source, 0)
        if held <= 0:
            raise RuntimeError(f"leave() without enter() for {source}")
        if held == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = held - 1
        self._count -= 1

    @property
    def pending(self) -> int:
        """Connections now counted."""
        return self._count

    @contextlib.contextmanager
    def slot(self, writer: asyncio.StreamWriter) -> Iterator[bool]:
        """``with admission.slot(writer) as admitted:``: ``admitted`` is False when the
        connection was over a cap and has been closed (debug log); otherwise it is counted
        until the block ends."""
        peer = writer.get_extra_info("peername") or ("?", 0)
        source = str(peer[0])
        if not self.enter(source):
            log.debug(
                "closing connection from %s:%s: %d unauthenticated connection(s) from it, "
                "%d in all (limits %d and %d), or too many new ones a second",
                source,
                peer[1],
                self._by_source.get(source, 0),
                self._count,
                self.per_source,
                self.total,
            )
            writer.transport.abort()
            yield False
            return
        try:
            yield True
        finally:
            self.leave(source)

    async def accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        logger: logging.Logger,
        refused_level: int = logging.WARNING,
        dropped_level: int = logging.WARNING,
        on_failure: Callable[[BaseException], None] | None = None,
        **handshake: Any,
    ) -> Connection | None:
        """Admit a fresh connection and run the acceptor's handshake on it
        (``handshake``: the arguments of :func:`accept_connection`).

        Returns the authenticated connection, or None when it was over a cap, failed the
        handshake, or broke: the stream is then closed, the reason logged once on
        ``logger`` (a refusal at ``refused_level``, a dropped connection at
        ``dropped_level``, a bug with its traceback) and handed to ``on_failure``. Nothing
        a peer sends escapes from here: an acceptor keeps serving whatever one connection
        did.
        """
        peer = writer.get_extra_info("peername") or ("?", 0)
        where = f"{peer[0]}:{peer[1]}"
        with self.slot(writer) as admitted:
            if not admitted:
                return None
            try:
                return await accept_connection(reader, writer, **handshake)
            except asyncio.CancelledError:
                # The acceptor is closing (see start_server): the stream is still ours.
                writer.transport.abort()
                raise
            except ProtocolError as exc:
                logger.log(refused_level, "connection from %s refused: %s", where, exc)
                failure: BaseException = exc
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                reason = "timed out" if isinstance(exc, TimeoutError) else exc
                logger.log(dropped_level, "connection from %s dropped before authentication: %s",
                           where, reason)  # fmt: skip
                failure = exc
            except Exception as exc:
                logger.exception("connection from %s: unexpected error in the handshake", where)
                failure = exc
        writer.close()
        if on_failure is not None:
            on_failure(failure)
        return None


async def start_server(
    client_connected_cb: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]
    ],
    *,
    tasks: TaskOwner,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    reuse_address: bool = True,
) -> asyncio.Server:
    """A TCP server for :func:`accept_connection`, with what every acceptor needs before
    authentication: small stream buffers, and (with TLS) a deadline on the TLS handshake,
    which runs before ``client_connected_cb`` is called.

    Each connection's ``client_connected_cb`` runs as a task of ``tasks`` (the acceptor's
    own owner), not as a task of asyncio's that nobody holds: closing the owner after the
    server cancels and awaits connections still in their handshake, instead of leaving them
    pending when the loop goes ("Task was destroyed but it is pending"). A connection that
    arrives after the owner is closed is dropped at once.
    """

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Returning None (not a coroutine) keeps asyncio from starting a task of its own.
        if tasks.closed:
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        tasks.start(
            client_connected_cb(reader, writer), name=f"connection from {peer[0]}:{peer[1]}"
        )

    tls: dict[str, Any] = {}
    if ssl_context is not None:
        tls = {"ssl": ssl_context, "ssl_handshake_timeout": handshake_timeout}
    return await asyncio.start_server(
        connected,
        host=host,
        port=port,
        limit=HANDSHAKE_READ_LIMIT,
        reuse_address=reuse_address,
        **tls,
    )
