"""The node's ping policy (dispy_node._pings), driven with a fake clock: no sockets."""

from __future__ import annotations

import pytest

from dispy_core.protocol.discovery import Ping
from dispy_node import _pings
from dispy_node._pings import PingPolicy, Verdict


def ping(n: int = 0, reply: str = "10.0.0.5", port: int = 51347) -> Ping:
    return Ping(cluster=f"cluster-{n:08d}", reply_addr=reply, reply_port=port)


def test_ping_from_its_reply_address_connects():
    policy = PingPolicy()
    assert policy.on_ping(ping(), "10.0.0.5", 0.0, busy=False).verdict is Verdict.CONNECT


@pytest.mark.parametrize("reply", ["10.0.0.9", "192.168.1.1", "0.0.0.0", "client.example"])
def test_reply_address_other_than_source_is_ignored_with_a_reason(reply):
    policy = PingPolicy()
    decision = policy.on_ping(ping(reply=reply), "10.0.0.5", 0.0, busy=False)
    assert decision.verdict is Verdict.IGNORE
    assert reply in decision.reason
    assert "--relay" in decision.reason
    assert decision.warn
    assert policy.remembered == 0


@pytest.mark.parametrize("reply", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_reply_address_is_allowed_from_any_source(reply):
    # ssh -R: the client says ext_ip_addr=127.0.0.1 and pings from its real address.
    policy = PingPolicy()
    decision = policy.on_ping(ping(reply=reply), "203.0.113.7", 0.0, busy=False)
    assert decision.verdict is Verdict.CONNECT


@pytest.mark.parametrize("reply", ["10.1.2.3", "client.example"])
def test_relay_source_may_name_any_reply_address(reply):
    policy = PingPolicy(relays=["192.0.2.1"])
    assert policy.on_ping(ping(reply=reply), "192.0.2.1", 0.0, busy=False).verdict is (
        Verdict.CONNECT
    )
    # ... but only the relay
    other = policy.on_ping(ping(1, reply=reply), "192.0.2.2", 0.0, busy=False)
    assert other.verdict is Verdict.IGNORE


def test_ipv4_mapped_source_compares_as_ipv4():
    policy = PingPolicy()
    assert policy.on_ping(ping(), "::ffff:10.0.0.5", 0.0, busy=False).verdict is Verdict.CONNECT


def test_per_source_rate_limit_then_refill():
    policy = PingPolicy()
    verdicts = [
        policy.on_ping(ping(i), "10.0.0.5", 0.0, busy=True).verdict
        for i in range(_pings.SOURCE_BURST + 5)
    ]
    assert verdicts[: _pings.SOURCE_BURST] == [Verdict.REMEMBER] * _pings.SOURCE_BURST
    assert verdicts[_pings.SOURCE_BURST :] == [Verdict.IGNORE] * 5
    # another source is not affected
    assert policy.on_ping(ping(99, "10.0.0.6"), "10.0.0.6", 0.0, busy=True).verdict is (
        Verdict.REMEMBER
    )
    later = 1.0 / _pings.SOURCE_RATE
    assert policy.on_ping(ping(100), "10.0.0.5", later, busy=True).verdict is Verdict.REMEMBER


def test_rejections_warn_once_a_minute_per_source():
    policy = PingPolicy()
    warns = [
        policy.on_ping(ping(i, reply="10.9.9.9"), "10.0.0.5", i * 0.5, busy=False).warn
        for i in range(100)  # 50 s of pings at 2/s (within the source's rate)
    ]
    assert warns.count(True) == 1
    assert policy.on_ping(ping(0, reply="10.9.9.9"), "10.0.0.5", 61.0, busy=False).warn


def test_warnings_are_capped_in_all_for_many_sources():
    policy = PingPolicy()
    warns = [
        policy.on_ping(ping(i, reply="10.9.9.9"), f"10.1.{i // 250}.{i % 250}", 0.0, busy=False)
        for i in range(1000)
    ]
    assert all(d.verdict is Verdict.IGNORE for d in warns)
    assert 1 <= sum(d.warn for d in warns) <= 10


def test_connect_backs_are_capped_globally():
    policy = PingPolicy()
    now = 0.0
    connects = 0
    for i in range(2000):  # 2000 sources, each within its own rate, over 10 s
        now = i * 0.005
        source = f"127.0.{i // 250}.{i % 250 + 1}"
        decision = policy.on_ping(ping(i, reply=source), source, now, busy=False)
        connects += decision.verdict is Verdict.CONNECT
    assert connects <= _pings.CONNECT_BURST + _pings.CONNECT_RATE * now + 1
    assert policy.remembered <= _pings.MAX_HEARD


def test_memory_of_pings_is_bounded_and_keeps_the_newest():
    policy = PingPolicy()
    for i in range(5000):
        source = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        policy.on_ping(ping(i, reply=source), source, 0.0, busy=True)
    assert policy.remembered == _pings.MAX_HEARD
    offered = policy.next_waiting(0.0)
    assert offered is not None
    assert offered.cluster == ping(4999).cluster
    for i in range(5000):
        policy.decline(f"declined-{i:06d}", 0.0)
    assert policy.declined_count == _pings.MAX_DECLINED
    assert len(policy._sources) <= _pings.MAX_SOURCES


def test_busy_node_remembers_latest_per_cluster_and_offers_newest_first():
    policy = PingPolicy()
    assert policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", 0.0, busy=True).verdict is (
        Verdict.REMEMBER
    )
    policy.on_ping(ping(2, "10.0.0.2"), "10.0.0.2", 1.0, busy=True)
    policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", 2.0, busy=True)
    assert policy.remembered == 2
    first = policy.next_waiting(3.0)
    second = policy.next_waiting(3.0)
    assert (first and first.cluster, second and second.cluster) == (
        ping(1).cluster,
        ping(2).cluster,
    )
    assert policy.next_waiting(3.0) is None
    assert policy.ready_in(3.0) is None


