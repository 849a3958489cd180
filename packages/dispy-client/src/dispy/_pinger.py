"""Announcing a cluster to nodes, and explaining what was tried when none joins.

Listed nodes get a unicast ping on their port; wildcard patterns get a directed broadcast on
the interfaces of ``ip_addr`` (from psutil's interface table; never the limited broadcast
address). A node that hears a ping connects back to the address and port the ping names,
and only if that is the ping's source address (or a loopback one, or the ping came through
a relay), so each ping leaves from a socket bound to the address it names when the client
listens on several.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from dispy_core import netinfo
from dispy_core.aio.discovery import send_ping, udp_socket
from dispy_core.protocol.discovery import Ping

if TYPE_CHECKING:
    from dispy._core import ClusterOptions


class Pinger:
    """Sends a cluster's discovery pings from one UDP socket."""

    def __init__(self, opts: ClusterOptions, token: str) -> None:
        self.opts = opts
        self._token = token
        self._port = 0
        self._sock: socket.socket | None = None
        # One socket per listening address, so a ping's source is the address it names.
        self._socks: dict[str, socket.socket] = {}
        self.pinged: list[str] = []
        self.pinged_ports: set[int] = set()

    def start(self, port: int) -> None:
        """Open the socket; pings ask nodes to connect back to ``port``."""
        self._port = port
        self._sock = udp_socket(self.opts.ip_addrs[0] if self.opts.ip_addrs else "", 0)
        for address in self.opts.ip_addrs[1:]:
            try:
                self._socks[address] = udp_socket(address, 0)
            except OSError:
                continue  # pings naming it leave from the first address instead
        if self.opts.ip_addrs:
            self._socks[self.opts.ip_addrs[0]] = self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        for sock in self._socks.values():
            if sock is not self._sock:
                sock.close()
        self._socks.clear()

    def _send(self, ping: Ping, target: tuple[str, int]) -> None:
        assert self._sock is not None
        send_ping(self._socks.get(ping.reply_addr, self._sock), ping, target)

    def _reply_addr(self, target: str | None) -> str:
        opts = self.opts
        if opts.ext_ip_addrs:
            return opts.ext_ip_addrs[0]
        if opts.ip_addrs:
            return opts.ip_addrs[0]
        if target:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect((target, 9))  # no packet is sent; this asks for a route
                return str(probe.getsockname()[0])
            except OSError:
                pass
            finally:
                probe.close()
        return netinfo.default_address()

    def ping_all(self) -> None:
        """Ping every listed node, and broadcast for patterns; remember what was pinged."""
        if self._sock is None:
            return
        opts = self.opts
        pinged: list[str] = []
        self.pinged_ports = set()
        broadcast_needed = False
        for alloc in opts.nodes:
            target = alloc._target(opts.node_port)
            if target is None:
                broadcast_needed = True
                continue
            ping = Ping(
                cluster=self._token,
                reply_addr=self._reply_addr(target[0]),
                reply_port=self._port,
            )
            self._send(ping, target)
            self.pinged_ports.add(target[1])
            pinged.append(f"{target[0]}:{target[1]} (unicast)")
        if broadcast_needed:
            for iface in self._broadcast_interfaces():
                assert iface.broadcast is not None
                ping = Ping(
                    cluster=self._token,
                    reply_addr=self._reply_addr(iface.address),
                    reply_port=self._port,
                )
                if opts.ip_addrs and not opts.ext_ip_addrs:
                    ping = ping.model_copy(update={"reply_addr": iface.address})
                self._send(ping, (iface.broadcast, opts.node_port))
                self.pinged_ports.add(opts.node_port)
                pinged.append(f"{iface.broadcast}:{opts.node_port} (broadcast on {iface.name})")
        self.pinged = pinged

    def _broadcast_interfaces(self) -> list[netinfo.Interface]:
        ifaces = [i for i in netinfo.ipv4_interfaces() if i.broadcast]
        if self.opts.ip_addrs:
            ifaces = [i for i in ifaces if i.address in self.opts.ip_addrs]
        return ifaces

    def no_node_message(self, *, waited: float, waiting: int, refusals: dict[str, str]) -> str:
        """The warning given when no node has joined: what was tried, and usual causes."""
        opts = self.opts
        listen = ", ".join(opts.ip_addrs) or "all interfaces"
        lines = [
            f"no dispy node has joined cluster {opts.name!r} after {waited:.0f} s "
            f"({waiting} job(s) waiting).",
            f"  pinged: {', '.join(self.pinged) or 'nothing (no nodes listed)'}",
            f"  listening for nodes on {listen} port {self._port}"
            f"{' with TLS' if opts.tls.enabled else ''}",
        ]
        if refusals:
            lines.append("  refused: " + "; ".join(f"{k}: {v}" for k, v in refusals.items()))
        ports = sorted(self.pinged_ports) or [opts.node_port]
        port_text = ", ".join(str(p) for p in ports)
        causes = (
            "dispy-node is not running there; it uses another port "
            f"(this cluster pinged port {port_text}) or another secret; a firewall blocks "
            f"UDP/TCP port {port_text} or port {self._port}"
        )
        if opts.tls.enabled:
            causes += (
                "; the nodes were not started with the same --certfile/--keyfile (this "
                "cluster uses TLS, so a node without it cannot connect)"
            )
        lines.append(f"  usual causes: {causes}.")
        return "\n".join(lines)
