"""The SharedJobCluster API as a user uses it, against a real ``dispy-scheduler serve``.

The same methods and job semantics as JobCluster (client.txt, "Cluster"), each checked from
what happened on the real nodes: callbacks and ``cluster_status``, provisional results,
files both ways, cancel, ``submit_node``/``node_jobs``/``allocate_node``, ``print_status``,
``set_node_cpus`` (which leaves the CPUs alone on a shared node), the ``nodes`` filter, a
program computation, ``setup`` and ``cleanup``.
"""

from __future__ import annotations

import contextlib
import functools
import os

import pytest
from harness import wait_for
from harness.features import (
    Recorder,
    block_until,
    cleanup_marker,
    job_depends_view,
    make_and_send,
    pattern_bytes,
    provisional_then_wait,
    read_setup_globals,
    read_text,
    setup_record,
    wait_nodes,
    whereami,
)
from harness.ports import LOOPBACK
from harness.shared_inproc import SharedFactory
from harness.shared_work import where

from dispy import DispyJob, DispyNode, NodeAllocate

pytestmark = pytest.mark.timeout(60)

NO_NODE = "no node serves cluster"


@pytest.fixture
def shared_factory(scheduler_factory, cluster_secret):
    """Real SharedJobClusters in this process; after ``scheduler_factory`` so they close
    before the scheduler stops."""
    factory = SharedFactory(cluster_secret)
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("shared cluster teardown:\n  " + "\n  ".join(problems))


@pytest.fixture
def client_dir(tmp_path):
    """The client's working directory for the test (files from jobs land here)."""
    here = tmp_path / "client"
    here.mkdir()
    with contextlib.chdir(here):
        yield here


