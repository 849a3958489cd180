"""More of what SharedJobCluster users meet, against a real ``dispy-scheduler serve``.

Job output and exceptions, 40 MiB each way through the scheduler, two clusters in one
program, a node that joins later or comes back after ``kill -9``, pinned jobs on a node
that dies, an exclusive cluster closed while it waits for its turn, ``close()`` waiting for
queued jobs, a setup that fails on one node (or all: the no-node warning says so),
NodeAllocate's ``cpus`` on a shared node, a node killed under two clients (one reentrant),
files over the scheduler's ``--max_file_size``, a scheduler that is not there, and a node
only the client names (with its port).
"""

from __future__ import annotations

import functools
import hashlib
import time

import pytest
from harness import free_port, wait_for
from harness.computations import echo_len, talk
from harness.features import Recorder, max_overlap, read_text, setup_nonzero
from harness.ports import LOOPBACK
from harness.shared_inproc import SharedFactory
from harness.shared_work import fail_on_tag, mark_and_sleep, where

import dispy
from dispy import DispyJob, DispyNode, NodeAllocate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shared_factory(scheduler_factory, cluster_secret):
    factory = SharedFactory(cluster_secret)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("shared cluster teardown:\n  " + "\n  ".join(problems))


def test_output_exceptions_and_large_data(node_factory, scheduler_factory, shared_factory):
    node = node_factory.one(cpus=2, name="big")
    sched = scheduler_factory([node])
    cluster = shared_factory(talk, sched)
    ok, bad = cluster.submit(3), cluster.submit(-1)
    assert cluster.wait(timeout=30)
    assert (ok.result, ok.stdout, ok.stderr) == (30, "out 3\n", "err 3\n")
    assert bad.status == DispyJob.Terminated
    assert "boom -1" in bad.exception
    assert bad.result is None
    cluster.close()
    echo = shared_factory(echo_len, sched)
    data = bytes(range(256)) * (40 * 4096)  # 40 MiB
    job = echo.submit(7, data)
    got = job()
    assert job.status == DispyJob.Finished, job.exception
    assert got[:2] == (7, len(data))
    assert hashlib.sha256(got[2]).digest() == hashlib.sha256(data).digest()
    echo.close()


def test_two_clusters_in_one_program_and_a_node_that_comes_later(
    node_factory, scheduler_factory, shared_factory
):
    first = node_factory.one(cpus=1, name="early", env={"NODE_TAG": "early"})
    sched = scheduler_factory([first])
    one = shared_factory(where, sched)
    two = shared_factory(mark_and_sleep, sched)
    wait_for(lambda: one.nodes() and two.nodes(), 20, "both clusters have the node")
    late = node_factory.one(
        cpus=1, name="late", env={"NODE_TAG": "late"},
        extra_args=["--scheduler_node", LOOPBACK, "--scheduler_port", str(sched.port)],
    )  # fmt: skip
    wait_for(lambda: len(one.nodes()) == 2 and len(two.nodes()) == 2, 20, "the late node joins")
    jobs = [two.submit(".", n, 0.2) for n in range(8)]
    quick = [one.submit(n) for n in range(8)]
    assert one.wait(timeout=30)
    assert two.wait(timeout=30)
    assert {job.result[0] for job in jobs} == {"early", "late"}
    assert [job.result[1] for job in quick] == [n * n for n in range(8)]
    one.close()
    two.close()
    assert late.running()


def test_a_waiting_exclusive_cluster_can_close(
    node_factory, scheduler_factory, shared_factory, tmp_path, dispy_log
):
    node = node_factory.one(cpus=1, name="excl", env={"NODE_TAG": "excl"})
    sched = scheduler_factory([node])
    busy = shared_factory(mark_and_sleep, sched)
    running = busy.submit(str(tmp_path), 0, 3.0)
    excl = shared_factory(where, sched, exclusive=True)
    queued = excl.submit(1)
    wait_for(lambda: dispy_log.find("waits for its turn"), 20, "the exclusive cluster waits")
    wait_for(lambda: (tmp_path / "0.excl").exists(), 20, "the busy cluster's job runs")
    assert queued.status == DispyJob.Created
    started = time.monotonic()
    excl.close(terminate=True)
    assert time.monotonic() - started < 5
    assert queued.status in (DispyJob.Cancelled, DispyJob.Abandoned)
    after = shared_factory(where, sched)
    assert after.submit(2)() == ("excl", 4)
    assert running() == ("excl", 0)
    busy.close()
    after.close()


