"""``dispy-relay run`` as a real process on loopback (issue 12, the relay).

On loopback the relay's address and a client's are the same (127.0.0.1), so these tests
make the path through the relay the only one: the client pings only the relay's listen port
and a port where nothing listens, never the node's; a UDP socket bound like a node's (on the
loopback broadcast address 127.255.255.255, shared with SO_REUSEPORT) shows exactly what the
relay broadcasts. Networks of their own (namespaces) are tested elsewhere.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port, wait_for
from harness.computations import square_plus
from harness.relay import RelayProcess, wait_exit

from dispy_core.protocol.discovery import Ping, decode_ping, decode_relay, encode_ping

pytestmark = pytest.mark.timeout(60)

LOOPBACK_BROADCAST = "127.255.255.255"


class Sniffer:
    """Receives what is broadcast to ``port`` on loopback, as a node there would."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((LOOPBACK_BROADCAST, port))
        self.sock.settimeout(0.2)

    def drain(self, seconds: float) -> list[tuple[bytes, str]]:
        """Everything received within ``seconds`` (datagram, source address)."""
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            got.append((data, addr[0]))
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.kill()


def start_relay(
    relays: list[RelayProcess], workdir: Path, *args: str, stdin: str = "devnull"
) -> RelayProcess:
    relay = RelayProcess(workdir, args, stdin=stdin)
    relays.append(relay)
    return relay.start().wait_ready()


def sender(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    return sock


def test_a_node_the_client_never_pings_joins_through_the_relay(
    node_factory, cluster_factory, relays, tmp_path
):
    listen, node_port, nobody = free_port(), free_port(), free_port()
    node = node_factory.one(
        name="behind-relay", port=node_port, extra_args=["--relay", "127.0.0.1"]
    )
    # The client pings the relay's port, and broadcasts for its pattern to a port where no
    # node listens: without the relay nothing reaches the node.
    cluster = cluster_factory(
        square_plus, [("127.0.0.1", listen), "127.0.0.*"], node_port=nobody, ping_interval=1.0
    )
    time.sleep(1.2)  # the client's first ten pings have gone out
    assert cluster.nodes() == []
    relay = start_relay(
        relays, tmp_path / "relay", "-i", "127.0.0.1", "--listen_port", str(listen),
        "--node_port", str(node_port), "-d",
    )  # fmt: skip
    # The client pings again every second (ping_interval), whenever the relay is up.
    wait_for(lambda: cluster.nodes(), 20, "the node joining through the relay")
    assert [(n.name, n.port) for n in cluster.nodes()] == [("behind-relay", node.port)]
    jobs = [cluster.submit(i) for i in range(6)]
    assert cluster.wait(timeout=30)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(6)]
    assert relay.count("relayed ping of client 127.0.0.1:") >= 1
    cluster.close()
    assert relay.stop() == 0


def test_garbage_and_forged_pings_are_not_relayed_and_a_real_ping_still_is(relays, tmp_path):
    listen, node_port = free_port(), free_port()
    sniffer = Sniffer(node_port)
    try:
        relay = start_relay(
            relays, tmp_path / "relay", "-i", "127.0.0.1", "--listen_port", str(listen),
            "--node_port", str(node_port),
        )  # fmt: skip
        flooders = [sender(f"127.0.2.{i + 1}") for i in range(100)]
        sent = 0
        for round_ in range(20):
            for i, sock in enumerate(flooders):
                forged = Ping(
                    cluster=f"forged-{round_:04d}-{i:04d}",
                    reply_addr="127.0.0.9",  # not the sender: nodes would go to a third host
                    reply_port=9,
                )
                for datagram in (b"\x00garbage" * (i % 7), b"{}", encode_ping(forged)):
                    sock.sendto(datagram, ("127.0.0.1", listen))
                    sent += 1
        for sock in flooders:
            sock.close()
        assert sniffer.drain(1.0) == []
        assert sent == 6000

        # One source flooding valid pings gets a burst through, then its rate.
        flood = sender("127.0.3.1")
        for i in range(200):
            ping = Ping(cluster=f"valid-flood-{i:05d}", reply_addr="127.0.3.1", reply_port=9)
            flood.sendto(encode_ping(ping), ("127.0.0.1", listen))
        flood.close()
        relayed_flood = sniffer.drain(1.0)
        assert 1 <= len(relayed_flood) <= 8 + 3  # SOURCE_BURST, plus 2 a second for ~1 s

        # A real client is still relayed, once, unchanged, from the relay's address.
        client = sender("127.0.4.1")
        real = Ping(cluster="a-real-client-0001", reply_addr="127.0.4.1", reply_port=4242)
        client.sendto(encode_ping(real), ("127.0.0.1", listen))
        client.sendto(encode_ping(real), ("127.0.0.1", listen))  # its early re-ping
        got = wait_for(lambda: sniffer.drain(0.3), 10, "the real ping relayed")
        got += sniffer.drain(0.5)
        client.close()
        assert [(decode_ping(data), source) for data, source in got] == [(real, "127.0.0.1")]
        assert not relay.exited()
        assert relay.stop() == 0
        log = relay.log_text()
        assert "not relayed" in log
        assert "Traceback" not in log
        assert log.count("WARNING") <= 12  # a flood does not flood the log
    finally:
        sniffer.close()


