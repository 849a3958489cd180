"""What the relay does with each datagram it hears, and when it announces itself (sans-I/O).

Theory of operation
-------------------
A client or scheduler that lists the relay's host in ``nodes`` sends it a discovery ping
(PROTOCOL.md 6.1). The relay sends that datagram on, the same bytes, as one directed
broadcast on its own network to ``node_port``; the nodes there that name the relay with
``--relay`` accept a reply address other than the datagram's source from it (PROTOCOL.md
6.5) and connect straight to the client. The relay is trusted that way, so it
takes over the check the nodes give up: it relays a ping only if the ping names *its own
sender* as the address to connect to. Nothing else it hears reaches the network.

:class:`RelayPolicy` decides, for each datagram and its source address, in this order:

1. **Rate per source.** Every datagram, valid or not, takes a token from its source's
   bucket (``SOURCE_BURST``, then ``SOURCE_RATE`` a second; ``MAX_SOURCES`` sources kept,
   least recently heard forgotten first). A flood from one address is cut off before it is
   even parsed.
2. **A ping of this protocol version**, as :func:`decode_ping` says; anything else is dropped.
3. **The reply address** must be an IP address (a relay never resolves names from a
   datagram), not unspecified, multicast, the limited broadcast or the broadcast address of
   the relay's network, not loopback unless that network is loopback itself (relayed, it
   would make each node connect to itself), and equal to the datagram's source. So the
   relay never sends a node to a third host: a forged source gets nothing back but nodes
   connecting to the forged address, as it would by pinging those nodes directly.
4. **Not just relayed.** A ping with the same ``(cluster, reply_addr, reply_port)`` relayed in
   the last ``RECENT_WINDOW`` seconds is dropped: that is the relay's own broadcast heard
   back (its echo), or a client's early re-ping that the nodes have just heard. At most
   ``MAX_RECENT`` such keys are kept.
5. **Rate in all.** A relayed ping takes a token from the relay-wide bucket
   (``TOTAL_BURST``, then ``TOTAL_RATE`` a second). Nodes rate-limit pings per source and
   the relay is one source for them (16 at once, then 4 a second): relaying faster would
   only make them drop pings.

One datagram in gives at most one datagram out, the same one, so the relay amplifies
nothing. Drops are logged at debug level; a verdict says ``warn`` at most
once a minute per source (and ten times a minute in all), so a flood cannot flood the log.

:class:`AnnounceSchedule` says when to tell the clients or schedulers named with
``--scheduler_node`` that the relay exists (a ``relay`` datagram, PROTOCOL.md 6.6): at
start, then again every ``ANNOUNCE_INTERVAL`` seconds while no ping from that address was
relayed in the last ``ANNOUNCE_INTERVAL`` seconds. It never announces more often than that.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dispy_core.protocol.discovery import Ping, decode_ping
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.ratelimit import KeyedLimiter, Once, TokenBucket

SOURCE_RATE = 2.0
SOURCE_BURST = 8
MAX_SOURCES = 1024
TOTAL_RATE = 4.0
TOTAL_BURST = 16
RECENT_WINDOW = 2.0
MAX_RECENT = 1024
WARN_INTERVAL = 60.0
ANNOUNCE_INTERVAL = 60.0
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(text: str) -> IPAddress | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Decision:
    """Relay the datagram (``ping`` is what it says), or drop it (``ping`` None) for ``reason``."""

    ping: Ping | None
    reason: str = ""
    warn: bool = False  # log the reason as a warning (rate-limited per source)


class RelayPolicy:
    """Decides, for each datagram heard, whether to broadcast it on the relay's network.

    Args:
        broadcast: the broadcast address of the relay's network (where it relays to).
        loopback: the relay's network is the loopback interface (tests, one host).
        now: the current time, for the relay-wide bucket.
    """

    def __init__(self, broadcast: str, *, loopback: bool = False, now: float = 0.0) -> None:
        self.broadcast = ip_of(broadcast)
        self.loopback = loopback
        self._sources = KeyedLimiter(SOURCE_RATE, SOURCE_BURST, MAX_SOURCES)
        self._total = TokenBucket(TOTAL_RATE, TOTAL_BURST, now)
        self._warned = Once(WARN_INTERVAL, MAX_SOURCES)
        self._recent: OrderedDict[tuple[str, str, int], float] = OrderedDict()

    def on_datagram(self, data: bytes, source: str, now: float) -> Decision:
        """The verdict on ``data``, heard from ``source`` (an IP address) at ``now``."""
        source_ip = ip_of(source)
        key = str(source_ip or source)
        if not self._sources.take(key, now):
            return self._drop(
                key, now, f"more than {SOURCE_RATE:g} datagrams a second from {key}: dropping some"
            )
        try:
            ping = decode_ping(data)
        except RemoteProtocolError as exc:
            return self._drop(key, now, f"datagram from {key} not relayed: {exc}")
        problem = self.reply_problem(ping, source_ip)
        if problem:
            return self._drop(
                key,
                now,
                f"ping from {key} for {ping.reply_addr}:{ping.reply_port} not relayed: {problem}",
            )
        recent = (ping.cluster, ping.reply_addr, ping.reply_port)
        self._forget_old(now)
        if recent in self._recent:
            return Decision(None, f"ping from {key} relayed less than {RECENT_WINDOW:g} s ago")
        if not self._total.take(now):
            return self._drop(
                "*", now, f"relaying more than {TOTAL_RATE:g} pings a second in all: dropping some"
            )
        if len(self._recent) >= MAX_RECENT:
            self._recent.popitem(last=False)
        self._recent[recent] = now
        return Decision(ping)

    def reply_problem(self, ping: Ping, source: IPAddress | None) -> str:
        """Why nodes must not be told to connect to ``ping``'s reply address ('' if fine)."""
        reply = ip_of(ping.reply_addr)
        if reply is None:
            return "the reply address is not an IP address (a relay never resolves names)"
        if (
            reply.is_unspecified
            or reply.is_multicast
            or reply == LIMITED_BROADCAST
            or reply == self.broadcast
        ):
            return "the reply address is a broadcast, multicast or unspecified address"
        if reply.is_loopback and not self.loopback:
            return "a loopback reply address would make each node connect to itself"
        if reply != source:
            return (
                f"the reply address is not the ping's source {source}, and the relay sends "
                "nodes only to whoever pinged it"
            )
        return ""

    def _drop(self, key: str, now: float, reason: str) -> Decision:
        return Decision(None, reason, warn=self._warned(key, now))

    def _forget_old(self, now: float) -> None:
        # Oldest first: keys are kept in the order they were relayed.
        while self._recent:
            key, when = next(iter(self._recent.items()))
            if now - when < RECENT_WINDOW:
                break
            del self._recent[key]

    @property
    def sources(self) -> int:
        return len(self._sources)

    @property
    def recent(self) -> int:
        return len(self._recent)


