"""What a node does with a discovery ping: connect back, remember it, or ignore it.

Theory of operation
-------------------
Pings are unauthenticated UDP, so anyone can send them, with any content and (UDP being
what it is) often from any source address. :class:`PingPolicy` bounds what a stream of them
can make a node do; it is sans-I/O (the node passes the time in, and acts on the verdict).

For each ping, in order:

1. **Rate per source.** Each source address has a token bucket (``SOURCE_BURST`` pings at
   once, then ``SOURCE_RATE`` per second; the table holds ``MAX_SOURCES`` addresses, least
   recently heard forgotten first). A ping over the rate is ignored.
2. **Reply address.** The node connects back only to the address the ping came from. Two
   exceptions: a *loopback* reply address (127.0.0.0/8, ::1), which only reaches the node's
   own host (the reference's SSH set-up: the client says ``ext_ip_addr=127.0.0.1`` and
   ``ssh -R`` forwards the node's local port to it); and pings whose source is one of the
   node's *relays* (``--relay``: a dispy-relay forwarding pings, or a NAT gateway whose
   address differs from the client's ``ext_ip_addr``), which may name any reply address.
   The address is compared as an IP address; a host name is never resolved here.
3. The cluster being served, or one declined in the last ``DECLINE_MEMORY`` seconds, is
   ignored.
4. While the node is busy the ping is **remembered** (the latest per cluster, at most
   ``MAX_HEARD`` clusters, the oldest forgotten first).
5. A free node **connects** if the global connect-back bucket (``CONNECT_BURST``, then
   ``CONNECT_RATE`` per second) has a token; otherwise the ping is remembered and offered
   when a token is back (:meth:`PingPolicy.ready_in`).

When the node becomes free it asks :meth:`PingPolicy.next_waiting` for the most recently
heard remembered ping (within ``DECLINE_MEMORY``), which also takes a connect-back token.
Declined clusters are kept for at most ``MAX_DECLINED`` entries. Ignored pings are logged at
debug level; a verdict says ``warn`` at most once a minute per source (and ten times a minute
in all), so that a flood cannot flood the log.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dispy_core.protocol.discovery import Ping
from dispy_core.ratelimit import KeyedLimiter, Once, TokenBucket

DECLINE_MEMORY = 600.0
MAX_HEARD = 256
MAX_DECLINED = 1024
MAX_SOURCES = 1024
SOURCE_RATE = 4.0
SOURCE_BURST = 16
CONNECT_RATE = 2.0
CONNECT_BURST = 6
WARN_INTERVAL = 60.0


class Verdict(enum.Enum):
    CONNECT = "connect"
    REMEMBER = "remember"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # why the ping was ignored, for the log
    warn: bool = False  # log the reason as a warning (rate-limited per source)


_CONNECT = Decision(Verdict.CONNECT)
_REMEMBER = Decision(Verdict.REMEMBER)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(slots=True)
class _Heard:
    ping: Ping
    when: float


class PingPolicy:
    """Decides, for each ping and the node's state, whether to connect back to it."""

    def __init__(self, relays: Iterable[str] = (), *, now: float = 0.0) -> None:
        self.relays = frozenset(str(_ip(r) or r) for r in relays)
        self._sources = KeyedLimiter(SOURCE_RATE, SOURCE_BURST, MAX_SOURCES)
        self._connects = TokenBucket(CONNECT_RATE, CONNECT_BURST, now)
        self._warned = Once(WARN_INTERVAL, MAX_SOURCES)
        self._heard: OrderedDict[str, _Heard] = OrderedDict()
        self._declined: OrderedDict[str, float] = OrderedDict()

    def on_ping(
        self, ping: Ping, source: str, now: float, *, busy: bool, serving: str | None = None
    ) -> Decision:
        """The verdict on ``ping``, heard from ``source`` (an IP address) at ``now``."""
        source_ip = _ip(source)
        key = str(source_ip or source)
        if not self._sources.take(key, now):
            return self._ignore(
                key,
                now,
                f"more than {SOURCE_RATE:g} pings a second from {key}: ignoring some",
            )
        if not self.reply_allowed(ping.reply_addr, source_ip):
            return self._ignore(
                key,
                now,
                f"ping from {key} asks for a connection to {ping.reply_addr}:{ping.reply_port}; "
                f"a node connects back only to the ping's source, to a loopback address, or "
                f"for a relay named with --relay (a client behind NAT: its ext_ip_addr must "
                f"be the gateway's address, {key} here if the gateway sent this ping)",
            )
        if ping.cluster == serving or self.declined(ping.cluster, now):
            return Decision(Verdict.IGNORE)
        if not busy and self._connects.take(now):
            self._heard.pop(ping.cluster, None)
            return _CONNECT
        self._remember(ping, now)
        return _REMEMBER

    def reply_allowed(
        self, reply_addr: str, source: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ) -> bool:
        reply = _ip(reply_addr)
        if reply is None:
            return source is not None and str(source) in self.relays
        if reply.is_loopback or reply == source:
            return True
        return source is not None and str(source) in self.relays

    def _ignore(self, key: str, now: float, reason: str) -> Decision:
        return Decision(Verdict.IGNORE, reason, warn=self._warned(key, now))

    def _remember(self, ping: Ping, now: float) -> None:
        self._heard.pop(ping.cluster, None)
        if len(self._heard) >= MAX_HEARD:
            self._heard.popitem(last=False)
        self._heard[ping.cluster] = _Heard(ping, now)

    # -- the node's state changes ---------------------------------------------------------

    def declined(self, cluster: str, now: float) -> bool:
        when = self._declined.get(cluster)
        return when is not None and now - when < DECLINE_MEMORY

    def decline(self, cluster: str, now: float) -> None:
        """Ignore ``cluster`` for DECLINE_MEMORY seconds (its handshake failed, or it does not
        want this node)."""
        self._declined.pop(cluster, None)
        if len(self._declined) >= MAX_DECLINED:
            self._declined.popitem(last=False)
        self._declined[cluster] = now
        self._heard.pop(cluster, None)

    def undecline(self, cluster: str) -> None:
        """Stop ignoring ``cluster`` (it was declined only while the node was not for it)."""
        self._declined.pop(cluster, None)

    def take_connect(self, now: float) -> bool:
        """Take a connect-back token for a connection outside :meth:`on_ping`'s verdicts
        (telling a client why it is refused)."""
        return self._connects.take(now)

    def forget(self, cluster: str) -> None:
        """``cluster`` was served: drop its remembered ping."""
        self._heard.pop(cluster, None)

    def next_waiting(self, now: float) -> Ping | None:
        """The remembered ping a free node should connect back to now, if any (it is taken
        out of memory, with a connect-back token)."""
        self._drop_stale(now)
        if not self._heard or not self._connects.take(now):
            return None
        _cluster, heard = self._heard.popitem(last=True)
        return heard.ping

    def ready_in(self, now: float) -> float | None:
        """Seconds until :meth:`next_waiting` may give a ping, or None if none waits."""
        self._drop_stale(now)
        if not self._heard:
            return None
        return self._connects.ready_in(now)

    def _drop_stale(self, now: float) -> None:
        # Oldest first: entries are kept in the order they were (last) heard.
        while self._heard:
            cluster, heard = next(iter(self._heard.items()))
            if now - heard.when < DECLINE_MEMORY and not self.declined(cluster, now):
                break
            del self._heard[cluster]

    @property
    def remembered(self) -> int:
        return len(self._heard)

    @property
    def declined_count(self) -> int:
        return len(self._declined)
