"""Cancelling leaves no live job process behind (Jepsen-style check from TESTING.md 5.7)."""

from __future__ import annotations

import psutil
import pytest
from harness import History, wait_for
from harness.computations import block_on, deaf_to_interrupt, pid_and_value

from dispy import DispyJob
from dispy_node.executor import CANCEL_GRACE

pytestmark = pytest.mark.timeout(60)


def _start_blocking_job(cluster, history, tmp_path, name):
    marker = tmp_path / name
    job = history.submit(cluster, str(marker), 60)
    wait_for(marker.exists, 20, f"job {name} should start")
    return job, psutil.Process(int(marker.read_text()))


def _gone(proc):
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_running_job_kills_its_process(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="cancel")
    history = History()
    cluster = cluster_factory(
        block_on, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    job, proc = _start_blocking_job(cluster, history, tmp_path, "running")
    queued = history.submit(cluster, str(tmp_path / "never"), 60)

    assert cluster.cancel(queued) == 0
    assert cluster.cancel(job) == 0
    assert job.finish.wait(10), "a cancelled job should end"
    assert queued.finish.wait(10)
    assert job.status == DispyJob.Cancelled
    assert queued.status == DispyJob.Cancelled
    wait_for(lambda: _gone(proc), 10, f"the cancelled job's process {proc.pid} should die")
    assert not (tmp_path / "never").exists()
    assert cluster.cancel(job) == -1  # already ended

    # The node gives the CPU to the next job.
    after = history.submit(cluster, str(tmp_path / "after"), 0)
    assert after.finish.wait(20)
    assert after.status == DispyJob.Finished
    assert cluster.wait(timeout=10)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Finished})
    cluster.close()


def test_cancel_kills_a_job_that_ignores_the_interrupt(node_factory, cluster_factory, tmp_path):
    """A cancel first interrupts a job; one deaf to it is killed after the grace period."""
    node = node_factory.one(cpus=1, name="deaf")
    history = History()
    cluster = cluster_factory(
        deaf_to_interrupt, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    job, proc = _start_blocking_job(cluster, history, tmp_path, "running")
    assert cluster.cancel(job) == 0
    # The interrupt alone does not end it: it still runs well within the grace period.
    assert not job.finish.wait(CANCEL_GRACE / 3), "a job that ignores SIGINT ended early"
    assert not _gone(proc)
    assert job.finish.wait(CANCEL_GRACE + 10), "the grace period should end the job"
    assert job.status == DispyJob.Cancelled
    assert job.result is None
    wait_for(lambda: _gone(proc), 10, f"the cancelled job's process {proc.pid} should die")

    # A fresh worker takes the CPU.
    after = history.submit(cluster, str(tmp_path / "after"), 0)
    assert after.finish.wait(20)
    assert after.status == DispyJob.Finished
    assert cluster.wait(timeout=10)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Finished})
    cluster.close()


def test_close_terminate_kills_running_jobs(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="closer")
    history = History()
    cluster = cluster_factory(
        block_on, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    job, proc = _start_blocking_job(cluster, history, tmp_path, "running")
    cluster.close(terminate=True)
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned), job
    wait_for(lambda: _gone(proc), 10, f"the job's process {proc.pid} should die on close")
    node.wait_log("free again")
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})

    # The node is free for the next cluster.
    again = cluster_factory(pid_and_value, [node])
    follow = again.submit(1)
    assert follow.finish.wait(20), "the next cluster should get the node"
    assert follow.result[1] == 2
    again.close()
