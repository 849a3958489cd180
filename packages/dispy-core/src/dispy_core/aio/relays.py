"""The UDP side of relay announcements (PROTOCOL.md 6.6), for clients and schedulers.

:class:`RelayListener` listens on UDP at the port its owner listens on for TCP (a
JobCluster's ``port``, a scheduler's ``--scheduler_port``), feeds every datagram to a
:class:`~dispy_core.protocol.relays.RelayBook` and hands each relay it accepts to the owner,
which pings it at once; the owner's later pings include :meth:`RelayListener.targets`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from dispy_core.protocol.fanout import Target
from dispy_core.protocol.relays import KnownRelay, RelayBook
from dispy_core.ratelimit import Once

# "log the relay once" (PROTOCOL.md 6.6): a relay forgotten and learned again within this
# many seconds is not logged again; a flood of forged sources gets ten lines at most.
LOG_AGAIN_AFTER = 3600.0


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, addr[0])

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a datagram sent from this socket: nothing is sent from it


class RelayListener:
    """Hears relay announcements; ``on_relay`` is called with each relay to ping now.

    Args:
        on_relay: called on the event loop for every accepted announcement.
        logger: where the relays heard are logged (info once per relay; drops at debug).
        book: the relays kept (a fresh :class:`RelayBook` by default).
    """

    def __init__(
        self,
        on_relay: Callable[[KnownRelay], None],
        *,
        logger: logging.Logger,
        book: RelayBook | None = None,
    ) -> None:
        self.book = book if book is not None else RelayBook(now=time.monotonic())
        self._on_relay = on_relay
        self._log = logger
        self._logged = Once(LOG_AGAIN_AFTER, 1024)
        self._transports: list[asyncio.DatagramTransport] = []

    async def start(self, addresses: Sequence[str], port: int) -> list[str]:
        """Listen on UDP ``port`` of each of ``addresses`` (all addresses when empty).

        An address that cannot be bound is skipped with a warning (relays cannot announce
        themselves there; everything else works). Returns the ``address:port`` listened on.
        """
        loop = asyncio.get_running_loop()
        listening = []
        for address in addresses or [""]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                self._log.warning(
                    "cannot listen for relay announcements on %s:%d (UDP): %s; a dispy-relay "
                    "started with --scheduler_node cannot announce itself there",
                    address or "*", port, exc,
                )  # fmt: skip
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Receiver(self._heard), sock=sock
            )
            self._transports.append(transport)
            listening.append(f"{address or '*'}:{port}")
        return listening

    def _heard(self, data: bytes, source: str) -> None:
        now = time.monotonic()
        heard = self.book.heard(data, source, now)
        relay = heard.relay
        if relay is None:
            self._log.debug("ignoring datagram from %s: %s", source, heard.reason)
            return
        if heard.new and self._logged((relay.address, relay.port), now):
            self._log.info("relay %s announced itself: pinging through it", relay.describe())
        else:
            self._log.debug("relay %s announced itself again", relay.describe())
        self._on_relay(relay)

    def targets(self, listed: Iterable[Target] = (), node_port: int = 0) -> list[Target]:
        """The relays to ping now, without those ``listed`` (see :meth:`RelayBook.targets`)."""
        now = time.monotonic()
        for relay in self.book.expire(now):
            self._log.debug("relay %s not announced for %.0f s: forgotten",
                            relay.describe(), self.book.forget_after)  # fmt: skip
        return self.book.targets(now, listed, node_port)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
