"""Throughput and bookkeeping: thousands of jobs over two nodes, checked job by job."""

from __future__ import annotations

import pytest
from harness import History, wait_for
from harness.computations import square_plus

from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)

JOBS = 2000


def test_many_jobs_over_two_nodes_all_correct(node_factory, cluster_factory, capsys):
    nodes = node_factory(2, cpus=1, name="many")
    history = History()
    cluster = cluster_factory(
        square_plus, nodes, callback=history.callback, cluster_status=history.cluster_status
    )
    # Both nodes must have joined before the burst, or the first one may run everything.
    wait_for(lambda: len(cluster.nodes()) == 2, 20, "both nodes should join the cluster")

    for i in range(JOBS):
        history.submit(cluster, i, k=i % 5)
    assert cluster.wait(timeout=60), f"jobs still pending after 60 s: {history.summary()}"

    history.check(square_plus, allowed={DispyJob.Finished})
    assert history.by_status() == {"Finished": JOBS}

    # Both nodes did work, as seen by cluster_status, by the nodes' counters and by
    # print_status.
    per_node = history.finished_on()
    assert set(per_node) == {n.name for n in nodes}, per_node
    assert sum(per_node.values()) == JOBS
    assert all(count > 0 for count in per_node.values()), per_node
    counters = {n.name: n.jobs_done for n in cluster.nodes()}
    assert counters == dict(per_node)
    assert all(job.ip_addr == "127.0.0.1" for job in history.jobs)

    cluster.print_status()
    table = capsys.readouterr().out
    for node in nodes:
        assert f"127.0.0.1:{node.port} ({node.name})" in table, table
    assert f"{JOBS} job(s)" in table, table

    cluster.close()
