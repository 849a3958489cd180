"""The relay's decisions without a network (dispy_relay.policy)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core.protocol.discovery import MAX_DATAGRAM, Ping, decode_ping, encode_ping
from dispy_core.protocol.messages import PROTOCOL_VERSION
from dispy_relay import policy
from dispy_relay.policy import (
    ANNOUNCE_INTERVAL,
    MAX_RECENT,
    MAX_SOURCES,
    RECENT_WINDOW,
    SOURCE_BURST,
    SOURCE_RATE,
    TOTAL_BURST,
    TOTAL_RATE,
    AnnounceSchedule,
    RelayPolicy,
)

CLIENT = "192.168.10.5"
LAN_BROADCAST = "172.16.3.255"


def ping(n: int = 0, reply: str = CLIENT, port: int = 40000, **fields: object) -> Ping:
    return Ping(cluster=f"cluster-{n:08d}", reply_addr=reply, reply_port=port, **fields)


def data(p: Ping) -> bytes:
    return encode_ping(p)


@pytest.fixture
def relay() -> RelayPolicy:
    return RelayPolicy(LAN_BROADCAST)


def test_a_valid_ping_is_relayed_once_with_its_fields_unchanged(relay: RelayPolicy) -> None:
    p = ping(role="scheduler")
    decision = relay.on_datagram(data(p), CLIENT, 0.0)
    assert decision.ping == p
    # The same ping again (its echo, or the client's early re-ping) is not relayed twice...
    again = relay.on_datagram(data(p), CLIENT, 0.5)
    assert again.ping is None
    assert "relayed less than" in again.reason
    assert not again.warn
    # ... until the window has passed: a later re-ping reaches nodes started since.
    assert relay.on_datagram(data(p), CLIENT, RECENT_WINDOW + 0.1).ping == p


def test_an_echo_from_the_relays_own_address_is_not_relayed(relay: RelayPolicy) -> None:
    # On a real LAN the echo's source is the relay (not the client): refused twice over.
    p = ping()
    assert relay.on_datagram(data(p), CLIENT, 0.0).ping == p
    assert relay.on_datagram(data(p), "172.16.3.2", 0.01).ping is None
    # On loopback the echo's source is the client's: the memory of what was relayed drops it.
    lo = RelayPolicy("127.255.255.255", loopback=True)
    local = ping(reply="127.0.0.1")
    assert lo.on_datagram(data(local), "127.0.0.1", 0.0).ping == local
    assert lo.on_datagram(data(local), "127.0.0.1", 0.01).ping is None


def test_another_cluster_or_port_of_the_same_client_is_relayed(relay: RelayPolicy) -> None:
    assert relay.on_datagram(data(ping(1)), CLIENT, 0.0).ping is not None
    assert relay.on_datagram(data(ping(2)), CLIENT, 0.0).ping is not None
    assert relay.on_datagram(data(ping(1, port=40001)), CLIENT, 0.0).ping is not None


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00" * 64,
        b"not json at all",
        b'{"type": "ping"}',
        json.dumps({"type": "relay", "relay_addr": CLIENT, "relay_port": 1}).encode(),
        json.dumps({**json.loads(encode_ping(ping())), "extra": 1}).encode(),
        json.dumps({**json.loads(encode_ping(ping())), "protocol": PROTOCOL_VERSION + 1}).encode(),
        b"{" + b" " * MAX_DATAGRAM + b"}",
    ],
)
def test_garbage_is_dropped(relay: RelayPolicy, datagram: bytes) -> None:
    decision = relay.on_datagram(datagram, CLIENT, 0.0)
    assert decision.ping is None
    assert decision.reason.startswith(f"datagram from {CLIENT} not relayed")
    assert decision.warn  # the first from a source is worth a warning...
    assert not relay.on_datagram(datagram, CLIENT, 1.0).warn  # ...not every one


@pytest.mark.parametrize(
    ("reply", "source", "why"),
    [
        ("10.9.9.9", CLIENT, "not the ping's source"),  # a third host
        ("172.16.3.40", CLIENT, "not the ping's source"),  # a host of the relay's own LAN
        ("client.example", CLIENT, "not an IP address"),
        ("0.0.0.0", "0.0.0.0", "broadcast, multicast or unspecified"),
        ("255.255.255.255", "255.255.255.255", "broadcast, multicast or unspecified"),
        (LAN_BROADCAST, LAN_BROADCAST, "broadcast, multicast or unspecified"),
        ("224.0.0.1", "224.0.0.1", "broadcast, multicast or unspecified"),
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("::1", "::1", "loopback"),
    ],
)
def test_bad_reply_addresses_are_dropped(
    relay: RelayPolicy, reply: str, source: str, why: str
) -> None:
    decision = relay.on_datagram(data(ping(reply=reply)), source, 0.0)
    assert decision.ping is None
    assert why in decision.reason
    assert f"for {reply}:40000" in decision.reason


def test_an_ipv4_mapped_source_counts_as_its_ipv4_address(relay: RelayPolicy) -> None:
    assert relay.on_datagram(data(ping()), f"::ffff:{CLIENT}", 0.0).ping is not None


def test_loopback_is_relayed_only_when_the_relays_network_is_loopback() -> None:
    lo = RelayPolicy("127.255.255.255", loopback=True)
    assert lo.on_datagram(data(ping(reply="127.0.0.1")), "127.0.0.1", 0.0).ping is not None
    refused = lo.on_datagram(data(ping(2, reply="127.0.0.2")), "127.0.0.1", 0.0)
    assert refused.ping is None
    assert "not the ping's source" in refused.reason
    assert lo.on_datagram(data(ping(3, reply="127.255.255.255")), "127.255.255.255", 0).ping is None


def test_rate_per_source(relay: RelayPolicy) -> None:
    # Every datagram costs its source a token, valid or not, relayed or not.
    verdicts = [relay.on_datagram(data(ping(i)), CLIENT, 0.0) for i in range(SOURCE_BURST + 5)]
    assert sum(v.ping is not None for v in verdicts) == SOURCE_BURST
    over = verdicts[SOURCE_BURST]
    assert "datagrams a second from" in over.reason
    assert over.warn
    assert not verdicts[-1].warn  # warned once per source per minute
    # Another source is not affected by this one's excess.
    other = "192.168.10.6"
    assert relay.on_datagram(data(ping(99, reply=other)), other, 0.0).ping is not None
    # The bucket refills at SOURCE_RATE a second.
    later = 1.0 / SOURCE_RATE
    assert relay.on_datagram(data(ping(100)), CLIENT, later).ping is not None
    assert relay.on_datagram(data(ping(101)), CLIENT, later).ping is None
    garbage = [relay.on_datagram(b"x", "10.0.0.1", 5.0) for _ in range(SOURCE_BURST + 1)]
    assert "datagrams a second" in garbage[-1].reason


def test_rate_in_all(relay: RelayPolicy) -> None:
    # Many sources, each within its own rate, still get at most TOTAL_BURST at once.
    sources = [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(TOTAL_BURST * 3)]
    verdicts = [relay.on_datagram(data(ping(i, reply=s)), s, 0.0) for i, s in enumerate(sources)]
    assert sum(v.ping is not None for v in verdicts) == TOTAL_BURST
    dropped = verdicts[TOTAL_BURST]
    assert "pings a second in all" in dropped.reason
    assert dropped.warn
    assert not verdicts[TOTAL_BURST + 1].warn
    # Then TOTAL_RATE a second, over ten seconds of the same flood.
    relayed = 0
    for step in range(1, 101):
        now = step * 0.1
        for i, s in enumerate(sources):
            decision = relay.on_datagram(data(ping(1000 * step + i, reply=s)), s, now)
            relayed += decision.ping is not None
    assert TOTAL_RATE * 10 - 1 <= relayed <= TOTAL_RATE * 10 + 1


def test_dropped_pings_do_not_use_the_total_rate(relay: RelayPolicy) -> None:
    # Forged reply addresses and garbage must not starve real clients of the relay.
    for i in range(500):
        source = f"10.1.{i // 250}.{i % 250 + 1}"
        relay.on_datagram(data(ping(i, reply="10.9.9.9")), source, 0.0)
        relay.on_datagram(b"garbage", source, 0.0)
    assert relay.on_datagram(data(ping()), CLIENT, 0.0).ping is not None


def test_memory_is_bounded(relay: RelayPolicy) -> None:
    now = 0.0
    for i in range(MAX_SOURCES * 3):
        source = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        relay.on_datagram(data(ping(i, reply=source)), source, now)
        now += 1.0 / TOTAL_RATE  # each is relayed: the memory of recent pings fills too
    assert relay.sources == MAX_SOURCES
    assert relay.recent <= MAX_RECENT
    assert relay.recent <= RECENT_WINDOW * TOTAL_RATE + 1  # old keys leave with time


def test_the_memory_of_recent_pings_is_capped_even_within_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy, "TOTAL_RATE", 1e6)
    monkeypatch.setattr(policy, "TOTAL_BURST", 1e6)
    relay = RelayPolicy(LAN_BROADCAST)
    for i in range(MAX_RECENT + 50):
        source = f"10.2.{i // 256}.{i % 256}"
        assert relay.on_datagram(data(ping(i, reply=source)), source, 0.0).ping is not None
    assert relay.recent == MAX_RECENT


# --- announcing to --scheduler_node ------------------------------------------------------


def test_announces_at_start_then_every_interval_while_unheard() -> None:
    schedule = AnnounceSchedule(["10.0.0.1", "10.0.0.2"])
    assert schedule.next_in(0.0) == 0.0
    assert schedule.due(0.0) == ["10.0.0.1", "10.0.0.2"]
    assert schedule.due(1.0) == []
    assert schedule.next_in(1.0) == pytest.approx(ANNOUNCE_INTERVAL - 1.0)
    schedule.heard("10.0.0.1", 30.0)  # a ping from it was relayed: it knows the relay
    schedule.heard("10.9.9.9", 30.0)  # not a target: ignored
    assert schedule.due(ANNOUNCE_INTERVAL) == ["10.0.0.2"]
    assert schedule.next_in(ANNOUNCE_INTERVAL) == pytest.approx(30.0)
    assert schedule.due(ANNOUNCE_INTERVAL + 30.0) == ["10.0.0.1"]


def test_announcing_is_bounded_to_one_per_interval_per_target() -> None:
    schedule = AnnounceSchedule(["10.0.0.1"])
    sent = sum(len(schedule.due(t * 0.5)) for t in range(int(10 * ANNOUNCE_INTERVAL / 0.5)))
    assert sent == 10


def test_no_targets_no_announcements() -> None:
    schedule = AnnounceSchedule([])
    assert schedule.due(0.0) == []
    assert schedule.next_in(0.0) is None


addresses = st.sampled_from([CLIENT, "127.0.0.1", "0.0.0.0", LAN_BROADCAST, "::1", "x", ""])
pings = st.builds(
    Ping,
    cluster=st.text(min_size=8, max_size=64).filter(lambda t: "\x00" not in t),
    reply_addr=addresses,
    reply_port=st.integers(1, 65535),
    role=st.sampled_from(["client", "scheduler", "recover"]),
)


@given(st.lists(st.tuples(st.one_of(st.binary(max_size=300), pings.map(encode_ping)), addresses)))
def test_any_datagrams_give_a_verdict_and_relay_only_pings_naming_their_source(
    datagrams: list[tuple[bytes, str]],
) -> None:
    relay = RelayPolicy(LAN_BROADCAST)
    for i, (datagram, source) in enumerate(datagrams):
        decision = relay.on_datagram(datagram, source, i * 0.01)
        if decision.ping is not None:
            assert decision.ping.reply_addr == source == CLIENT
            assert decode_ping(datagram) == decision.ping  # the relay sends ``datagram``
