"""UDP endpoints for discovery pings (see :mod:`dispy_core.protocol.discovery`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from dispy_core.protocol.discovery import Ping, decode_ping, encode_ping
from dispy_core.protocol.errors import RemoteProtocolError

log = logging.getLogger(__name__)


class _PingReceiver(asyncio.DatagramProtocol):
    def __init__(self, on_ping: Callable[[Ping, tuple[str, int]], None]) -> None:
        self._on_ping = on_ping

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            ping = decode_ping(data)
        except RemoteProtocolError as exc:
            log.debug("ignoring datagram from %s:%s: %s", addr[0], addr[1], exc)
            return
        self._on_ping(ping, addr)


def udp_socket(address: str, port: int, *, broadcast: bool = False) -> socket.socket:
    """A bound UDP socket; several processes may share a broadcast port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT") and broadcast:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setblocking(False)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


async def listen_pings(
    sock: socket.socket, on_ping: Callable[[Ping, tuple[str, int]], None]
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _PingReceiver(on_ping), sock=sock)
    return transport


def send_ping(sock: socket.socket, ping: Ping, target: tuple[str, int]) -> bool:
    """Send one ping; False (and a debug log) if the network refused it."""
    try:
        sock.sendto(encode_ping(ping), target)
    except OSError as exc:
        log.debug("ping to %s:%s failed: %s", target[0], target[1], exc)
        return False
    return True
