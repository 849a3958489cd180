"""The sockets and the timer behind discovery fan-out (:mod:`dispy_core.protocol.fanout`).

:class:`PingSender` owns one UDP socket per address the caller listens on, bound to it, so
that a ping leaves from the address it names (nodes connect back only to a ping's source,
PROTOCOL.md 6.5). :func:`keep_pinging` runs the re-ping schedule on the event loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from dispy_core.aio.discovery import send_ping, udp_socket
from dispy_core.protocol.fanout import PingSend, RepingState, reping


class PingSender:
    """Sends planned pings, each from the socket bound to its ``source`` address.

    The first of ``addresses`` (or an unbound socket when there are none) must bind, else
    OSError; another that cannot bind is skipped, and pings from it leave from the first.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self._default = udp_socket(addresses[0] if addresses else "", 0)
        # Bound sockets by address; the default is among them when it is bound.
        self.sockets: dict[str, socket.socket] = {}
        if addresses:
            self.sockets[addresses[0]] = self._default
        for address in addresses[1:]:
            if address in self.sockets:
                continue
            try:
                self.sockets[address] = udp_socket(address, 0)
            except OSError:
                continue

    def send(self, item: PingSend) -> bool:
        """Send one ping; False if the network refused it (logged at debug level)."""
        sock = self.sockets.get(item.source, self._default)
        return send_ping(sock, item.ping, item.destination)

    def send_all(self, items: Iterable[PingSend]) -> None:
        for item in items:
            self.send(item)

    def close(self) -> None:
        self._default.close()
        for sock in self.sockets.values():
            if sock is not self._default:
                sock.close()
        self.sockets.clear()


class Presence(NamedTuple):
    """What the re-ping schedule needs to know about nodes, asked at each step."""

    connected: bool  # some node has connected
    waiting: bool  # no node is ready and the cluster is open


async def keep_pinging(
    *,
    ping_interval: float | None,
    ping: Callable[[], None],
    warn: Callable[[], None],
    presence: Callable[[], Presence],
) -> None:
    """Ping again and warn on the schedule of :func:`~dispy_core.protocol.fanout.reping`.

    Call it (as a task) right after the first ping; it runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    state = RepingState()
    while True:
        elapsed = loop.time() - started
        now = presence()
        step = reping(
            state,
            elapsed,
            ping_interval=ping_interval,
            connected=now.connected,
            waiting=now.waiting,
        )
        state = step.state
        if step.warn:
            warn()
        if step.ping:
            ping()
        await asyncio.sleep(max(0.0, step.wake_at - elapsed))
