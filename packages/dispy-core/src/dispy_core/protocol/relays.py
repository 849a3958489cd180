"""The relays a client or scheduler has heard of, without I/O (PROTOCOL.md 6.6).

A dispy-relay started with ``--scheduler_node`` announces itself to a running client or
scheduler with a ``relay`` datagram (:class:`~dispy_core.protocol.discovery.RelayAnnounce`)
sent to the UDP port of the same number as the receiver's TCP port. The receiver then pings
through that relay like a host listed in ``nodes``. :class:`RelayBook` decides what a
datagram may change; :mod:`dispy_core.aio.relays` owns the sockets.

Theory of operation
-------------------
A ``relay`` datagram is unauthenticated and its source can be forged, so all it may cause is
pings, to the datagram's source address, never to an address it names:

* **Before parsing**, every datagram takes a token from its source address's bucket
  (:data:`SOURCE_BURST` at once, then :data:`SOURCE_RATE` a second, for the
  :data:`MAX_SOURCES` most recently heard sources). A relay announces itself once a minute
  at most, so this only ever stops a flood.
* It must pass :func:`~dispy_core.protocol.discovery.decode_relay` (a strict schema, this
  protocol version, at most 2048 bytes), and its source must be an address a ping may go to
  (not unspecified, multicast or the limited broadcast).
* **In all**, at most :data:`ALL_BURST` announcements at once, then :data:`ALL_RATE` a
  second, are accepted, so that a flood from many (forged) sources costs a bounded number of
  pings whatever the number of sources.
* An accepted announcement records the relay as ``(source address, relay_port)``: the
  ``relay_addr`` it names is kept for logs only (behind NAT it differs from the source, and
  pinging it would let anyone aim this side's pings at a third host). It asks the caller to
  ping that relay at once: a relay announces itself at start and again only while nobody
  pinged through it for a minute, so each announcement is a request for a ping.
* At most :data:`MAX_RELAYS` relays are kept; a new one makes room by forgetting the least
  recently announced. A relay not announced again for :data:`FORGET_AFTER` seconds is
  forgotten (:meth:`RelayBook.targets` expires them). A relay that is in use stops
  announcing itself, so it is forgotten then and learned again at its next announcement
  (a minute after this side's last ping through it); a relay also listed in ``nodes`` is
  pinged as a listed host meanwhile.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dispy_core.protocol.discovery import decode_relay
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.fanout import LIMITED_BROADCAST, Target
from dispy_core.ratelimit import KeyedLimiter, TokenBucket

SOURCE_BURST = 4
SOURCE_RATE = 0.2
MAX_SOURCES = 1024
ALL_BURST = 16
ALL_RATE = 2.0
MAX_RELAYS = 64
FORGET_AFTER = 600.0


@dataclass(frozen=True, slots=True)
class KnownRelay:
    """A relay to ping: ``address:port`` (the datagram's source, its ``relay_port``)."""

    address: str
    port: int
    named: str  # the relay_addr it announced, for logs only

    def target(self) -> Target:
        return Target(self.address, self.port)

    def describe(self) -> str:
        if self.named == self.address:
            return f"{self.address}:{self.port}"
        return f"{self.address}:{self.port} (it calls itself {self.named})"


@dataclass(frozen=True, slots=True)
class Heard:
    """What one datagram did: ``relay`` to ping now (None: dropped, for ``reason``)."""

    relay: KnownRelay | None
    new: bool = False
    reason: str = ""


def pingable_source(address: str) -> bool:
    """Whether a datagram's source address is one a ping may be sent to."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False
    return str(ip) != LIMITED_BROADCAST


class RelayBook:
    """The relays heard of; see the module docstring. Times are seconds (monotonic)."""

    def __init__(
        self,
        *,
        max_relays: int = MAX_RELAYS,
        forget_after: float = FORGET_AFTER,
        now: float = 0.0,
    ) -> None:
        self.max_relays = max_relays
        self.forget_after = forget_after
        self._sources = KeyedLimiter(SOURCE_RATE, SOURCE_BURST, MAX_SOURCES)
        self._all = TokenBucket(ALL_RATE, ALL_BURST, now)
        # (address, port) -> (relay, last announced), least recently announced first
        self._relays: OrderedDict[tuple[str, int], tuple[KnownRelay, float]] = OrderedDict()

    def heard(self, data: bytes, source: str, now: float) -> Heard:
        """One datagram from ``source`` (an address) at time ``now``."""
        if not self._sources.take(source, now):
            return Heard(None, reason="rate of its source exceeded")
        try:
            announce = decode_relay(data)
        except RemoteProtocolError as exc:
            return Heard(None, reason=str(exc))
        if not pingable_source(source):
            return Heard(None, reason=f"source {source} cannot be pinged")
        if not self._all.take(now):
            return Heard(None, reason="rate of all relay announcements exceeded")
        key = (source, announce.relay_port)
        known = self._relays.pop(key, None)
        relay = KnownRelay(source, announce.relay_port, announce.relay_addr)
        if known is None:
            while len(self._relays) >= self.max_relays:
                self._relays.popitem(last=False)
        self._relays[key] = (relay, now)
        return Heard(relay, new=known is None or known[0] != relay)

    def expire(self, now: float) -> list[KnownRelay]:
        """Forget the relays not announced for ``forget_after`` seconds; those forgotten."""
        gone = []
        while self._relays:
            key, (relay, at) = next(iter(self._relays.items()))
            if now - at < self.forget_after:
                break
            del self._relays[key]
            gone.append(relay)
        return gone

    def relays(self) -> list[KnownRelay]:
        """The relays kept, least recently announced first."""
        return [relay for relay, _at in self._relays.values()]

    def targets(
        self, now: float, listed: Iterable[Target] = (), node_port: int = 0
    ) -> list[Target]:
        """The relays to ping at ``now`` (expired ones forgotten first), as unicast targets,
        without those ``listed`` already (a target without a port means ``node_port``)."""
        self.expire(now)
        already = {(t.host, t.port or node_port) for t in listed}
        return [r.target() for r in self.relays() if (r.address, r.port) not in already]

    def __len__(self) -> int:
        return len(self._relays)
