"""The receiving side of ``relay`` datagrams, on loopback (issue 12, PROTOCOL.md 6.6).

A JobCluster hears relay announcements on UDP at its own port, ``dispy-scheduler serve`` at
its ``--scheduler_port``. Here plain UDP sockets play the relays: each is bound at the
address and port it announces, so it receives the pings the receiver sends "through" it.
Sockets on other loopback addresses (127.0.0.0/8) tell forged sources apart.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from harness import free_port, wait_for
from harness.computations import square_plus

from dispy_core.protocol import relays
from dispy_core.protocol.discovery import (
    Ping,
    RelayAnnounce,
    decode_ping,
    encode_ping,
    encode_relay,
)

pytestmark = pytest.mark.timeout(90)


class FakeRelay:
    """A UDP socket at ``address:port`` that announces itself and collects the pings."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.setblocking(False)
        self.port = port

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    def announce(self, to: tuple[str, int], named: str | None = None) -> None:
        name = named if named is not None else self.sock.getsockname()[0]
        self.send(encode_relay(RelayAnnounce(relay_addr=name, relay_port=self.port)), to)

    def pings(self) -> list[Ping]:
        got = []
        while True:
            try:
                data, _addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                return got
            got.append(decode_ping(data))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fakes() -> Iterator[list[FakeRelay]]:
    made: list[FakeRelay] = []
    yield made
    for fake in made:
        fake.close()


def fake(fakes: list[FakeRelay], address: str, port: int) -> FakeRelay:
    made = FakeRelay(address, port)
    fakes.append(made)
    return made


def garbage_and_forgeries(third: FakeRelay, to: tuple[str, int], fakes: list[FakeRelay]) -> None:
    """Datagrams that must change nothing: garbage, pings, other versions, and relay
    announcements naming ``third`` (whose source is someone else) but with a bad field."""
    port = third.port
    datagrams = [
        b"",
        b"\x00garbage" * 50,
        b"{}",
        b"x" * 3000,
        encode_ping(Ping(cluster="forged-0001", reply_addr="127.0.0.1", reply_port=port)),
        b'{"type": "relay", "protocol": 999, "relay_addr": "127.0.0.9", "relay_port": %d}' % port,
        b'{"type": "relay", "relay_addr": "127.0.0.9", "relay_port": %d, "x": 1}' % port,
        b'{"type": "relay", "relay_addr": "127.0.0.9", "relay_port": 0}',
    ]
    for i in range(20):
        sock = fake(fakes, f"127.0.7.{i + 1}", 0)
        for data in datagrams:
            sock.send(data, to)


def test_a_cluster_pings_a_relay_at_its_source_and_ignores_the_rest(
    node_factory, cluster_factory, fakes
):
    node = node_factory.one(name="local")
    cluster = cluster_factory(square_plus, [node])
    to = ("127.0.0.1", cluster.port)
    relay_port = free_port()
    third = fake(fakes, "127.0.0.9", relay_port)  # a host a forged announcement names

    garbage_and_forgeries(third, to, fakes)
    time.sleep(0.5)
    assert third.pings() == []
    assert all(f.pings() == [] for f in fakes)

    # An announcement naming a third host: pings go to its source, never to the name.
    real = fake(fakes, "127.0.5.1", relay_port)
    real.announce(to, named="127.0.0.9")
    pings = wait_for(real.pings, 10, "a ping to the relay's source address")
    assert {(p.reply_addr, p.reply_port, p.role) for p in pings} == {
        ("127.0.0.1", cluster.port, "client")
    }
    assert third.pings() == []
    # The relay stays in the ping rounds: a node added later is pinged with it.
    cluster.allocate_node("127.0.0.1")  # any change that makes the cluster ping again
    wait_for(real.pings, 10, "the relay pinged again in the next round")
    assert third.pings() == []

    jobs = [cluster.submit(i) for i in range(4)]
    assert cluster.wait(timeout=30)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(4)]


def test_a_flood_of_announcements_costs_a_bounded_number_of_pings(
    node_factory, cluster_factory, fakes
):
    node = node_factory.one(name="local")
    cluster = cluster_factory(square_plus, [node])
    wait_for(lambda: cluster.nodes(), 20, "the node joining")  # no more early re-pings
    to = ("127.0.0.1", cluster.port)
    port = free_port()
    flooders = [fake(fakes, f"127.0.2.{i + 1}", port) for i in range(100)]
    started = time.monotonic()
    for _round in range(20):
        for flooder in flooders:
            flooder.announce(to)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    pinged = {f.sock.getsockname()[0]: len(f.pings()) for f in flooders}
    pinged = {k: v for k, v in pinged.items() if v}
    bound = relays.ALL_BURST + relays.ALL_RATE * (elapsed + 0.5) + 1
    assert 1 <= len(pinged) <= bound, pinged
    assert sum(pinged.values()) <= bound, pinged

    # Once the flood stops, a real relay is heard again (the rate in all refills).
    time.sleep(1.0)
    real = fake(fakes, "127.0.5.2", free_port())
    real.announce(to)
    wait_for(real.pings, 10, "the real relay pinged after the flood")
    jobs = [cluster.submit(i) for i in range(4)]
    assert cluster.wait(timeout=30)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(4)]


def test_the_scheduler_pings_a_relay_that_announces_itself(node_factory, scheduler_factory, fakes):
    node = node_factory.one(name="local")
    sched = scheduler_factory([node])
    to = ("127.0.0.1", sched.scheduler_port)
    relay_port = free_port()
    third = fake(fakes, "127.0.0.9", relay_port)
    garbage_and_forgeries(third, to, fakes)

    # The scheduler logs each at debug level: let it drain its socket's buffer first (a
    # datagram past a full buffer is lost, as on any UDP port).
    time.sleep(1.0)
    real = fake(fakes, "127.0.5.3", relay_port)
    real.announce(to, named="127.0.0.9")
    pings = wait_for(real.pings, 10, "the scheduler's ping to the relay")
    assert {(p.reply_addr, p.reply_port, p.role) for p in pings} == {
        ("127.0.0.1", sched.port, "scheduler")
    }
    assert third.pings() == []
    assert all(f.pings() == [] for f in fakes if f is not real)
    sched.wait_log(f"relay 127.0.5.3:{relay_port} (it calls itself 127.0.0.9) announced itself")
    assert sched.running()
    assert "Traceback" not in sched.log_text()
