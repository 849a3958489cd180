"""A flood of forged discovery pings against a real node (issue 9, item 6).

Thousands of pings with distinct cluster tokens, from 200 loopback source addresses, some
asking the node to connect to a port this test listens on (a loopback reply address, which a
node allows for ``ssh -R``) and some naming a forged reply address (``0.0.0.0``, which is not
the source; Linux routes a connection to it back to this host, so nothing leaves the
machine). The node must keep its memory bounded, connect back no faster than its global
rate, never to the forged address, and still serve a real client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from harness import wait_for
from harness.computations import square_plus

from dispy_core.protocol.discovery import Ping, encode_ping
from dispy_node import _pings

pytestmark = pytest.mark.timeout(90)

SOURCES = 200  # 127.0.1.1 .. 127.0.1.200 (the client pings from 127.0.0.1)
ROUNDS = 60  # each source sends one ping per round: 12,000 pings
ROUND_GAP = 0.04  # about 2.4 s of flood
MAX_RSS_GROWTH = 5 << 20  # 11 MiB before the fix, 0.4 MiB after


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections it gets and closes each at once."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener, Listener]]:
    three = (Listener(), Listener(), Listener())
    yield three
    for listener in three:
        listener.close()


def flood(node_port: int, loopback_port: int, forged_port: int) -> int:
    """Send the pings; the number sent."""
    socks = []
    try:
        for i in range(SOURCES):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((f"127.0.1.{i + 1}", 0))
        sent = 0
        for r in range(ROUNDS):
            for i, sock in enumerate(socks):
                n = r * SOURCES + i
                reply = ("0.0.0.0", forged_port) if n % 2 else ("127.0.0.1", loopback_port)
                ping = Ping(cluster=f"flood-{n:058d}", reply_addr=reply[0], reply_port=reply[1])
                sock.sendto(encode_ping(ping), ("127.0.0.1", node_port))
                sent += 1
            time.sleep(ROUND_GAP)
        return sent
    finally:
        for sock in socks:
            sock.close()


def test_ping_flood_keeps_node_bounded_and_serving(node_factory, cluster_factory, listeners):
    loopback, forged, marker = listeners
    node = node_factory.one(cpus=1, name="flooded", debug=False)
    proc = psutil.Process(node.pid)
    rss_before = proc.memory_info().rss
    started = time.monotonic()
    sent = flood(node.port, loopback.port, forged.port)
    flood_time = time.monotonic() - started
    # A last ping from a fresh source: the node heard everything before it (one UDP socket,
    # in order) once it connects back for it (the newest remembered ping is offered first).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.1.250", 0))
        last = Ping(cluster="flood-marker", reply_addr="127.0.0.1", reply_port=marker.port)
        sock.sendto(encode_ping(last), ("127.0.0.1", node.port))
    wait_for(lambda: marker.count, 20, "the node connecting back for the last ping")
    elapsed = time.monotonic() - started
    rss_growth = proc.memory_info().rss - rss_before
    assert sent == SOURCES * ROUNDS
    assert flood_time < 20
    assert forged.count == 0, "the node connected to a reply address that is not the source"
    limit = _pings.CONNECT_BURST + _pings.CONNECT_RATE * elapsed + 1
    assert loopback.count + marker.count <= limit, (loopback.count, limit)
    assert rss_growth < MAX_RSS_GROWTH, f"node RSS grew by {rss_growth / 2**20:.1f} MiB"

    # A real client still gets the node and runs jobs.
    cluster = cluster_factory(square_plus, [node])
    jobs = [cluster.submit(i) for i in range(5)]
    for i, job in enumerate(jobs):
        assert job() == square_plus(i), job.exception
    cluster.close()
    assert node.running()
    assert forged.count == 0


def test_relay_option_lets_one_source_name_another_reply_address(node_factory, listeners):
    relayed, _, _ = listeners
    node = node_factory.one(cpus=1, name="relayed", extra_args=["--relay", "127.0.1.9"])
    for source, token in (("127.0.1.8", "not-a-relay-000"), ("127.0.1.9", "via-the-relay-0")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            ping = Ping(cluster=token, reply_addr="0.0.0.0", reply_port=relayed.port)
            sock.sendto(encode_ping(ping), ("127.0.0.1", node.port))
    wait_for(lambda: relayed.count >= 1, 10, "the node connecting back for the relay")
    node.wait_log("asks for a connection to 0.0.0.0", timeout=10)  # the other, as a warning
    assert relayed.count == 1