def test_scheduler_node_hears_the_relay_and_its_ping_is_relayed(relays, tmp_path):
    listen, node_port = free_port(), free_port()
    scheduler = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    scheduler.bind(("127.0.0.1", 0))
    scheduler.settimeout(10)
    sniffer = Sniffer(node_port)
    try:
        relay = start_relay(
            relays, tmp_path / "relay", "-i", "127.0.0.1", "--listen-port", str(listen),
            "--node-port", str(node_port), "--scheduler_node", "localhost",
            "--scheduler_port", str(scheduler.getsockname()[1]),
        )  # fmt: skip
        data, source = scheduler.recvfrom(4096)
        announce = decode_relay(data)
        assert (announce.relay_addr, announce.relay_port) == ("127.0.0.1", listen)
        assert source == ("127.0.0.1", listen)  # from the relay's own socket
        # What a receiver does: ping the relay (at the announcement's source address).
        ping = Ping(
            cluster="the-scheduler-0001",
            reply_addr="127.0.0.1",
            reply_port=scheduler.getsockname()[1],
            role="scheduler",
        )
        scheduler.sendto(encode_ping(ping), (source[0], announce.relay_port))
        got = wait_for(lambda: sniffer.drain(0.3), 10, "the scheduler's ping relayed")
        assert [decode_ping(d) for d, _ in got] == [ping]
        assert relay.count("announced this relay to localhost:") == 1
        assert relay.stop(signal.SIGINT) == 0
    finally:
        scheduler.close()
        sniffer.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_it_cleanly_without_reading_stdin(relays, tmp_path, sig):
    relay = start_relay(
        relays, tmp_path / "relay", "-i", "127.0.0.1", "--listen_port", str(free_port()),
        stdin="closed",
    )  # fmt: skip
    started = time.monotonic()
    assert relay.stop(sig) == 0
    assert time.monotonic() - started < 5
    log = relay.log_text()
    assert "dispy-relay shutting down (relayed 0 ping(s))" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--node_port", "0"], "Invalid value for '--node-port'"),
        (["--listen-port", "x"], "Invalid value for '--listen-port'"),
        (["-i", "192.0.2.77"], "dispy-relay run: -i 192.0.2.77 is not an IPv4 address of"),
        (["-i", "no-such-host.invalid"], "dispy-relay run: cannot resolve -i"),
        (
            ["-i", "127.0.0.1", "--scheduler_node", "no-such-host.invalid"],
            "dispy-relay run: cannot resolve --scheduler_node 'no-such-host.invalid'",
        ),
    ],
)
def test_bad_options_give_one_error_and_exit_2(tmp_path, args, expected):
    relay = RelayProcess(tmp_path / "relay", args).start()
    assert wait_exit(relay, 20) == 2
    log = relay.log_text()
    assert expected in log
    assert "Traceback" not in log
    if not expected.startswith("Invalid value"):
        assert len(log.strip().splitlines()) == 1, log


def test_a_port_already_taken_is_one_error(tmp_path):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        relay = RelayProcess(tmp_path / "relay", ["-i", "127.0.0.1", "--node_port", str(port)])
        assert wait_exit(relay.start(), 20) == 2
        line = relay.log_text().strip()
        assert line.startswith(f"dispy-relay run: cannot listen on 127.0.0.1:{port} (UDP): ")
        assert "give the relay another --listen_port" in line
        assert len(line.splitlines()) == 1
    finally:
        taken.close()


def test_relayed_datagrams_are_what_came_in(relays, tmp_path):
    # The relay sends on the bytes it got, however the client spelled its JSON.
    listen, node_port = free_port(), free_port()
    sniffer = Sniffer(node_port)
    try:
        start_relay(
            relays, tmp_path / "relay", "-i", "127.0.0.1", "--listen_port", str(listen),
            "--node_port", str(node_port),
        )  # fmt: skip
        fields = {
            "type": "ping",
            "cluster": "spaced-out-0001",
            "reply_addr": "127.0.0.1",
            "reply_port": 5,
            "role": "recover",
        }
        sent = json.dumps(fields, indent=4).encode()
        with sender("127.0.0.1") as sock:
            sock.sendto(sent, ("127.0.0.1", listen))
        got = wait_for(lambda: sniffer.drain(0.3), 10, "the ping relayed")
        assert got == [(sent, "127.0.0.1")]
    finally:
        sniffer.close()
