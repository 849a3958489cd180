"""The node as a daemon: no terminal, signals, and the environment its jobs see."""

from __future__ import annotations

import secrets
import signal

import pytest
from harness import History, wait_for
from harness.computations import block_on, getenv, square_plus
from harness.procs import describe, wait_gone

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("stdin", ["devnull", "closed"])
def test_node_serves_without_stdin(node_factory, cluster_factory, stdin):
    node = node_factory.one(cpus=1, name=f"stdin-{stdin}", stdin=stdin)
    history = History()
    cluster = cluster_factory(
        square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    for i in range(20):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()


def test_sigterm_stops_node_and_its_job_processes(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="terminated")
    history = History()
    cluster = cluster_factory(
        block_on, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    marker = tmp_path / "job-started"
    job = history.submit(cluster, str(marker), 60)
    wait_for(marker.exists, 20, "the job should start on the node")
    job_pid = int(marker.read_text())
    family = node.descendants()
    assert job_pid in {p.pid for p in family}, (job_pid, family)

    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.log_text()
    alive = wait_gone(family, 5)
    assert not alive, f"job processes outlived the node: {alive}"
    assert node.log_contains("shutting down")

    # The client learns that the node went away; the job does not hang.
    assert job.finish.wait(15), "the job should end when its node stops"
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned), job
    assert cluster.wait(timeout=5)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})
    cluster.close(terminate=True)


def test_jobs_inherit_node_environment(node_factory, cluster_factory):
    value = "bar-" + secrets.token_hex(4)
    node = node_factory.one(cpus=1, name="env", env={"FOO": value})
    cluster = cluster_factory(getenv, [node])
    jobs = [cluster.submit("FOO") for _ in range(4)] + [cluster.submit("DISPY_IT_UNSET")]
    assert cluster.wait(timeout=30)
    assert [job.result for job in jobs] == [value] * 4 + [None], [j.exception for j in jobs]
    cluster.close()


def test_sigkill_of_node_leaves_no_job_processes(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="killed")
    history = History()
    cluster = cluster_factory(
        block_on, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    marker = tmp_path / "job-started"
    job = history.submit(cluster, str(marker), 60)
    wait_for(marker.exists, 20, "the job should start on the node")
    family = node.descendants()
    assert int(marker.read_text()) in {p.pid for p in family}

    node.kill(signal.SIGKILL)
    node.wait(10)
    alive = wait_gone(family, 5)
    leaked = [describe(p) for p in alive]
    for proc in alive:  # do not leak them into other tests, whatever the verdict
        proc.kill()
    assert job.finish.wait(15)
    assert job.status == DispyJob.Cancelled, job
    history.check(allowed={DispyJob.Cancelled})
    cluster.close(terminate=True)
    assert not leaked, f"job processes outlived the SIGKILLed node: {leaked}"


def test_node_starts_with_long_tmpdir(node_factory, tmp_path):
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    node = node_factory.one(cpus=1, name="long-tmp", env={"TMPDIR": str(long_tmp)}, wait=False)
    try:
        node.wait_ready(20)
    finally:
        log = node.log_text()
        if node.exited():
            assert "cannot listen on port" not in log, f"misleading error:\n{log}"
