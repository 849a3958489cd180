"""Discovery datagrams and node-pattern matching.

A client (or scheduler) announces itself with a :class:`Ping` datagram sent by UDP to each
listed node and broadcast on its interface for wildcard patterns. A node that hears it and is
free connects back over TCP to ``reply_addr``; the handshake on that connection, not the
datagram, decides whether the two trust each other, so a ping carries no secret material.
``cluster`` identifies one cluster instance so a node can remember which pings it declined.

A dispy-relay announces itself to a client or scheduler already running elsewhere with a
:class:`RelayAnnounce` datagram ("ping my network through me too"); like a ping, it carries
no secret material and only ever makes the receiver send pings (PROTOCOL.md 6.6).
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.messages import NO_NUL, PROTOCOL_VERSION, U32_MAX

MAX_DATAGRAM = 2048


class Ping(BaseModel):
    """'A cluster at reply_addr:reply_port wants nodes' (UDP, unauthenticated)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["ping"] = "ping"
    protocol: int = Field(default=PROTOCOL_VERSION, ge=0, le=U32_MAX)
    cluster: Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=NO_NUL)]
    reply_addr: Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
    reply_port: int = Field(ge=1, le=65535)
    role: Literal["client", "scheduler", "recover"] = "client"


def encode_ping(ping: Ping) -> bytes:
    return ping.model_dump_json().encode()


def decode_ping(data: bytes) -> Ping:
    """Validate a datagram.

    Raises:
        RemoteProtocolError: not a ping of this protocol version.
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes is too large")
    try:
        ping = Ping.model_validate_json(data)
    except ValidationError:
        raise RemoteProtocolError("datagram is not a dispy ping") from None
    if ping.protocol != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"ping speaks protocol version {ping.protocol}, this side {PROTOCOL_VERSION}"
        )
    return ping


class RelayAnnounce(BaseModel):
    """'A dispy-relay at relay_addr:relay_port relays pings into its network' (UDP,
    unauthenticated; sent to a client's or scheduler's port)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["relay"] = "relay"
    protocol: int = Field(default=PROTOCOL_VERSION, ge=0, le=U32_MAX)
    relay_addr: Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
    relay_port: int = Field(ge=1, le=65535)


def encode_relay(announce: RelayAnnounce) -> bytes:
    return announce.model_dump_json().encode()


def decode_relay(data: bytes) -> RelayAnnounce:
    """Validate a relay announcement.

    Raises:
        RemoteProtocolError: not a relay announcement of this protocol version.
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes is too large")
    try:
        announce = RelayAnnounce.model_validate_json(data)
    except ValidationError:
        raise RemoteProtocolError("datagram is not a dispy relay announcement") from None
    if announce.protocol != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"relay announcement speaks protocol version {announce.protocol}, "
            f"this side {PROTOCOL_VERSION}"
        )
    return announce


def is_pattern(host: str) -> bool:
    """True for wildcard patterns such as ``'*'`` or ``'192.168.3.*'``."""
    return "*" in host or "?" in host or "[" in host


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    # '192.168.3.*' must match '192.168.3.17' but '*' alone matches any address; a bare
    # prefix pattern like '192.168.*' also covers deeper octets, as the reference says.
    return re.compile(fnmatch.translate(pattern))


def matches(pattern: str, address: str) -> bool:
    """Whether node ``address`` matches ``pattern`` (an address, a name or a wildcard)."""
    if not is_pattern(pattern):
        return pattern == address
    return _compiled(pattern).match(address) is not None
