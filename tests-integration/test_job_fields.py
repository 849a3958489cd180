"""What a DispyJob carries back: output streams, exceptions, times and the node's address."""

from __future__ import annotations

import time

import pytest
from harness import History
from harness.computations import talk

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


def test_job_fields_filled_for_success_and_exception(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="fields")
    history = History()
    cluster = cluster_factory(
        talk, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    before = time.time()
    ok = history.submit(cluster, 3)
    bad = history.submit(cluster, -7)
    assert ok() == 30
    assert bad() is None
    assert cluster.wait(timeout=30)
    after = time.time()

    assert ok.status == DispyJob.Finished
    assert ok.result == 30
    assert ok.stdout == "out 3\n"
    assert ok.stderr == "err 3\n"
    assert ok.exception is None
    assert ok.ip_addr == "127.0.0.1"
    for job in (ok, bad):
        assert before <= job.submit_time <= job.start_time  # submit_time: as in 4.15
        assert job.start_time is not None
        assert job.end_time is not None
        assert before - 1 <= job.start_time <= job.end_time <= after + 1, (
            job.start_time,
            job.end_time,
        )

    assert bad.status == DispyJob.Terminated
    assert bad.result is None
    assert bad.ip_addr == "127.0.0.1"
    # The remote traceback, with the exception's type and message.
    assert "Traceback (most recent call last)" in bad.exception
    assert "ValueError: boom -7" in bad.exception
    assert "in talk" in bad.exception
    # Output written before the exception is kept.
    assert bad.stdout == "out -7\n"
    assert bad.stderr == "err -7\n"

    history.check(talk, allowed={DispyJob.Finished, DispyJob.Terminated})
    # 4.15's byte counts per node: arguments sent, replies (with output) received
    (dispy_node,) = cluster.status().nodes
    assert 0 < dispy_node.tx < dispy_node.rx < 10_000, (dispy_node.tx, dispy_node.rx)
    cluster.close()
