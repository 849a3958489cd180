"""Discovery pings and node patterns (dispy_core.protocol.discovery, dispy_core.aio.discovery)."""

from __future__ import annotations

import asyncio
import json

import pytest

from dispy_core.aio.discovery import listen_pings, send_ping, udp_socket
from dispy_core.protocol.discovery import (
    MAX_DATAGRAM,
    Ping,
    RelayAnnounce,
    decode_ping,
    decode_relay,
    encode_ping,
    encode_relay,
    is_pattern,
    matches,
)
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.messages import PROTOCOL_VERSION
from dispy_core.testing import async_test

PING = Ping(cluster="0123456789abcdef01234567", reply_addr="127.0.0.1", reply_port=40000)


def test_ping_round_trips():
    assert decode_ping(encode_ping(PING)) == PING


@pytest.mark.parametrize("role", ["client", "scheduler", "recover"])
def test_ping_round_trips_for_every_role(role):
    ping = PING.model_copy(update={"role": role})
    assert decode_ping(encode_ping(ping)).role == role


def test_ping_carries_the_protocol_version_and_no_secret_material():
    fields = json.loads(encode_ping(PING))
    assert fields["protocol"] == PROTOCOL_VERSION
    assert set(fields) == {"type", "protocol", "cluster", "reply_addr", "reply_port", "role"}


def test_ping_fits_in_one_datagram_even_with_the_longest_fields():
    ping = Ping(cluster="c" * 64, reply_addr="a" * 255, reply_port=65535, role="scheduler")
    assert len(encode_ping(ping)) <= MAX_DATAGRAM


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02",
        b"PING",
        b"{}",
        b'{"type": "ping"}',
        b'{"type": "pong", "cluster": "0123456789", "reply_addr": "h", "reply_port": 1}',
        b'{"type": "ping", "cluster": "short", "reply_addr": "h", "reply_port": 1}',
        b'{"type": "ping", "cluster": "0123456789", "reply_addr": "h", "reply_port": 0}',
        b'{"type": "ping", "cluster": "0123456789", "reply_addr": "h", "reply_port": 1, "x": 1}',
        b'{"type": "ping", "cluster": "0123456789", "reply_addr": "h", "reply_port": 1, '
        b'"role": "node"}',
    ],
)
def test_garbage_datagram_rejected(data):
    with pytest.raises(RemoteProtocolError, match="not a dispy ping"):
        decode_ping(data)


def test_oversized_datagram_rejected_before_parsing():
    data = b"{" + b" " * MAX_DATAGRAM + b"}"
    with pytest.raises(RemoteProtocolError, match=f"{len(data)} bytes is too large"):
        decode_ping(data)


def test_ping_of_another_protocol_version_rejected_naming_both():
    data = encode_ping(PING.model_copy(update={"protocol": 999}))
    with pytest.raises(RemoteProtocolError, match=f"version 999, this side {PROTOCOL_VERSION}"):
        decode_ping(data)


# --- patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("*", "192.168.3.17", True),
        ("*", "10.0.0.1", True),
        ("*", "node-1.example.org", True),
        ("192.168.3.*", "192.168.3.17", True),
        ("192.168.3.*", "192.168.3.255", True),
        ("192.168.3.*", "192.168.30.1", False),
        ("192.168.3.*", "192.168.4.17", False),
        ("192.168.3.*", "10.192.168.3", False),
        ("192.168.*", "192.168.200.3", True),
        ("192.168.3.1?", "192.168.3.17", True),
        ("192.168.3.1?", "192.168.3.1", False),
        ("192.168.3.[12]", "192.168.3.2", True),
        ("192.168.3.[12]", "192.168.3.3", False),
        ("192.168.3.17", "192.168.3.17", True),
        ("192.168.3.17", "192.168.3.170", False),
        ("192.168.3.17", "192.168.3.1", False),
        ("node-1", "node-1", True),
        ("node-1", "node-10", False),
    ],
)
def test_pattern_matching(pattern, address, expected):
    assert matches(pattern, address) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("*", True),
        ("10.0.0.*", True),
        ("10.0.0.?", True),
        ("10.0.0.[1-3]", True),
        ("10.0.0.1", False),
        ("node.example.org", False),
    ],
)
def test_is_pattern(host, expected):
    assert is_pattern(host) is expected


# --- the UDP endpoint on loopback -------------------------------------------------------------


@async_test()
async def test_ping_sent_over_loopback_udp_is_heard():
    heard: asyncio.Queue[tuple[Ping, tuple[str, int]]] = asyncio.Queue()
    listener = udp_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    transport = await listen_pings(listener, lambda ping, addr: heard.put_nowait((ping, addr)))
    sender = udp_socket("127.0.0.1", 0)
    try:
        sender.sendto(b"garbage first: ignored", ("127.0.0.1", port))
        assert send_ping(sender, PING, ("127.0.0.1", port))
        ping, addr = await heard.get()
        assert ping == PING
        assert addr == sender.getsockname()
        assert heard.empty()
    finally:
        sender.close()
        transport.close()


def test_send_ping_reports_failure_instead_of_raising():
    sock = udp_socket("127.0.0.1", 0)
    sock.close()
    assert send_ping(sock, PING, ("127.0.0.1", 9)) is False


# --- the relay announcement (PROTOCOL.md 6.6) ----------------------------------------------

ANNOUNCE = RelayAnnounce(relay_addr="10.1.2.3", relay_port=51348)


def test_relay_announcement_round_trips_and_carries_no_secret_material():
    assert decode_relay(encode_relay(ANNOUNCE)) == ANNOUNCE
    assert set(json.loads(encode_relay(ANNOUNCE))) == {
        "type",
        "protocol",
        "relay_addr",
        "relay_port",
    }


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        encode_ping(PING),  # a ping is not an announcement, and the reverse
        json.dumps({"type": "relay", "relay_addr": "10.1.2.3", "relay_port": 0}).encode(),
        json.dumps({"type": "relay", "relay_addr": "a", "relay_port": 1, "x": 1}).encode(),
        b"{" + b" " * MAX_DATAGRAM + b"}",
    ],
)
def test_relay_announcement_garbage_is_refused(data):
    with pytest.raises(RemoteProtocolError):
        decode_relay(data)


def test_relay_announcement_of_another_version_names_both():
    data = json.dumps({**json.loads(encode_relay(ANNOUNCE)), "protocol": 99}).encode()
    with pytest.raises(RemoteProtocolError, match=f"version 99, this side {PROTOCOL_VERSION}"):
        decode_relay(data)
    with pytest.raises(RemoteProtocolError):
        decode_ping(encode_relay(ANNOUNCE))
