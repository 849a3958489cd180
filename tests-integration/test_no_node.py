"""A cluster that finds no usable node must say why, never hang, and close promptly."""

from __future__ import annotations

import time

import pytest
from harness import History, free_port, wait_for
from harness.computations import square_plus

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

NO_NODE = "no dispy node has joined cluster"


def _close_quickly(cluster, limit=5.0):
    started = time.monotonic()
    cluster.close(terminate=True)
    took = time.monotonic() - started
    assert took < limit, f"close(terminate=True) took {took:.1f} s"


def test_wrong_secret_refused_and_reported(node_factory, cluster_factory, dispy_log):
    node = node_factory.one(cpus=1, name="guarded", secret="secret-A-" + "x" * 8)
    history = History()
    cluster = cluster_factory(
        square_plus,
        [node],
        secret="secret-B-" + "y" * 8,
        callback=history.callback,
        cluster_status=history.cluster_status,
    )
    job = history.submit(cluster, 4)

    warning = wait_for(
        lambda: dispy_log.find(NO_NODE), 12, "the client should warn that no node joined"
    )
    assert f"127.0.0.1:{node.port}" in warning, warning
    assert "secret" in warning, warning
    assert "refused" in warning, warning
    node.wait_log("authentication failed")
    # Nothing ran, and waiting is bounded.
    assert not job.finish.wait(0.2)
    assert job.status == DispyJob.Created
    assert cluster.wait(timeout=0.5) is False
    assert cluster.nodes() == []

    _close_quickly(cluster)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})
    assert node.running()


def test_no_node_listening_warns_and_closes(cluster_factory, dispy_log):
    port = free_port()  # nothing listens there
    history = History()
    started = time.monotonic()
    cluster = cluster_factory(
        square_plus,
        [("127.0.0.1", port)],
        callback=history.callback,
        cluster_status=history.cluster_status,
    )
    jobs = [history.submit(cluster, i) for i in range(3)]
    warning = wait_for(lambda: dispy_log.find(NO_NODE), 10, "no-node warning within 10 s")
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in warning, warning
    assert "3 job(s) waiting" in warning, warning
    assert cluster.wait(timeout=0.5) is False
    assert not any(job.finish.is_set() for job in jobs)

    _close_quickly(cluster)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})


def test_no_node_warning_names_only_ports_in_use(cluster_factory, dispy_log):
    port = free_port()
    cluster = cluster_factory(square_plus, [("127.0.0.1", port)])
    warning = wait_for(lambda: dispy_log.find(NO_NODE), 10, "no-node warning within 10 s")
    cluster.close(terminate=True)
    assert str(port) in warning
    assert "51348" not in warning, warning