def test_remembered_pings_expire():
    policy = PingPolicy()
    policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", 0.0, busy=True)
    assert policy.next_waiting(_pings.DECLINE_MEMORY + 1) is None
    assert policy.remembered == 0


def test_free_node_over_the_connect_rate_remembers_and_says_when_to_retry():
    policy = PingPolicy()
    for i in range(_pings.CONNECT_BURST):
        src = f"10.0.0.{i + 1}"
        assert policy.on_ping(ping(i, src), src, 0.0, busy=False).verdict is Verdict.CONNECT
    late = policy.on_ping(ping(50, "10.0.1.1"), "10.0.1.1", 0.0, busy=False)
    assert late.verdict is Verdict.REMEMBER
    delay = policy.ready_in(0.0)
    assert delay == pytest.approx(1.0 / _pings.CONNECT_RATE)
    assert policy.next_waiting(0.0) is None
    offered = policy.next_waiting(delay)
    assert offered is not None
    assert offered.cluster == ping(50).cluster


def test_declined_and_served_clusters_are_ignored():
    policy = PingPolicy()
    policy.decline(ping(1).cluster, 0.0)
    assert policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", 1.0, busy=False).verdict is (
        Verdict.IGNORE
    )
    after = _pings.DECLINE_MEMORY + 1
    assert policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", after, busy=False).verdict is (
        Verdict.CONNECT
    )
    served = policy.on_ping(
        ping(2, "10.0.0.1"), "10.0.0.1", after, busy=True, serving=ping(2).cluster
    )
    assert served.verdict is Verdict.IGNORE
    assert not served.reason


def test_decline_forgets_a_remembered_ping():
    policy = PingPolicy()
    policy.on_ping(ping(1, "10.0.0.1"), "10.0.0.1", 0.0, busy=True)
    policy.decline(ping(1).cluster, 0.0)
    assert policy.next_waiting(1.0) is None
