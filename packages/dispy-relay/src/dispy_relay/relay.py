"""The relay service: one UDP socket, :class:`~dispy_relay.policy.RelayPolicy` deciding.

The relay listens on its address (``-i``, else the address of the interface the default
route leaves by) at ``listen_port``, and sends from that same socket, so every datagram it
sends has the address nodes name with ``--relay`` as its source. It binds only that
unicast address: broadcasts on its network (its own echoes, other clients' discovery) are
not delivered to it at all on Linux, and the policy drops them anyway elsewhere. The
socket is bound without ``SO_REUSEADDR``, so a dispy-node already on the same address and
port is reported at start instead of silently sharing the port with the relay.

It never opens or accepts TCP: nodes connect straight to the address a relayed ping names.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dispy_core import netinfo
from dispy_core.aio.signals import stop_on_signals
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.discovery import RelayAnnounce, encode_relay
from dispy_relay.policy import AnnounceSchedule, RelayPolicy, ip_of

log = logging.getLogger(__name__)

# A documentation address (TEST-NET-1): asking the kernel for a route to it sends nothing
# and gives the address of the interface the default route leaves by.
_DEFAULT_ROUTE_PROBE = "192.0.2.1"


class RelayStartError(RuntimeError):
    """The relay cannot start (address, interface or port); the message says why."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    ip_addr: str | None
    node_port: int
    listen_port: int
    scheduler_nodes: Sequence[str] = ()
    scheduler_port: int = 0


@dataclass(frozen=True, slots=True)
class Network:
    """Where the relay listens and relays to."""

    interface: str
    address: str
    broadcast: str


def choose_network(ip_addr: str | None) -> Network:
    """The relay's interface: the one with address ``ip_addr``, else the default route's.

    Raises:
        RelayStartError: the address is not this host's, or its interface has no broadcast.
    """
    if ip_addr:
        try:
            address = netinfo.resolve(ip_addr)
        except OSError as exc:
            raise RelayStartError(f"cannot resolve -i {ip_addr!r}: {exc}") from None
    else:
        address = netinfo.route_to(_DEFAULT_ROUTE_PROBE)
    iface = netinfo.interface_of(address)
    if iface is None:
        where = f"-i {ip_addr}" if ip_addr else f"the default address {address}"
        raise RelayStartError(
            f"{where} is not an IPv4 address of an interface of this host; "
            "give this host's address on the network to relay into with -i"
        )
    if not iface.broadcast or iface.broadcast == "255.255.255.255":
        raise RelayStartError(
            f"interface {iface.name} ({address}) has no directed broadcast address to relay "
            "pings to; give another address with -i"
        )
    return Network(iface.name, address, iface.broadcast)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._relay.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error from an earlier send (a scheduler not listening yet): not fatal.
        log.debug("UDP error: %s", exc)


class Relay:
    """The running relay: start, serve until SIGINT/SIGTERM, stop."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.network: Network | None = None
        self.policy: RelayPolicy | None = None
        self.relayed = 0
        self.tasks = TaskOwner("dispy-relay", log=log)
        self._transport: asyncio.DatagramTransport | None = None
        self._announce: AnnounceSchedule | None = None
        self._targets: dict[str, str] = {}  # address -> name as given
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind, and start announcing to ``--scheduler_node`` targets.

        Raises:
            RelayStartError: see :func:`choose_network`; the port is taken; a name does not
                resolve.
        """
        cfg = self.config
        network = choose_network(cfg.ip_addr)
        for name in cfg.scheduler_nodes:
            try:
                self._targets[netinfo.resolve(name)] = name
            except OSError as exc:
                raise RelayStartError(f"cannot resolve --scheduler_node {name!r}: {exc}") from None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)
            sock.bind((network.address, cfg.listen_port))
        except OSError as exc:
            sock.close()
            hint = ""
            if cfg.listen_port == cfg.node_port:
                hint = " (if a dispy-node runs on this host, give the relay another --listen_port)"
            raise RelayStartError(
                f"cannot listen on {network.address}:{cfg.listen_port} (UDP): "
                f"{exc.strerror or exc}{hint}"
            ) from None
        # Decide before the socket is read: a datagram may be waiting already.
        self.network = network
        address = ip_of(network.address)
        self.policy = RelayPolicy(
            network.broadcast,
            loopback=address is not None and address.is_loopback,
            now=time.monotonic(),
        )
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
        log.info(
            "dispy-relay listening on %s:%d (UDP), relaying pings to %s:%d on %s",
            network.address,
            cfg.listen_port,
            network.broadcast,
            cfg.node_port,
            network.interface,
        )
        if self._targets:
            self._announce = AnnounceSchedule(self._targets)
            self.tasks.start(self._announcer(), name="announce")

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.policy is not None
        assert self.network is not None
        now = time.monotonic()
        decision = self.policy.on_datagram(data, addr[0], now)
        if decision.ping is None:
            if decision.warn:
                log.warning("%s", decision.reason)
            else:
                log.debug("%s", decision.reason)
            return
        ping = decision.ping
        target = (self.network.broadcast, self.config.node_port)
        # The bytes that came in, which decode_ping accepted: nodes parse them the same way.
        if self._send(data, target):
            self.relayed += 1
            log.debug(
                "relayed ping of %s %s:%d to %s:%d",
                ping.role,
                ping.reply_addr,
                ping.reply_port,
                *target,
            )
        if self._announce is not None:
            self._announce.heard(ping.reply_addr, now)

    def _send(self, data: bytes, target: tuple[str, int]) -> bool:
        if self._transport is None or self._transport.is_closing():
            return False
        try:
            self._transport.sendto(data, target)
        except OSError as exc:
            log.debug("cannot send to %s:%d: %s", target[0], target[1], exc)
            return False
        return True

    async def _announcer(self) -> None:
        assert self._announce is not None
        assert self.network is not None
        announce = encode_relay(
            RelayAnnounce(relay_addr=self.network.address, relay_port=self.config.listen_port)
        )
        while True:
            for address in self._announce.due(time.monotonic()):
                if self._send(announce, (address, self.config.scheduler_port)):
                    log.info(
                        "announced this relay to %s:%d",
                        self._targets[address],
                        self.config.scheduler_port,
                    )
            wait = self._announce.next_in(time.monotonic())
            await asyncio.sleep(1.0 if wait is None else max(wait, 0.05))

    async def serve(self) -> None:
        stop_on_signals(self._stopped)
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        log.info("dispy-relay shutting down (relayed %d ping(s))", self.relayed)
        await self.tasks.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