def test_close_waits_for_queued_jobs_and_context_manager(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    node = node_factory.one(cpus=1, name="closer", env={"NODE_TAG": "c"})
    sched = scheduler_factory([node])
    with shared_factory(mark_and_sleep, sched) as cluster:
        jobs = [cluster.submit(str(tmp_path), n, 0.2) for n in range(5)]
    assert all(job.status == DispyJob.Finished for job in jobs)
    assert cluster.submit(str(tmp_path), 9, 0) is None


def test_pinned_jobs_on_a_killed_node_and_the_node_back(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    victim, other = [node_factory.one(cpus=1, name=n, env={"NODE_TAG": n}) for n in ("pv", "po")]
    sched = scheduler_factory([victim, other], "--pulse_interval", "1", "--ping_interval", "1")
    cluster = shared_factory(mark_and_sleep, sched, reentrant=True)
    wait_for(lambda: len(cluster.nodes()) == 2, 20, "2 nodes")
    dn = {n.port: n for n in cluster.nodes()}[victim.port]
    pinned = [cluster.submit_node(dn, str(tmp_path), n, 2.0) for n in range(2)]
    wait_for(lambda: (tmp_path / "0.pv").exists(), 20, "pinned job running")
    victim.kill()
    assert cluster.wait(timeout=40), [j.status for j in pinned]
    # a job pinned to a node cannot move, even when reentrant: it ends Cancelled, saying why
    for job in pinned:
        assert job.status == DispyJob.Cancelled
        assert f"node {LOOPBACK}:{victim.port}" in job.exception, job.exception
    victim.start()
    wait_for(lambda: len(cluster.nodes()) == 2, 30, "the node back")
    again = [cluster.submit(str(tmp_path), n, 0.3) for n in range(10, 16)]
    assert cluster.wait(timeout=30)
    assert {j.result[0] for j in again} == {"pv", "po"}
    cluster.close()


def test_setup_failing_on_one_node_and_allocate_cpus(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    ok, broken = [node_factory.one(cpus=2, name=n, env={"NODE_TAG": n}) for n in ("sok", "sbad")]
    sched = scheduler_factory([ok, broken])
    recorder = Recorder()
    cluster = shared_factory(
        mark_and_sleep,
        sched,
        setup=functools.partial(fail_on_tag, "sbad"),
        cluster_status=recorder.cluster_status,
        nodes=[NodeAllocate("127.0.0.*", cpus=1)],
    )
    failed = wait_for(lambda: recorder.node_events(DispyNode.SetupFailed), 20, "SetupFailed")
    assert failed[0].port == broken.port
    jobs = [cluster.submit(str(tmp_path), n, 0.3) for n in range(4)]
    assert cluster.wait(timeout=30)
    assert {j.result[0] for j in jobs} == {"sok"}
    # NodeAllocate(cpus=1): one job at a time on the 2-CPU node
    assert max_overlap([(j.start_time, j.end_time) for j in jobs]) == 1
    cluster.close()


def test_a_setup_that_fails_everywhere_is_named_in_the_no_node_warning(
    node_factory, scheduler_factory, shared_factory, dispy_log
):
    node = node_factory.one(cpus=1, name="nosetup")
    sched = scheduler_factory([node])
    cluster = shared_factory(where, sched, setup=setup_nonzero)
    job = cluster.submit(1)
    warning = wait_for(lambda: dispy_log.find("no node serves cluster"), 20, "no-node warning")
    assert f"nosetup ({LOOPBACK}:{node.port}, 1 CPUs, setup returned 3 (not 0))" in warning
    assert "declined" not in warning, warning
    cluster.close(terminate=True)
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned)


def test_node_kill_with_two_clients_one_reentrant(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    """Each computation on a killed node gets its own outcome: moved, or Cancelled."""
    victim, survivor = [
        node_factory.one(cpus=2, name=n, env={"NODE_TAG": n}) for n in ("victim", "survivor")
    ]
    sched = scheduler_factory([victim, survivor], "--pulse_interval", "1")
    moving = shared_factory(mark_and_sleep, sched, reentrant=True)
    ending = shared_factory(mark_and_sleep, sched, reentrant=False)
    wait_for(lambda: len(moving.nodes()) == 2 and len(ending.nodes()) == 2, 20, "nodes")
    marks = {"m": tmp_path / "m", "e": tmp_path / "e"}
    for folder in marks.values():
        folder.mkdir()

    def on_victim(folder):
        return {int(p.name.split(".")[0]) for p in folder.iterdir() if p.name.endswith("victim")}

    moved = [moving.submit(str(marks["m"]), n, 1.5) for n in range(6)]
    ended = [ending.submit(str(marks["e"]), n, 1.5) for n in range(6)]
    wait_for(
        lambda: on_victim(marks["m"]) and on_victim(marks["e"]), 20, "both have a job on victim"
    )
    cancelled = on_victim(marks["e"])
    victim.kill()
    assert moving.wait(timeout=40)
    assert ending.wait(timeout=40)
    assert [(j.status, j.result) for j in moved] == [
        (DispyJob.Finished, ("survivor", n)) for n in range(6)
    ]
    for n, job in enumerate(ended):
        if n in cancelled:
            assert job.status == DispyJob.Cancelled
            assert f"node {LOOPBACK}:{victim.port}" in job.exception
        else:
            assert job.status in (DispyJob.Finished, DispyJob.Cancelled)
    moving.close()
    ending.close()


def test_files_over_the_schedulers_max_file_size_fail_what_needs_them(
    node_factory, scheduler_factory, shared_factory, tmp_path, dispy_log
):
    """As a node does with a file over its --max_file_size: the job that needs the file ends
    Terminated saying why, a computation whose dependency was refused is set up nowhere
    (each node SetupFailed with the reason); neither runs without its file."""
    node = node_factory.one(cpus=1, name="limited")
    sched = scheduler_factory([node], "--max_file_size", "1k")
    big = tmp_path / "big_xyz.txt"
    big.write_text("x" * 2000)
    small = tmp_path / "small_xyz.txt"
    small.write_text("fits")
    limit = "over the scheduler's --max_file_size of 1024 bytes"
    cluster = shared_factory(read_text, sched, depends=[str(small)])
    (dn,) = wait_for(cluster.nodes, 20, "the node")
    assert cluster.send_file(str(big), dn) == -1
    refused = cluster.submit("big_xyz.txt", dispy_job_depends=[str(big)])
    fine = cluster.submit("small_xyz.txt")
    assert cluster.wait(timeout=30)
    assert refused.status == DispyJob.Terminated
    assert f"a file of this job was refused: file 'big_xyz.txt' of 2000 bytes is {limit}" in (
        refused.exception
    )
    assert fine.result == "fits"
    cluster.close()

    recorder = Recorder()
    broken = shared_factory(
        read_text, sched, depends=[str(big)], cluster_status=recorder.cluster_status
    )
    job = broken.submit("big_xyz.txt")
    (failed,) = wait_for(
        lambda: recorder.node_events(DispyNode.SetupFailed), 20, "the node SetupFailed"
    )
    assert failed.port == node.port
    assert limit in failed.error
    warning = wait_for(lambda: dispy_log.find("no node serves cluster"), 20, "no-node warning")
    assert limit in warning
    assert job.status == DispyJob.Created
    broken.close(terminate=True)
    assert not node.log_contains("big_xyz.txt")


def test_an_unreachable_scheduler_is_a_clear_error_and_none_means_this_host(
    node_factory, scheduler_factory, cluster_secret
):
    nowhere = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(dispy.SchedulerError) as refused:
        dispy.SharedJobCluster(where, scheduler_port=nowhere, secret=cluster_secret, port=0)
    assert time.monotonic() - started < 10
    text = str(refused.value)
    assert f"dispy-scheduler at {LOOPBACK}:{nowhere}" in text, text
    assert "secret" in text, text
    assert "TLS" in text, text
    node = node_factory.one(cpus=1, name="here")
    sched = scheduler_factory([node])
    # scheduler_node=None: the scheduler on this host
    cluster = dispy.SharedJobCluster(
        where, scheduler_port=sched.scheduler_port, secret=cluster_secret, port=0
    )
    try:
        assert cluster.submit(5)() == (None, 25)
    finally:
        cluster.close(terminate=True)


def test_a_node_only_the_client_names_is_found_by_the_scheduler(
    node_factory, scheduler_factory, shared_factory
):
    """``nodes=[(host, port)]`` of a node the scheduler was not told about: the scheduler
    pings it there (the port too, not only the host) and it serves the computation."""
    known = node_factory.one(cpus=1, name="known", env={"NODE_TAG": "known"})
    listed = node_factory.one(cpus=1, name="listed", env={"NODE_TAG": "listed"})
    sched = scheduler_factory([known])
    cluster = shared_factory(where, sched, nodes=[listed.address])
    (node,) = wait_for(cluster.nodes, 20, "the listed node should serve the cluster")
    assert node.port == listed.port
    assert cluster.submit(3)() == ("listed", 9)
    cluster.close()
