"""What a peer that never authenticates may cost a real node (issue 9, item 7).

Idle TCP connections (from 60 loopback source addresses, none of them the client's) must
cost the node little memory, be capped per source and in all, and not keep a real client
from being served; a TLS connection that never finishes the TLS handshake must be dropped
after the handshake deadline (``--msg_timeout``).
"""

from __future__ import annotations

import contextlib
import socket
import time

import psutil
import pytest
from harness import wait_for
from harness.computations import square_plus
from test_tls import certificate  # noqa: F401  (the fixture)

from dispy_core.aio import admission

pytestmark = pytest.mark.timeout(90)

IDLE = 300
SOURCES = 60
MAX_RSS_GROWTH = 20 << 20


def open_idle(port: int) -> list[socket.socket]:
    socks = []
    for i in range(IDLE):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(sock)
        sock.settimeout(5)
        sock.bind((f"127.0.2.{i % SOURCES + 1}", 0))
        sock.connect(("127.0.0.1", port))
    return socks


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_idle_unauthenticated_connections_cost_little_and_are_capped(node_factory, cluster_factory):
    # A long handshake deadline keeps the admitted connections open while we measure.
    node = node_factory.one(cpus=1, name="idle", debug=False, extra_args=["--msg_timeout", "30"])
    proc = psutil.Process(node.pid)
    rss_before = proc.memory_info().rss
    socks = open_idle(node.port)
    try:
        # Once the node has closed the excess, it has taken every connection.
        wait_for(
            lambda: sum(closed_by_peer(s) for s in socks) >= IDLE - admission.TOTAL,
            20,
            f"the node closing the {IDLE - admission.TOTAL} connections over its cap",
        )
        rss_growth = proc.memory_info().rss - rss_before
        assert rss_growth < MAX_RSS_GROWTH, f"node RSS grew by {rss_growth / 2**20:.1f} MiB"
        assert sum(not closed_by_peer(s) for s in socks) == admission.TOTAL

        # A real client is still served while they are open.
        cluster = cluster_factory(square_plus, [node])
        jobs = [cluster.submit(i) for i in range(3)]
        for i, job in enumerate(jobs):
            assert job() == square_plus(i), job.exception
        cluster.close()
    finally:
        for sock in socks:
            sock.close()
    assert node.running()


def test_tls_handshake_that_never_completes_is_dropped(
    node_factory,
    certificate,  # noqa: F811
):
    cert, key = certificate
    node = node_factory.one(
        cpus=1,
        name="tls-idle",
        extra_args=["--certfile", str(cert), "--keyfile", str(key), "--msg_timeout", "2"],
    )
    with contextlib.closing(socket.create_connection(("127.0.0.1", node.port), 5)) as sock:
        started = time.monotonic()
        sock.settimeout(15)
        try:
            data = sock.recv(1024)  # we never send a ClientHello
        except ConnectionResetError:
            data = b""
        waited = time.monotonic() - started
    assert data == b""
    assert waited < 10, f"dropped after {waited:.1f} s"
    assert node.running()