class AnnounceSchedule:
    """When to send the ``relay`` datagram to each client or scheduler named at start.

    ``targets`` are IP addresses. :meth:`due` gives those to announce to now (all of them
    the first time); :meth:`heard` records that a ping from an address was relayed, which
    makes announcing to it needless for ``ANNOUNCE_INTERVAL`` seconds.
    """

    def __init__(self, targets: Iterable[str]) -> None:
        self._announced: dict[str, float | None] = dict.fromkeys(targets)
        self._heard: dict[str, float] = {}

    def heard(self, address: str, now: float) -> None:
        if address in self._announced:
            self._heard[address] = now

    def due(self, now: float) -> list[str]:
        """The targets to announce to now (each is then not due for ANNOUNCE_INTERVAL)."""
        out = []
        for target, announced in self._announced.items():
            if announced is not None and now - announced < ANNOUNCE_INTERVAL:
                continue
            heard = self._heard.get(target)
            if heard is not None and now - heard < ANNOUNCE_INTERVAL:
                continue
            self._announced[target] = now
            out.append(target)
        return out

    def next_in(self, now: float) -> float | None:
        """Seconds until :meth:`due` may give a target again (None: no targets)."""
        if not self._announced:
            return None
        waits = []
        for target, announced in self._announced.items():
            if announced is None:
                return 0.0
            last = max(announced, self._heard.get(target, announced))
            waits.append(last + ANNOUNCE_INTERVAL - now)
        return max(0.0, min(waits))
