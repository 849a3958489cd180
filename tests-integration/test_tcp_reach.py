"""Listed nodes reached over TCP, TCP-only forwards, and the SSH case (issue 12).

A plain TCP forwarder process (:mod:`harness.forwarder`, no UDP) stands for ``ssh -L``,
``ssh -R`` or a TCP proxy. Every test checks that the bytes went through the forwarder in
both directions, so a path around it (a UDP ping reaching the node, a connect-back to the
client's real port) would fail the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import free_port, wait_for
from harness.computations import square_plus
from harness.forwarder import Forwarder
from harness.shared_client import FakeSharedClient, args

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    started: list[Forwarder] = []
    yield started
    for forwarder in started:
        forwarder.kill()


def forward(
    forwarders: list[Forwarder], tmp_path: Path, listen: tuple[str, int], to: tuple[str, int]
) -> Forwarder:
    forwarder = Forwarder(tmp_path / "forwarders", listen, to)
    forwarders.append(forwarder)
    return forwarder


def run_jobs(cluster, n: int = 6) -> None:
    jobs = [cluster.submit(i) for i in range(n)]
    assert cluster.wait(timeout=30)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(n)]


def test_a_node_behind_a_tcp_only_forward_is_dialed_and_used(
    node_factory, cluster_factory, forwarders, tmp_path
):
    node = node_factory.one(name="forwarded")
    fwd_port, client_port = free_port(), free_port()
    forwarder = forward(forwarders, tmp_path, ("127.0.0.1", fwd_port), node.address)
    # The client knows only the forward; its UDP pings there reach nothing (no UDP
    # listener on that port), so the node never hears of the client and never connects.
    cluster = cluster_factory(square_plus, [("127.0.0.1", fwd_port)], port=client_port)
    wait_for(lambda: cluster.nodes(), 20, "the forwarded node joining")
    # Known by the address the client reaches it at (recovery connects there), not the one
    # the node reports.
    assert [(n.name, n.ip_addr, n.port) for n in cluster.nodes()] == [
        ("forwarded", "127.0.0.1", fwd_port)
    ]
    run_jobs(cluster)
    counts = forwarder.counts()
    assert counts["up"] > 0, counts
    assert counts["down"] > 0, counts
    assert counts["connections"] == 1, counts
    cluster.close()
    # The node served a client whose connection came from the forwarder, never from the
    # client's own port (a connect-back would show it), and never tried to connect back.
    wait_for(lambda: node.log_contains("free again"), 10, "the node freed")
    log = node.log_text()
    assert "serving client" in log
    assert f"127.0.0.1:{client_port}" not in log
    assert "client at " not in log  # no connect-back, failed ("cannot reach ...") or refused


def test_the_ssh_case_remote_forwarded_client_port(
    node_factory, cluster_factory, forwarders, tmp_path
):
    # As `ssh -R P:127.0.0.1:P node`: on the node's host, 127.0.0.1:P forwards to the
    # client's real port P (here the client listens on 127.0.0.2, so that both fit on one
    # host), and the client announces ext_ip_addr='127.0.0.1'.
    node = node_factory.one(name="remote")
    port = free_port()
    forwarder = forward(forwarders, tmp_path, ("127.0.0.1", port), ("127.0.0.2", port))
    cluster = cluster_factory(
        square_plus, [node], ip_addr="127.0.0.2", port=port, ext_ip_addr="127.0.0.1"
    )
    wait_for(lambda: cluster.nodes(), 20, "the node joining through the forwarded port")
    run_jobs(cluster)
    counts = forwarder.counts()
    assert counts["up"] > 0, counts
    assert counts["down"] > 0, counts
    assert node.log_contains(f"at 127.0.0.1:{port}")  # it connected to the forwarded port
    cluster.close()


def test_a_node_reached_both_ways_is_one_session(
    node_factory, cluster_factory, forwarders, tmp_path, dispy_log
):
    # The node is listed directly (it hears the ping and connects back) and through a
    # forward (the client dials it there after a second): one session, jobs run once.
    node = node_factory.one(name="both", cpus=2)
    fwd_port = free_port()
    forwarder = forward(forwarders, tmp_path, ("127.0.0.1", fwd_port), node.address)
    started = time.monotonic()
    cluster = cluster_factory(square_plus, [node, ("127.0.0.1", fwd_port)])
    wait_for(lambda: cluster.nodes(), 20, "the node joining")
    # The dial happens 1 s after start; the node, serving this cluster, refuses it as busy.
    wait_for(lambda: forwarder.counts()["down"] > 0, 10, "the dial through the forward")
    run_jobs(cluster, 10)
    # The client knows the dialed target is the node it holds: no more dials (the next
    # rounds are 2.5 and 4.5 s after start), no warning.
    time.sleep(max(0.0, started + 5.0 - time.monotonic()))
    assert forwarder.counts()["connections"] == 1
    assert [(n.name, n.port, n.cpus) for n in cluster.nodes()] == [("both", node.port, 2)]
    assert node.log_count("serving client") == 1
    assert dispy_log.messages(logging.WARNING) == []
    cluster.close()


def test_a_scheduler_dials_its_listed_node_behind_a_tcp_only_forward(
    node_factory, scheduler_factory, forwarders, tmp_path
):
    node = node_factory.one(name="sched-forwarded", cpus=2)
    fwd_port = free_port()
    forwarder = forward(forwarders, tmp_path, ("127.0.0.1", fwd_port), node.address)
    # The scheduler's -n 127.0.0.1:<forward> is the only way to the node (no UDP there).
    sched = scheduler_factory([], also=[SimpleNamespace(port=fwd_port)], wait=False)
    sched.wait_log(f"node sched-forwarded (127.0.0.1:{fwd_port}) with", timeout=20)

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("squares", square_plus)
        await client.wait(lambda: len(client.nodes) == 1, 20, "the node set up for the client")
        client.submit({job_id: args(job_id) for job_id in range(1, 9)})
        await client.wait_done(8)
        assert {j: r.value for j, r in client.results.items()} == {
            j: square_plus(j) for j in range(1, 9)
        }
        await client.close()

    asyncio.run(scenario())
    counts = forwarder.counts()
    assert counts["up"] > 0, counts
    assert counts["down"] > 0, counts
    assert counts["connections"] == 1, counts


def test_dispy_nodes_lists_a_node_behind_a_forward_and_one_reached_both_ways_once(
    node_factory, forwarders, tmp_path
):
    hidden = node_factory.one(name="hidden")
    both = node_factory.one(name="both-ways")
    fwd_port = free_port()
    forwarder = forward(forwarders, tmp_path, ("127.0.0.1", fwd_port), hidden.address)
    proc = subprocess.run(
        [sys.executable, "-m", "dispy.cli", "nodes", "127.0.0.1", f"127.0.0.1:{fwd_port}",
         "--node_port", str(both.port)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DISPY_SECRET": hidden.secret, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"127.0.0.1:{fwd_port}" in proc.stdout  # where it was reached
    assert "hidden" in proc.stdout
    assert proc.stdout.count("both-ways") == 1, proc.stdout
    assert forwarder.counts()["down"] > 0
