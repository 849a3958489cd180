"""Discovery fan-out without I/O: whom to ping, from where, when again, and what to say.

Whoever looks for nodes (a client's cluster, ``dispy nodes``, later the scheduler and the
relay) describes them with plain values and gets back plain values; the sockets live in
:mod:`dispy_core.aio.fanout`. PROTOCOL.md section 6.2 is the specification.

Theory of operation
-------------------
:func:`plan_pings` turns a list of :class:`Target` (a host, an address or a wildcard
pattern, with an optional port) into :class:`PingSend` records, one datagram each:

* a host or address gets one ping by unicast to ``host:port`` (its own port, else
  ``node_port``);
* patterns get one directed broadcast per IPv4 interface that has a broadcast address
  (only the interfaces of ``ip_addrs`` when given) and per port they name, never the
  limited broadcast address 255.255.255.255.

Each ping names the address a node connects back to (``reply_addr``): the first
``ext_ip_addr`` if given, else the first ``ip_addr`` for unicast or the interface's own
address for a broadcast, else the local address the kernel routes to that host (the one I/O
question, asked through the ``route`` callable). A node connects back only to a ping's
source address (PROTOCOL.md 6.5), so each send also says which local address it must leave
from: the reply address when the sender listens there, else its first address, else ``""``
(an unbound socket, whose source the kernel picks by the same route).

:func:`reping` is the re-ping schedule as a pure function of the time elapsed since the
first ping and of a :class:`RepingState`: early re-pings while no node has connected (nodes
started together with the client may miss the first ping), one every ``ping_interval``, and
the no-node warning (with a ping) after 5 s and then every 30 s while none is ready.
:func:`no_node_message` words that warning from what was sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from dispy_core.protocol.discovery import Ping, is_pattern

# Offsets from the first ping: dense at first (pings are tiny), then sparser.
EARLY_REPINGS: tuple[float, ...] = tuple(itertools.accumulate((0.1,) * 10 + (0.5, 1.0, 2.0)))
NO_NODE_WARNING_DELAY = 5.0
NO_NODE_WARNING_REPEAT = 30.0
# While a node is ready, how often to look again whether one still is.
NO_NODE_RECHECK = 1.0
# Reaches every host of every attached network: never used, even if an interface reports it.
LIMITED_BROADCAST = "255.255.255.255"


class InterfaceLike(Protocol):
    """A row of the interface table (``dispy_core.netinfo.Interface`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def broadcast(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A listed node: a host name, an address or a pattern; ``port`` None means node_port."""

    host: str
    port: int | None = None


@dataclass(frozen=True, slots=True)
class PingSend:
    """One datagram: ``ping`` to ``destination``, from a socket bound to ``source``.

    ``source`` ``""`` means an unbound socket; ``interface`` names the interface of a
    broadcast and is None for unicast.
    """

    source: str
    destination: tuple[str, int]
    ping: Ping
    interface: str | None = None

    def describe(self) -> str:
        """How the no-node warning lists this send."""
        host, port = self.destination
        if self.interface is None:
            return f"{host}:{port} (unicast)"
        return f"{host}:{port} (broadcast on {self.interface})"


def source_address(reply_addr: str, ip_addrs: Sequence[str]) -> str:
    """The local address a ping naming ``reply_addr`` leaves from (``""``: unbound)."""
    if reply_addr in ip_addrs:
        return reply_addr
    return ip_addrs[0] if ip_addrs else ""


def plan_pings(
    targets: Iterable[Target],
    *,
    cluster: str,
    reply_port: int,
    node_port: int,
    ip_addrs: Sequence[str] = (),
    ext_ip_addrs: Sequence[str] = (),
    interfaces: Iterable[InterfaceLike] = (),
    route: Callable[[str], str],
    role: Literal["client", "scheduler", "recover"] = "client",
) -> list[PingSend]:
    """The datagrams that announce ``cluster`` (listening on ``reply_port``) to ``targets``.

    Unicast sends come first, in the order of ``targets``; then the broadcasts. ``route``
    gives the local address the kernel would use to reach a host; it is asked only when
    neither ``ext_ip_addrs`` nor ``ip_addrs`` is given.
    """
    sends: list[PingSend] = []
    broadcast_ports: list[int] = []

    def send(reply_addr: str, destination: tuple[str, int], interface: str | None) -> None:
        ping = Ping(cluster=cluster, reply_addr=reply_addr, reply_port=reply_port, role=role)
        sends.append(PingSend(source_address(reply_addr, ip_addrs), destination, ping, interface))

    for target in targets:
        port = target.port or node_port
        if is_pattern(target.host):
            if port not in broadcast_ports:
                broadcast_ports.append(port)
            continue
        if ext_ip_addrs:
            reply = ext_ip_addrs[0]
        elif ip_addrs:
            reply = ip_addrs[0]
        else:
            reply = route(target.host)
        send(reply, (target.host, port), None)
    if broadcast_ports:
        for iface in interfaces:
            if iface.broadcast in (None, "", LIMITED_BROADCAST):
                continue
            if ip_addrs and iface.address not in ip_addrs:
                continue
            reply = ext_ip_addrs[0] if ext_ip_addrs else iface.address
            for port in broadcast_ports:
                send(reply, (iface.broadcast, port), iface.name)
    return sends


# -- when to ping again --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepingState:
    """How far the schedule has got; start with ``RepingState()``."""

    early: int = 0  # early re-pings already due
    intervals: int = 0  # ping_interval periods already due
    check_at: float = NO_NODE_WARNING_DELAY  # next look at whether to warn


@dataclass(frozen=True, slots=True)
class Reping:
    """What is due at this moment, and when (elapsed seconds) to call :func:`reping` again."""

    ping: bool
    warn: bool
    wake_at: float
    state: RepingState


def reping(
    state: RepingState,
    elapsed: float,
    *,
    ping_interval: float | None,
    connected: bool,
    waiting: bool,
) -> Reping:
    """The schedule's step at ``elapsed`` seconds after the first ping.

    Args:
        state: the state returned by the previous step.
        elapsed: seconds since the first ping.
        ping_interval: seconds between regular pings; None or 0 for none.
        connected: some node has connected (early re-pings stop being needed).
        waiting: no node is ready and the cluster is open (warn, and ping again).
    """
    ping = warn = False
    early = state.early
    while early < len(EARLY_REPINGS) and EARLY_REPINGS[early] <= elapsed:
        early += 1
        ping = ping or not connected
    intervals = state.intervals
    if ping_interval:
        due = int(elapsed // ping_interval)
        if due > intervals:
            intervals = due
            ping = True
    check_at = state.check_at
    if elapsed >= check_at:
        if waiting:
            warn = ping = True
            check_at = elapsed + NO_NODE_WARNING_REPEAT
        else:
            check_at = elapsed + NO_NODE_RECHECK
    wake_at = check_at
    if early < len(EARLY_REPINGS):
        wake_at = min(wake_at, EARLY_REPINGS[early])
    if ping_interval:
        wake_at = min(wake_at, (intervals + 1) * ping_interval)
    return Reping(ping, warn, wake_at, RepingState(early, intervals, check_at))


# -- the no-node warning -------------------------------------------------------------------


def no_node_message(
    *,
    cluster_name: str,
    waited: float,
    waiting: int,
    sent: Sequence[PingSend],
    listen_addrs: Sequence[str],
    port: int,
    node_port: int,
    tls: bool,
    refusals: Mapping[str, str],
) -> str:
    """The warning given when no node has joined: what was tried, and usual causes.

    ``sent`` is the last round of pings; ``port`` the one nodes connect back to;
    ``refusals`` maps a peer that reached us to why it was refused.
    """
    pinged = ", ".join(s.describe() for s in sent)
    listen = ", ".join(listen_addrs) or "all interfaces"
    lines = [
        f"no dispy node has joined cluster {cluster_name!r} after {waited:.0f} s "
        f"({waiting} job(s) waiting).",
        f"  pinged: {pinged or 'nothing (no nodes listed)'}",
        f"  listening for nodes on {listen} port {port}{' with TLS' if tls else ''}",
    ]
    announced = sorted({s.ping.reply_addr for s in sent})
    if announced:
        # The commonest NAT mistake: nodes hear the ping but cannot connect to what it names.
        lines.append(
            f"  announced: nodes were asked to connect to {', '.join(announced)} port {port}"
        )
    if refusals:
        lines.append("  refused: " + "; ".join(f"{k}: {v}" for k, v in refusals.items()))
    ports = sorted({s.destination[1] for s in sent}) or [node_port]
    port_text = ", ".join(str(p) for p in ports)
    causes = (
        "dispy-node is not running there; it uses another port "
        f"(this cluster pinged port {port_text}) or another secret; a firewall blocks "
        f"UDP/TCP port {port_text} or port {port}"
    )
    if tls:
        causes += (
            "; the nodes were not started with the same --certfile/--keyfile (this "
            "cluster uses TLS, so a node without it cannot connect)"
        )
    if announced:
        causes += (
            f"; the nodes cannot reach {', '.join(announced)} port {port} (behind NAT: "
            "ext_ip_addr must be the gateway's address, with that port forwarded to this "
            "host; or start the nodes with --scheduler_node)"
        )
    lines.append(f"  usual causes: {causes}.")
    return "\n".join(lines)
