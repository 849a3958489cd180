"""A cluster's discovery pings: its options and NodeAllocate list, as core's plain targets.

Whom to ping, from which address and with which reply address is decided by
:func:`dispy_core.protocol.fanout.plan_pings`; the sockets belong to
:class:`dispy_core.aio.fanout.PingSender`. This adapter only turns the cluster's options
into their plain inputs and remembers the last round for the no-node warning.

Relays that announce themselves (PROTOCOL.md 6.6) are heard on UDP at the cluster's port by
:class:`dispy_core.aio.relays.RelayListener`: each is pinged at once and then in every
round, like a listed host; they add nothing to the patterns that select nodes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dispy_core import netinfo
from dispy_core.aio.fanout import PingSender
from dispy_core.aio.relays import RelayListener
from dispy_core.protocol.discovery import Ping, is_pattern
from dispy_core.protocol.fanout import PingSend, Target, no_node_message, plan_pings
from dispy_core.protocol.relays import KnownRelay

if TYPE_CHECKING:
    from dispy._core import ClusterOptions


class Pinger:
    """Sends a cluster's discovery pings, each from the address it names."""

    def __init__(self, opts: ClusterOptions, token: str) -> None:
        self.opts = opts
        self._token = token
        self._port = 0
        self._sender: PingSender | None = None
        self.sent: list[PingSend] = []  # the last round, for the no-node warning
        self.relays = RelayListener(self._relay_heard, logger=logging.getLogger("dispy"))

    @property
    def _socks(self) -> dict[str, socket.socket]:
        return self._sender.sockets if self._sender is not None else {}

    def start(self, port: int) -> None:
        """Open the sockets; pings ask nodes to connect back to ``port``."""
        self._port = port
        self._sender = PingSender(self.opts.ip_addrs)

    async def listen_relays(self) -> None:
        """Hear relay announcements on UDP at the port nodes connect to (after start)."""
        await self.relays.start(self.opts.ip_addrs, self._port)

    def close(self) -> None:
        self.relays.close()
        if self._sender is not None:
            self._sender.close()

    def _send(self, ping: Ping, target: tuple[str, int]) -> None:
        assert self._sender is not None
        self._sender.send(PingSend(ping.reply_addr, target, ping))

    def targets(self) -> list[Target]:
        """The cluster's NodeAllocate list as plain targets, then the relays heard of.

        A pattern is broadcast to ``node_port`` whatever port its NodeAllocate names (as
        PROTOCOL.md 6.2 says), so its port is not passed on.
        """
        listed = [
            Target(a.ip_addr, None if is_pattern(a.ip_addr) else a.port) for a in self.opts.nodes
        ]
        return listed + self.relays.targets(listed, self.opts.node_port)

    def dial_targets(self) -> list[tuple[str, int]]:
        """The listed nodes (not patterns) as ``(address, port)``, for the TCP dial
        (PROTOCOL.md 6.2); names were resolved when the cluster was made."""
        opts = self.opts
        return [
            (a.ip_addr, a.port or opts.node_port) for a in opts.nodes if not is_pattern(a.ip_addr)
        ]

    def ping_all(self) -> None:
        """Ping every listed node and relay, and broadcast for patterns; remember what was
        sent."""
        if self._sender is None:
            return
        self.sent = self._plan(self.targets())
        self._sender.send_all(self.sent)

    def _relay_heard(self, relay: KnownRelay) -> None:
        # A relay announces itself when nobody pinged through it for a while: ping it now.
        if self._sender is not None:
            self._sender.send_all(self._plan([relay.target()]))

    def _plan(self, targets: Sequence[Target]) -> list[PingSend]:
        opts = self.opts
        return plan_pings(
            targets,
            cluster=self._token,
            reply_port=self._port,
            node_port=opts.node_port,
            ip_addrs=opts.ip_addrs,
            ext_ip_addrs=opts.ext_ip_addrs,
            interfaces=netinfo.ipv4_interfaces(),
            route=netinfo.route_to,
        )

    def no_node_message(self, *, waited: float, waiting: int, refusals: dict[str, str]) -> str:
        """The warning given when no node has joined: what was tried, and usual causes."""
        opts = self.opts
        return no_node_message(
            cluster_name=opts.name,
            waited=waited,
            waiting=waiting,
            sent=self.sent,
            listen_addrs=opts.ip_addrs,
            port=self._port,
            node_port=opts.node_port,
            tls=opts.tls.enabled,
            refusals=refusals,
        )