def tagged(node_factory, names, cpus=1, **kwargs):
    nodes = [
        node_factory.one(cpus=cpus, name=name, env={"NODE_TAG": name}, wait=False, **kwargs)
        for name in names
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def by_port(cluster):
    return {node.port: node for node in cluster.nodes()}


def test_callback_cluster_status_print_status_and_set_node_cpus(
    node_factory, scheduler_factory, shared_factory, capsys
):
    a, b = tagged(node_factory, ["api-a", "api-b"], cpus=2)
    sched = scheduler_factory([a, b])
    recorder = Recorder()
    cluster = shared_factory(
        where,
        sched,
        nodes=["127.0.0.*"],
        callback=recorder.callback,
        cluster_status=recorder.cluster_status,
    )
    initialized = wait_for(
        lambda: (
            len(recorder.node_events(DispyNode.Initialized)) == 2
            and recorder.node_events(DispyNode.Initialized)
        ),
        20,
        "both nodes Initialized in cluster_status",
    )
    assert {(n.ip_addr, n.port, n.name, n.cpus) for n in initialized} == {
        (LOOPBACK, a.port, "api-a", 2),
        (LOOPBACK, b.port, "api-b", 2),
    }
    jobs = [cluster.submit(n) for n in range(10)]
    for n, job in enumerate(jobs):
        job.id = n
    assert cluster.wait(timeout=30)
    for n, job in enumerate(jobs):
        assert job.status == DispyJob.Finished
        assert job.result[1] == n * n
        assert job.ip_addr == LOOPBACK
        assert job.start_time is not None
        assert job.end_time >= job.start_time
        assert recorder.calls_for(n) == [(DispyJob.Finished, job.result)]
    with recorder.lock:
        job_events = [(s, node, job) for s, node, job in recorder.events if job is not None]
    for job in jobs:
        seen = [s for s, _, j in job_events if j is job]
        assert seen[-1] == DispyJob.Finished, seen
        assert DispyJob.Running in seen, seen
        running_on = {node.port for s, node, j in job_events if j is job and node is not None}
        assert running_on <= {a.port, b.port}
    # set_node_cpus leaves the shared node's CPUs as they are and says how many are used
    dn = by_port(cluster)[a.port]
    assert cluster.set_node_cpus(dn, 1) == 2
    assert cluster.set_node_cpus("127.0.0.1", -1) == 2
    assert cluster.set_node_cpus("10.255.255.9", 1) == -1
    assert by_port(cluster)[a.port].cpus == 2
    more = [cluster.submit(n) for n in range(8)]
    assert cluster.wait(timeout=30)
    assert all(job.status == DispyJob.Finished for job in more)
    capsys.readouterr()
    cluster.print_status()
    table = capsys.readouterr().out
    assert "api-a" in table, table
    assert "api-b" in table, table
    assert "18 job(s)" in table, table
    done = sum(node.jobs_done for node in cluster.nodes())
    assert done == 18
    # 4.15's byte counts: every node that ran jobs was sent arguments and sent replies
    for node in cluster.nodes():
        if node.jobs_done:
            assert node.tx > 0, (node, node.tx)
            assert node.rx > 0, (node, node.rx)
    cluster.close()


def test_provisional_results_reach_the_callback_in_order(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    node = node_factory.one(cpus=1, name="prov")
    sched = scheduler_factory([node])
    recorder = Recorder()
    cluster = shared_factory(
        provisional_then_wait, sched, callback=recorder.callback,
        cluster_status=recorder.cluster_status,
    )  # fmt: skip
    release = tmp_path / "release"
    job = cluster.submit(str(release), 3)
    job.id = "p3"
    wait_for(lambda: len(recorder.calls_for("p3")) >= 3, 20, "3 provisional callbacks")
    assert not job.finish.is_set()
    assert job.status == DispyJob.ProvisionalResult
    assert recorder.calls_for("p3") == [(DispyJob.ProvisionalResult, ("step", i)) for i in range(3)]
    release.write_text("go")
    assert job() == ("final", 3)
    assert cluster.wait(timeout=10)  # the final callback has run
    assert recorder.calls_for("p3")[-1] == (DispyJob.Finished, ("final", 3))
    cluster.close()


def test_files_both_ways(node_factory, scheduler_factory, shared_factory, client_dir, tmp_path):
    a, b = tagged(node_factory, ["files-a", "files-b"])
    sched = scheduler_factory([a, b])
    data = tmp_path / "shared_dep_xyz.txt"
    data.write_text("for every job")
    cluster = shared_factory(read_text, sched, depends=[str(data)])
    nodes = by_port(wait_for(lambda: len(cluster.nodes()) == 2 and cluster, 20, "2 nodes"))
    # depends: on every node
    dep_jobs = [cluster.submit_node(nodes[n.port], "shared_dep_xyz.txt") for n in (a, b)]
    # send_file(path, node): only to that node, by its base name
    sent = tmp_path / "sub" / "sent_to_b_xyz.txt"
    sent.parent.mkdir()
    sent.write_text("only b has it")
    assert cluster.send_file(str(sent), nodes[b.port]) == 0
    assert cluster.send_file(str(tmp_path / "missing.txt"), nodes[b.port]) == -1
    on_b = cluster.submit_node(nodes[b.port], "sent_to_b_xyz.txt")
    on_a = cluster.submit_node(nodes[a.port], "sent_to_b_xyz.txt")
    assert cluster.wait(timeout=30)
    assert [job.result for job in dep_jobs] == ["for every job"] * 2
    assert on_b.result == "only b has it"
    assert on_a.status == DispyJob.Terminated  # only b has it
    assert "FileNotFoundError" in on_a.exception
    cluster.close()

    # dispy_job_depends: the job's own file, not one of its arguments
    own = tmp_path / "own_xyz.txt"
    own.write_text("mine")
    viewer = shared_factory(job_depends_view, sched)
    job = viewer.submit("own_xyz.txt", "extra", dispy_job_depends=[str(own)])
    seen = job()
    assert job.status == DispyJob.Finished, job.exception
    assert seen["exists"]
    assert seen["text"] == "mine"
    assert seen["args"] == ("extra",)
    viewer.close()

    # dispy_send_file from a job: lands under the client's directory
    sender = shared_factory(make_and_send, sched)
    top = sender.submit("top.bin", 3000)
    deep = sender.submit("sub/dir/deep.bin", 5000)
    assert sender.wait(timeout=30)
    assert (top.result, deep.result) == (0, 0), (top.exception, deep.exception)
    assert (client_dir / "top.bin").read_bytes() == pattern_bytes(3000)
    assert (client_dir / "sub" / "dir" / "deep.bin").read_bytes() == pattern_bytes(5000)
    sender.close()


def test_cancel_queued_and_running(node_factory, scheduler_factory, shared_factory, tmp_path):
    node = node_factory.one(cpus=1, name="cancel")
    sched = scheduler_factory([node])
    cluster = shared_factory(block_until, sched)
    release, started = tmp_path / "release", tmp_path / "started"
    running = cluster.submit(str(release), str(started))
    queued = cluster.submit(str(release), str(tmp_path / "never"))
    wait_for(started.exists, 20, "the first job should start")
    pid = int(started.read_text())
    assert cluster.cancel(queued) == 0
    assert cluster.cancel(running) == 0
    assert running.finish.wait(15)
    assert queued.finish.wait(15)
    assert running.status == DispyJob.Cancelled
    assert queued.status == DispyJob.Cancelled
    assert cluster.cancel(running) == -1  # already ended
    wait_for(lambda: not _alive(pid), 10, f"the cancelled job's process {pid} should die")
    assert not (tmp_path / "never").exists()
    # the CPU is free for the next job
    release.write_text("go")
    after = cluster.submit(str(release), str(tmp_path / "after"))
    assert after.finish.wait(20)
    assert after.status == DispyJob.Finished
    cluster.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"
    return True


def test_submit_node_node_jobs_and_allocate_node(
    node_factory, scheduler_factory, shared_factory, tmp_path
):
    a, b = tagged(node_factory, ["pick-a", "pick-b"])
    sched = scheduler_factory([a, b])
    # only a at first: b is offered and declined
    cluster = shared_factory(block_until, sched, nodes=[a.address])
    wait_nodes(cluster, 1)
    assert [n.port for n in cluster.nodes()] == [a.port]
    release = tmp_path / "release"
    marks = [tmp_path / f"started-{i}" for i in range(2)]
    first = cluster.submit_node(cluster.nodes()[0], str(release), str(marks[0]))
    wait_for(marks[0].exists, 20, "a job on a")
    assert cluster.node_jobs(cluster.nodes()[0]) == [first]
    assert cluster.submit_node("10.255.255.9", str(release), "x") is None
    # allocate_node: b joins, and jobs pinned to it run there
    assert cluster.allocate_node(b.address) == 0
    nodes = by_port(wait_nodes(cluster, 2) and cluster)
    second = cluster.submit_node(nodes[b.port], str(release), str(marks[1]))
    wait_for(marks[1].exists, 20, "a job on b")
    assert cluster.node_jobs(nodes[b.port]) == [second]
    assert cluster.allocate_node(NodeAllocate("*", cpus=0)) == 0
    assert cluster.allocate_node(("bad host name !", 1)) == -1
    release.write_text("go")
    assert cluster.wait(timeout=30)
    assert cluster.node_jobs(nodes[b.port]) == []
    third = cluster.submit_node(nodes[b.port], str(release), str(tmp_path / "third"))
    assert third() is not None
    assert third.status == DispyJob.Finished
    cluster.close()


def test_a_nodes_pattern_that_matches_none_warns(
    node_factory, scheduler_factory, shared_factory, dispy_log
):
    node = node_factory.one(cpus=1, name="unmatched")
    sched = scheduler_factory([node])
    cluster = shared_factory(where, sched, nodes=["10.254.*"])
    job = cluster.submit(1)
    warning = wait_for(lambda: dispy_log.find(NO_NODE), 20, "the no-node warning")
    assert "1 job(s) waiting" in warning, warning
    assert f"unmatched (127.0.0.1:{node.port}, 1 CPUs, declined" in warning, warning
    assert job.status == DispyJob.Created
    assert cluster.nodes() == []
    cluster.close(terminate=True)
    assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned)
    # an address without a port means the node at node_port (as for JobCluster)
    exact = shared_factory(where, sched, nodes=["127.0.0.1"], node_port=node.port)
    assert exact.submit(4)() == (None, 16)
    assert [n.port for n in exact.nodes()] == [node.port]
    exact.close()


PROGRAM = """\
import os, sys
print("args", sys.argv[1:], os.environ.get("NODE_TAG"))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_program_computation(node_factory, scheduler_factory, shared_factory, tmp_path):
    (node,) = tagged(node_factory, ["prog"])
    sched = scheduler_factory([node])
    script = tmp_path / "exit_with.py"
    script.write_text(PROGRAM)
    cluster = shared_factory(str(script), sched)
    jobs = {code: cluster.submit(code, "two words") for code in ("0", "7")}
    assert cluster.submit(["not", "a", "string"]) is None
    assert cluster.wait(timeout=30)
    for code, job in jobs.items():
        assert job.status == DispyJob.Finished, (job, job.exception)
        assert job.result == int(code)
        assert job.stdout == f"args ['{code}', 'two words'] prog\n".encode()  # bytes, as 4.15
        assert job.stderr == b"to stderr\n"
    cluster.close()


def test_setup_once_per_node_and_cleanup(node_factory, scheduler_factory, shared_factory, tmp_path):
    a, b = tagged(node_factory, ["setup-a", "setup-b"], cpus=2)
    sched = scheduler_factory([a, b])
    runs = tmp_path / "setup-runs.txt"
    cluster = shared_factory(
        read_setup_globals, sched, setup=functools.partial(setup_record, str(runs))
    )
    wait_for(lambda: len(cluster.nodes()) == 2, 20, "two nodes")
    jobs = [cluster.submit(i) for i in range(10)]
    assert cluster.wait(timeout=30)
    assert all(job.status == DispyJob.Finished for job in jobs), [j.exception for j in jobs]
    assert len(runs.read_text().splitlines()) == 2  # once per node
    for job in jobs:
        assert job.result["setup_cwd"] == job.result["cwd"]
        assert job.result["made"] == "setup was here"
    cluster.close()

    # cleanup=True removes the computation's directory; a cleanup function runs there
    plain = shared_factory(whereami, sched, nodes=[a.address])
    gone = plain.submit()()
    assert gone.startswith(str(a.dest_path_prefix)), gone
    plain.close()
    wait_for(lambda: not os.path.exists(gone), 10, f"{gone} should be removed at close")
    marker = tmp_path / "cleanup-ran"
    custom = shared_factory(
        whereami, sched, nodes=[b.address], cleanup=functools.partial(cleanup_marker, str(marker))
    )
    ran_in = custom.submit()()
    custom.close()
    wait_for(marker.exists, 10, "the cleanup function should run on the node")
    assert marker.read_text() == ran_in
