"""RelayBook: which relay announcements a client or scheduler acts on (PROTOCOL.md 6.6)."""

from __future__ import annotations

import pytest

from dispy_core.protocol import relays
from dispy_core.protocol.discovery import RelayAnnounce, encode_relay
from dispy_core.protocol.fanout import Target
from dispy_core.protocol.relays import KnownRelay, RelayBook, pingable_source


def announce(addr: str = "172.16.3.2", port: int = 51348, **fields: object) -> bytes:
    return encode_relay(RelayAnnounce(relay_addr=addr, relay_port=port, **fields))  # type: ignore[arg-type]


def test_a_relay_is_pinged_at_its_source_address_not_the_one_it_names() -> None:
    book = RelayBook()
    heard = book.heard(announce("192.0.2.99", 4000), "10.0.0.5", 1.0)
    assert heard.relay == KnownRelay("10.0.0.5", 4000, "192.0.2.99")
    assert heard.new
    assert book.targets(2.0) == [Target("10.0.0.5", 4000)]
    assert "it calls itself 192.0.2.99" in heard.relay.describe()
    again = book.heard(announce("192.0.2.99", 4000), "10.0.0.5", 30.0)
    assert again.relay is not None
    assert not again.new
    assert len(book) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00garbage",
        b"{}",
        b'{"type": "ping", "cluster": "abcdefgh", "reply_addr": "1.2.3.4", "reply_port": 1}',
        b'{"type": "relay", "relay_addr": "1.2.3.4", "relay_port": 0}',
        b'{"type": "relay", "relay_addr": "1.2.3.4", "relay_port": 1, "extra": 1}',
        b'{"type": "relay", "protocol": 999, "relay_addr": "1.2.3.4", "relay_port": 1}',
        announce(port=5)[:-1] + b" " * 3000 + b"}",
    ],
)
def test_what_decode_relay_refuses_changes_nothing(data: bytes) -> None:
    book = RelayBook()
    heard = book.heard(data, "10.0.0.5", 1.0)
    assert heard.relay is None
    assert heard.reason
    assert book.targets(1.0) == []


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("10.0.0.5", True),
        ("127.0.0.1", True),
        ("::ffff:10.0.0.5", True),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("not-an-address", False),
    ],
)
def test_sources_that_cannot_be_pinged(source: str, ok: bool) -> None:
    assert pingable_source(source) is ok
    assert (RelayBook().heard(announce(), source, 1.0).relay is not None) is ok


def test_one_source_is_rate_limited_before_parsing() -> None:
    book = RelayBook()
    got = [book.heard(b"junk", "10.0.0.5", 1.0).reason for _ in range(relays.SOURCE_BURST + 1)]
    assert got[-1] == "rate of its source exceeded"
    assert book.heard(announce(), "10.0.0.5", 1.0).relay is None  # its bucket is empty
    assert book.heard(announce(), "10.0.0.6", 1.0).relay is not None  # another source's is not
    # tokens come back at SOURCE_RATE a second
    assert book.heard(announce(), "10.0.0.5", 1.0 + 1 / relays.SOURCE_RATE).relay is not None


def test_a_flood_from_many_sources_is_bounded_in_rate_and_in_size() -> None:
    book = RelayBook()
    accepted = sum(
        book.heard(announce(port=9), f"10.1.{i // 250}.{i % 250 + 1}", 5.0).relay is not None
        for i in range(2000)
    )
    assert accepted == relays.ALL_BURST
    # over 100 s: ALL_RATE a second, and never more than MAX_RELAYS kept
    accepted = 0
    for step in range(1000):
        now = 5.0 + step / 10
        for i in range(5):
            source = f"10.{2 + step // 200}.{step % 200}.{i + 1}"
            accepted += book.heard(announce(port=9), source, now).relay is not None
    assert accepted <= relays.ALL_RATE * 100 + relays.ALL_BURST
    assert len(book) == relays.MAX_RELAYS
    assert len(book.targets(105.0)) == relays.MAX_RELAYS


def test_the_least_recently_announced_relay_makes_room() -> None:
    book = RelayBook(max_relays=2)
    book.heard(announce(), "10.0.0.1", 1.0)
    book.heard(announce(), "10.0.0.2", 2.0)
    book.heard(announce(), "10.0.0.1", 3.0)  # announced again: now the most recent
    book.heard(announce(), "10.0.0.3", 4.0)
    assert [r.address for r in book.relays()] == ["10.0.0.1", "10.0.0.3"]


def test_a_relay_not_announced_again_is_forgotten() -> None:
    book = RelayBook(forget_after=600.0)
    book.heard(announce(), "10.0.0.1", 0.0)
    book.heard(announce(), "10.0.0.2", 300.0)
    assert len(book.targets(599.0)) == 2
    assert book.targets(600.0) == [Target("10.0.0.2", 51348)]
    assert [r.address for r in book.expire(900.0)] == ["10.0.0.2"]
    assert book.targets(900.0) == []


def test_a_relay_listed_already_is_not_pinged_twice() -> None:
    book = RelayBook()
    book.heard(announce(port=51348), "10.0.0.1", 0.0)
    book.heard(announce(port=4000), "10.0.0.2", 0.0)
    listed = [Target("*"), Target("10.0.0.1"), Target("10.0.0.2", 4001)]
    assert book.targets(1.0, listed, node_port=51348) == [Target("10.0.0.2", 4000)]
