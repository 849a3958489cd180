"""Discovery fan-out: the planner and schedule with a fake interface table, then the sender.

Planner tests send nothing; the sender's tests use loopback unicast only.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from dispy_core.aio.fanout import PingSender, Presence, keep_pinging
from dispy_core.netinfo import Interface
from dispy_core.protocol.discovery import Ping, decode_ping
from dispy_core.protocol.fanout import (
    EARLY_REPINGS,
    NO_NODE_RECHECK,
    NO_NODE_WARNING_DELAY,
    NO_NODE_WARNING_REPEAT,
    PingSend,
    RepingState,
    Target,
    no_node_message,
    plan_pings,
    reping,
)
from dispy_core.testing import async_test

NODE_PORT = 51348
IFACES = [
    Interface("lo", "127.0.0.1", None),
    Interface("eth0", "192.168.3.10", "192.168.3.255"),
    Interface("eth1", "10.1.2.3", "10.1.255.255"),
    Interface("ppp0", "172.16.0.5", "255.255.255.255"),  # must never be used
]


def no_route(host: str) -> str:
    raise AssertionError(f"route asked for {host!r}")


def plan(targets: list[Target], **kwargs: object) -> list[PingSend]:
    options: dict[str, object] = {
        "cluster": "token-0123456789",
        "reply_port": 4242,
        "node_port": NODE_PORT,
        "interfaces": IFACES,
        "route": no_route,
    }
    options.update(kwargs)
    return plan_pings(targets, **options)  # type: ignore[arg-type]


def summary(sends: list[PingSend]) -> list[tuple[str, tuple[str, int], str, str | None]]:
    return [(s.source, s.destination, s.ping.reply_addr, s.interface) for s in sends]


# --- whom to ping -----------------------------------------------------------------------------


def test_listed_hosts_get_unicast_on_their_port_or_node_port_in_order():
    sends = plan(
        [Target("10.0.0.5"), Target("node-b", 4000), Target("10.0.0.5", 4001)],
        ip_addrs=["192.168.3.10"],
    )
    assert [s.destination for s in sends] == [
        ("10.0.0.5", NODE_PORT),
        ("node-b", 4000),
        ("10.0.0.5", 4001),
    ]
    assert all(s.interface is None for s in sends)
    assert sends[1].describe() == "node-b:4000 (unicast)"
    ping = sends[0].ping
    assert (ping.cluster, ping.reply_port, ping.role) == ("token-0123456789", 4242, "client")


def test_no_pattern_no_broadcast_and_no_target_nothing():
    assert all(s.interface is None for s in plan([Target("10.0.0.5")], ip_addrs=["10.1.2.3"]))
    assert plan([]) == []


def test_patterns_broadcast_once_per_interface_with_a_broadcast_address():
    sends = plan([Target("*"), Target("192.168.3.*")], route=lambda host: host)
    assert summary(sends) == [
        ("", ("192.168.3.255", NODE_PORT), "192.168.3.10", "eth0"),
        ("", ("10.1.255.255", NODE_PORT), "10.1.2.3", "eth1"),
    ]
    assert sends[0].describe() == f"192.168.3.255:{NODE_PORT} (broadcast on eth0)"


def test_the_limited_broadcast_address_is_never_a_destination():
    sends = plan([Target("*")], ip_addrs=["172.16.0.5"])
    assert sends == []


def test_a_pattern_with_a_port_is_broadcast_to_that_port():
    sends = plan([Target("*"), Target("10.*", 4000)], ip_addrs=["10.1.2.3"])
    assert [s.destination for s in sends] == [
        ("10.1.255.255", NODE_PORT),
        ("10.1.255.255", 4000),
    ]


def test_broadcast_restricted_to_the_interfaces_of_ip_addr():
    sends = plan([Target("*")], ip_addrs=["10.1.2.3", "127.0.0.1"])
    assert summary(sends) == [("10.1.2.3", ("10.1.255.255", NODE_PORT), "10.1.2.3", "eth1")]


def test_unicast_then_broadcast():
    sends = plan([Target("*"), Target("10.0.0.5")], ip_addrs=["192.168.3.10"])
    assert [s.interface for s in sends] == [None, "eth0"]


# --- which reply address, from which source ---------------------------------------------------


def test_reply_address_is_ext_ip_addr_first():
    sends = plan(
        [Target("10.0.0.5"), Target("*")],
        ip_addrs=["192.168.3.10"],
        ext_ip_addrs=["203.0.113.7"],
    )
    # The pings leave from the address the client listens on; the NAT gateway rewrites it.
    assert summary(sends) == [
        ("192.168.3.10", ("10.0.0.5", NODE_PORT), "203.0.113.7", None),
        ("192.168.3.10", ("192.168.3.255", NODE_PORT), "203.0.113.7", "eth0"),
    ]


def test_ext_ip_addr_without_ip_addr_leaves_unbound():
    sends = plan([Target("10.0.0.5")], ext_ip_addrs=["127.0.0.1"])
    assert summary(sends) == [("", ("10.0.0.5", NODE_PORT), "127.0.0.1", None)]


def test_reply_address_is_the_first_ip_addr_for_unicast():
    sends = plan([Target("10.0.0.5")], ip_addrs=["192.168.3.10", "10.1.2.3"])
    assert summary(sends) == [("192.168.3.10", ("10.0.0.5", NODE_PORT), "192.168.3.10", None)]


def test_each_broadcast_names_and_leaves_from_its_interface_address():
    sends = plan([Target("*")], ip_addrs=["192.168.3.10", "10.1.2.3"])
    assert [(s.source, s.ping.reply_addr) for s in sends] == [
        ("192.168.3.10", "192.168.3.10"),
        ("10.1.2.3", "10.1.2.3"),
    ]


def test_without_ip_addr_the_reply_address_is_the_routed_local_address():
    asked: list[str] = []

    def route(host: str) -> str:
        asked.append(host)
        return {"10.0.0.5": "10.1.2.3", "192.168.3.77": "192.168.3.10"}[host]

    sends = plan([Target("10.0.0.5"), Target("192.168.3.77", 4000)], route=route)
    assert summary(sends) == [
        ("", ("10.0.0.5", NODE_PORT), "10.1.2.3", None),
        ("", ("192.168.3.77", 4000), "192.168.3.10", None),
    ]
    assert asked == ["10.0.0.5", "192.168.3.77"]


def test_role_is_passed_on():
    (send,) = plan([Target("10.0.0.5")], ip_addrs=["10.1.2.3"], role="scheduler")
    assert send.ping.role == "scheduler"


# --- when to ping again -----------------------------------------------------------------------


def run_schedule(
    until: float,
    *,
    ping_interval: float | None = None,
    connected_at: float = float("inf"),
    ready_at: float = float("inf"),
) -> tuple[list[float], list[float]]:
    """Step the schedule as its driver would; return when it pinged and when it warned."""
    pings: list[float] = []
    warnings: list[float] = []
    state = RepingState()
    elapsed = 0.0
    while elapsed <= until:
        step = reping(
            state,
            elapsed,
            ping_interval=ping_interval,
            connected=elapsed >= connected_at,
            waiting=elapsed < ready_at,
        )
        state = step.state
        if step.ping:
            pings.append(round(elapsed, 3))
        if step.warn:
            warnings.append(round(elapsed, 3))
        assert step.wake_at > elapsed
        elapsed = step.wake_at
    return pings, warnings


def test_early_repings_then_a_warning_with_a_ping_every_30_s():
    pings, warnings = run_schedule(70)
    early = [round(t, 3) for t in EARLY_REPINGS]
    assert early == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.5, 4.5]
    assert warnings == [5.0, 35.0, 65.0]
    assert pings == [*early, 5.0, 35.0, 65.0]


def test_early_repings_stop_once_a_node_connected():
    pings, warnings = run_schedule(6, connected_at=0.35, ready_at=0.5)
    assert pings == [0.1, 0.2, 0.3]
    assert warnings == []


def test_no_warning_while_a_node_is_ready_and_a_warning_soon_after_it_goes():
    pings, warnings = run_schedule(40, connected_at=0.0, ready_at=0.0)
    assert pings == warnings == []
    state = RepingState()
    step = reping(state, NO_NODE_WARNING_DELAY, ping_interval=None, connected=True, waiting=False)
    assert not step.warn
    assert step.wake_at == NO_NODE_WARNING_DELAY + NO_NODE_RECHECK
    step = reping(step.state, step.wake_at, ping_interval=None, connected=True, waiting=True)
    assert (step.warn, step.ping) == (True, True)
    assert step.wake_at == NO_NODE_WARNING_DELAY + NO_NODE_RECHECK + NO_NODE_WARNING_REPEAT


def test_ping_interval_pings_regularly_even_with_nodes():
    pings, warnings = run_schedule(10, ping_interval=3.0, connected_at=0.0, ready_at=0.0)
    assert pings == [3.0, 6.0, 9.0]
    assert warnings == []


def test_a_late_step_catches_up_with_one_ping():
    step = reping(RepingState(), 3.0, ping_interval=None, connected=False, waiting=True)
    assert (step.ping, step.warn) == (True, False)
    assert step.wake_at == EARLY_REPINGS[-1]


# --- the no-node warning ----------------------------------------------------------------------


def test_no_node_message_names_what_was_pinged_and_the_usual_causes():
    sends = plan([Target("10.0.0.5", 4000), Target("*")], ip_addrs=["192.168.3.10"])
    text = no_node_message(
        cluster_name="squares",
        waited=5.2,
        waiting=3,
        sent=sends,
        listen_addrs=["192.168.3.10"],
        port=4242,
        node_port=NODE_PORT,
        tls=True,
        refusals={"10.0.0.5": "authentication failed"},
    )
    assert text == (
        "no dispy node has joined cluster 'squares' after 5 s (3 job(s) waiting).\n"
        "  pinged: 10.0.0.5:4000 (unicast), 192.168.3.255:51348 (broadcast on eth0)\n"
        "  listening for nodes on 192.168.3.10 port 4242 with TLS\n"
        "  announced: nodes were asked to connect to 192.168.3.10 port 4242\n"
        "  refused: 10.0.0.5: authentication failed\n"
        "  usual causes: dispy-node is not running there; it uses another port (this cluster "
        "pinged port 4000, 51348) or another secret; a firewall blocks UDP/TCP port 4000, "
        "51348 or port 4242; the nodes were not started with the same --certfile/--keyfile "
        "(this cluster uses TLS, so a node without it cannot connect); the nodes cannot "
        "reach 192.168.3.10 port 4242 (behind NAT: ext_ip_addr must be the gateway's "
        "address, with that port forwarded to this host; or start the nodes with "
        "--scheduler_node)."
    )


def test_no_node_message_when_nothing_was_pinged():
    text = no_node_message(
        cluster_name="c",
        waited=30,
        waiting=0,
        sent=[],
        listen_addrs=[],
        port=4242,
        node_port=NODE_PORT,
        tls=False,
        refusals={},
    )
    assert "  pinged: nothing (no nodes listed)\n" in text
    assert "  listening for nodes on all interfaces port 4242\n" in text
    assert "refused" not in text
    assert "TLS" not in text
    assert "UDP/TCP port 51348 or port 4242." in text
    assert "announced" not in text


# --- the sender (loopback unicast only) -------------------------------------------------------


@pytest.fixture
def node():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def test_sender_sends_each_ping_from_its_source_or_the_first_address(node):
    sender = PingSender(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    try:
        for source, expected in (("127.0.0.2", "127.0.0.2"), ("127.0.0.9", "127.0.0.1")):
            ping = Ping(cluster="token-0123456789", reply_addr=source, reply_port=4242)
            assert sender.send(PingSend(source, node.getsockname(), ping))
            data, (address, _) = node.recvfrom(2048)
            assert decode_ping(data) == ping
            assert address == expected
    finally:
        sender.close()
    assert sender.sockets == {}


def test_sender_sends_a_planned_round(node):
    host, port = node.getsockname()
    sends = plan([Target(host, port), Target(host, port)], ip_addrs=["127.0.0.1"])
    sender = PingSender(["127.0.0.1"])
    try:
        sender.send_all(sends)
        for _ in sends:
            data, _ = node.recvfrom(2048)
            assert decode_ping(data).reply_addr == "127.0.0.1"
    finally:
        sender.close()


@async_test(timeout=5)
async def test_keep_pinging_runs_the_schedule_until_cancelled():
    pinged: list[float] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(
        keep_pinging(
            ping_interval=None,
            ping=lambda: pinged.append(loop.time() - started),
            warn=lambda: None,
            presence=lambda: Presence(connected=len(pinged) >= 2, waiting=True),
        )
    )
    await asyncio.sleep(0.6)
    task.cancel()
    assert len(pinged) == 2  # then a node "connected": no more early re-pings
    assert pinged[0] >= 0.09
