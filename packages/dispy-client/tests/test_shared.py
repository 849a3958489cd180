"""SharedJobCluster against a fake dispy-scheduler (conftest.py) over real loopback
connections: what it sends (PROTOCOL.md 13) and what the user sees (jobs, statuses,
callbacks, files, errors)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dispy
from dispy import _shared_core
from dispy.shared import SchedulerError
from dispy_core import serialize
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationStart,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    JobProvisional,
    NodeAllocation,
    Pulse,
    SharedComputation,
    SharedEnded,
    SharedFilePut,
    SharedNode,
    SharedRequeued,
    SharedRunning,
    SharedSubmit,
)
from dispy_core.security import TLSConfig
from dispy_core.testing import free_port, wait_for

SECRET = "shared-test-secret"  # the fake scheduler's (conftest.py)


def square(x: int) -> int:
    return x * x


class Recorder:
    """cluster_status and callback calls, as (status, node address, job) tuples."""

    def __init__(self) -> None:
        self.statuses: list[tuple[int, str | None, Any]] = []
        self.callbacks: list[Any] = []
        self.lock = threading.Lock()

    def status(self, status: int, node: Any, job: Any) -> None:
        with self.lock:
            self.statuses.append((status, node.ip_addr if node else None, job))

    def callback(self, job: Any) -> None:
        with self.lock:
            self.callbacks.append((job.status, job.result))

    def of(self, job: Any) -> list[int]:
        return [s for s, _, j in self.statuses if j is job]


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What the ``dispy`` logger says (it does not propagate to pytest's handler)."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("dispy")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def shared(sched: Any, tmp_path: Any, **kwargs: Any) -> dispy.SharedJobCluster:
    kwargs.setdefault("secret", SECRET)
    kwargs.setdefault("port", 0)
    kwargs.setdefault("recover_file", str(tmp_path / f"recover-{time.monotonic_ns()}"))
    return dispy.SharedJobCluster(
        kwargs.pop("computation", square),
        scheduler_node="127.0.0.1",
        scheduler_port=sched.port,
        **kwargs,
    )


def test_jobs_run_and_report_results_statuses_and_callbacks(fake_scheduler, tmp_path, capsys):
    sched = fake_scheduler(compute=square)
    rec = Recorder()
    cluster = shared(sched, tmp_path, callback=rec.callback, cluster_status=rec.status)
    try:
        opened, _ = sched.expect(SharedComputation)
        assert opened.name == "square"
        assert opened.kind == "function"
        assert (opened.exclusive, opened.reentrant, opened.cleanup) == (False, False, True)
        sched.expect(ComputationStart)
        with open(cluster.recover_file) as fh:
            header = json.loads(fh.readline())
        assert header["scheduler"] == ["127.0.0.1", sched.port]
        assert header["sched_id"] == 77
        assert header["comp_id"] == opened.comp_id
        assert header["secret"] == SECRET
        allocation, _ = sched.expect(NodeAllocation)
        assert (allocation.ip_addr, allocation.cpus) == ("127.0.0.1", 2)
        wait_for(lambda: len(cluster.nodes()) == 1, 5)

        jobs = [cluster.submit(i) for i in range(5)]
        assert [job() for job in jobs] == [0, 1, 4, 9, 16]
        assert cluster.wait(5)
        assert all(j.status == JobStatus.Finished for j in jobs)
        assert all(j.ip_addr == "127.0.0.1" and j.stdout == "out" for j in jobs)
        assert sorted(r for _, r in rec.callbacks) == [0, 1, 4, 9, 16]
        for job in jobs:
            assert rec.of(job) == [JobStatus.Created, JobStatus.Running, JobStatus.Finished]
        assert (NodeStatus.Initialized, "127.0.0.1", None) in rec.statuses
        ids = [j._uid for j in jobs]
        wait_for(lambda: sorted(i for a in sched.received(JobAck) for i in a.job_ids) == ids, 5)
        assert cluster.nodes()[0].jobs_done == 5
        assert cluster.set_node_cpus("127.0.0.1", 1) == 2  # unchanged: the node is shared
        assert cluster.set_node_cpus("127.0.0.9", 1) == -1
        cluster.print_status()
        assert "127.0.0.1:51348 (n1)" in capsys.readouterr().out
    finally:
        cluster.close()
    close, _ = sched.expect(CloseComputation)
    assert close.terminate is False
    assert not os.path.exists(cluster.recover_file)


def test_a_job_raising_ends_terminated_with_its_exception(fake_scheduler, tmp_path):
    sched = fake_scheduler(compute=lambda x: 1 // x)
    with shared(sched, tmp_path) as cluster:
        job = cluster.submit(0)
        assert job() is None
        assert job.status == JobStatus.Terminated
        assert "ZeroDivisionError" in job.exception


def test_submit_node_pins_the_job_to_that_node(fake_scheduler, tmp_path):
    sched = fake_scheduler(
        nodes=[
            fake_scheduler.Node("127.0.0.2", name="a"),
            fake_scheduler.Node("127.0.0.3", name="b", cpus=4),
        ]
    )
    with shared(sched, tmp_path, reentrant=True, exclusive=True) as cluster:
        opened, _ = sched.expect(SharedComputation)
        assert (opened.exclusive, opened.reentrant) == (True, True)
        wait_for(lambda: len(cluster.nodes()) == 2, 5)
        job = cluster.submit_node("127.0.0.3", 7)
        assert job() == 7
        assert job.ip_addr == "127.0.0.3"
        submit, _ = sched.expect(SharedSubmit)
        assert submit.pinned == [(job._uid, "127.0.0.3", 51348)]
        node = next(n for n in cluster.nodes() if n.name == "a")
        job = cluster.submit_node(node, 8)
        assert job() == 8
        assert job.ip_addr == "127.0.0.2"
        assert cluster.submit_node("127.0.0.9", 1) is None  # not a node of this cluster


def test_offers_are_decided_by_the_nodes_patterns_and_node_allocate(fake_scheduler, tmp_path):
    class NotB(dispy.NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
            return 0 if name == "b" else cpus

    sched = fake_scheduler(
        nodes=[
            fake_scheduler.Node("127.0.0.2", name="a", cpus=4),
            fake_scheduler.Node("127.0.0.3", name="b", cpus=4),
            fake_scheduler.Node("127.0.0.4", name="c", cpus=4),
            fake_scheduler.Node("127.0.0.5", name="d", cpus=4),
            fake_scheduler.Node("127.0.0.6", port=9999, name="e", cpus=4),
        ]
    )
    nodes = [dispy.NodeAllocate("127.0.0.2", cpus=1), "127.0.0.4", NotB("127.0.0.[35]")]
    with shared(sched, tmp_path, nodes=nodes) as cluster:
        opened, _ = sched.expect(SharedComputation)
        assert opened.hosts == ["127.0.0.2", "127.0.0.4"]  # names, not patterns
        wait_for(lambda: len(sched.received(NodeAllocation)) == 5, 5)
        answers = {a.ip_addr: a.cpus for a in sched.received(NodeAllocation)}
        assert answers == {
            "127.0.0.2": 1,
            "127.0.0.3": 0,
            "127.0.0.4": 4,
            "127.0.0.5": 4,
            "127.0.0.6": 0,
        }
        wait_for(lambda: len(cluster.nodes()) == 3, 5)

        assert cluster.allocate_node(("127.0.0.6", 9999)) == 0  # offered before, declined
        allocation, _ = sched.expect(NodeAllocation, lambda a: a.ip_addr == "127.0.0.6" and a.cpus)
        assert allocation.cpus == 4
        wait_for(lambda: len(cluster.nodes()) == 4, 5)
        assert cluster.allocate_node("not a host name at all") == -1


def test_cancel_asks_the_scheduler_and_the_job_ends_as_it_says(fake_scheduler, tmp_path):
    sched = fake_scheduler(auto_run=False)
    rec = Recorder()
    with shared(sched, tmp_path, cluster_status=rec.status) as cluster:
        job = cluster.submit(1)
        submit, _ = sched.expect(SharedSubmit)
        comp_id = submit.comp_id
        sched.send(
            SharedRunning(comp_id=comp_id, ip_addr="127.0.0.1", port=51348, job_ids=[job._uid])
        )
        wait_for(lambda: job.status == JobStatus.Running, 5)
        assert cluster.node_jobs("127.0.0.1") == [job]
        assert cluster.cancel(job) == 0
        cancel, _ = sched.expect(JobCancel)
        assert cancel.job_ids == [job._uid]
        sched.send(
            SharedEnded(comp_id=comp_id, jobs=[(job._uid, "cancelled", "Cancelled by the user")])
        )
        assert job.finish.wait(5)
        assert job.status == JobStatus.Cancelled
        assert job.exception == "Cancelled by the user"
        assert cluster.node_jobs("127.0.0.1") == []
        assert cluster.cancel(job) == -1
        assert cluster.wait(5)
        assert rec.of(job)[-1] == JobStatus.Cancelled


def test_ended_requeued_and_node_statuses_from_the_scheduler(fake_scheduler, tmp_path):
    sched = fake_scheduler(auto_run=False)
    rec = Recorder()
    with shared(sched, tmp_path, cluster_status=rec.status) as cluster:
        a, b, c = (cluster.submit(i) for i in range(3))
        submit, _ = sched.expect(SharedSubmit)
        comp_id = submit.comp_id
        ids = [a._uid, b._uid, c._uid]
        sched.send(SharedRunning(comp_id=comp_id, ip_addr="127.0.0.1", port=51348, job_ids=ids))
        wait_for(lambda: c.status == JobStatus.Running, 5)
        sched.send(SharedRequeued(comp_id=comp_id, job_ids=[c._uid]))
        wait_for(lambda: c.status == JobStatus.Created and c.ip_addr is None, 5)
        sched.send(
            SharedNode(
                comp_id=comp_id, ip_addr="127.0.0.1", port=51348, status="abandoned", reason="gone"
            )
        )
        reason = "Cancelled: node 127.0.0.1:51348 declared dead: no pulse for 50 s"
        sched.send(
            SharedEnded(
                comp_id=comp_id,
                jobs=[(a._uid, "cancelled", reason), (b._uid, "terminated", "worker crashed")],
            )
        )
        assert a.finish.wait(5)
        assert b.finish.wait(5)
        assert (a.status, a.exception) == (JobStatus.Cancelled, reason)
        assert (b.status, b.exception) == (JobStatus.Terminated, "worker crashed")
        wait_for(lambda: (NodeStatus.AbandonedNode, "127.0.0.1", None) in rec.statuses, 5)
        assert cluster.nodes() == []
        sched.send(
            SharedEnded(comp_id=comp_id, jobs=[(c._uid, "abandoned", "computation dropped")])
        )
        assert c.finish.wait(5)
        assert c.status == JobStatus.Abandoned
        assert rec.of(a).count(JobStatus.Cancelled) == 1


def test_provisional_results_reach_the_callback_before_the_final_one(fake_scheduler, tmp_path):
    sched = fake_scheduler(auto_run=False)
    rec = Recorder()
    with shared(sched, tmp_path, callback=rec.callback) as cluster:
        job = cluster.submit(3)
        submit, payload = sched.expect(SharedSubmit)
        client = sched.clients[-1]
        key = ("127.0.0.1", 51348)
        sched.send(
            SharedRunning(comp_id=submit.comp_id, ip_addr=key[0], port=key[1], job_ids=[job._uid])
        )
        sched.send(
            JobProvisional(comp_id=submit.comp_id, job_id=job._uid), serialize.dumps_plain("half")
        )
        wait_for(lambda: len(rec.callbacks) == 1, 5)
        assert rec.callbacks[0] == (JobStatus.ProvisionalResult, "half")
        sched._run(_run_job(sched, client, job._uid, key, payload))
        assert job() == 3
        wait_for(lambda: len(rec.callbacks) == 2, 5)
        assert rec.callbacks[1] == (JobStatus.Finished, 3)


async def _run_job(sched: Any, client: Any, uid: int, key: Any, payload: bytes) -> None:
    sched.run_job(client, uid, key, payload)


def test_files_go_both_ways(fake_scheduler, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dep = tmp_path / "dep.txt"
    dep.write_text("for every job")
    own = tmp_path / "own.txt"
    own.write_text("for one job")
    sched = fake_scheduler()
    with shared(sched, tmp_path, depends=[str(dep)]) as cluster:
        put, data = sched.expect(FilePut)
        assert (put.path, put.job_id, data) == ("dep.txt", None, b"for every job")
        order = [type(m) for _, m, _ in sched.log]
        assert order.index(FilePut) < order.index(ComputationStart)  # files before the start

        job = cluster.submit(5, dispy_job_depends=[str(own)])
        assert job() == 5
        put, data = sched.expect(FilePut, lambda m: m.job_id is not None)
        assert (put.path, put.job_id, data) == ("own.txt", job._uid, b"for one job")

        wait_for(lambda: len(cluster.nodes()) == 1, 5)
        assert cluster.send_file(str(dep), "127.0.0.1") == 0
        sent, data = sched.expect(SharedFilePut)
        assert (sent.ip_addr, sent.port, sent.path, data) == (
            "127.0.0.1",
            51348,
            "dep.txt",
            b"for every job",
        )
        assert cluster.send_file(str(dep), "127.0.0.9") == -1

        # a job's dispy_send_file, forwarded by the scheduler
        comp_id = sched.clients[-1].comp_id
        sched.send(
            FilePut(comp_id=comp_id, path="out/result.bin", size=3, job_id=job._uid, req=9), b"abc"
        )
        ack, _ = sched.expect(FileAck)
        assert (ack.req, ack.error) == (9, None)
        assert (tmp_path / "out" / "result.bin").read_bytes() == b"abc"
        sched.send(
            FilePut(comp_id=comp_id, path="../escape", size=1, job_id=job._uid, req=10), b"x"
        )
        ack, _ = sched.expect(FileAck, lambda a: a.req == 10)
        assert ack.error is not None
        assert not (tmp_path.parent / "escape").exists()


def test_a_lost_scheduler_ends_every_unfinished_job_abandoned(fake_scheduler, tmp_path, records):
    sched = fake_scheduler(auto_run=False)
    cluster = shared(sched, tmp_path)
    jobs = [cluster.submit(i) for i in range(3)]
    sched.expect(SharedSubmit)
    began = time.monotonic()
    sched.drop()
    assert cluster.wait(5)
    assert time.monotonic() - began < 3
    lost = f"scheduler 127.0.0.1:{sched.port} lost: "
    for job in jobs:
        assert job.status == JobStatus.Abandoned
        assert job.exception.startswith(lost)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert lost in errors[0].getMessage()
    assert cluster.recover_file in errors[0].getMessage()
    late = cluster.submit(9)  # nothing would ever run it: it ends at once
    assert late.finish.wait(5)
    assert late.status == JobStatus.Abandoned
    assert cluster.close(timeout=5)
    assert os.path.exists(cluster.recover_file)  # kept for recover_jobs
    os.remove(cluster.recover_file)


def test_a_wrong_secret_is_a_clear_error(fake_scheduler, tmp_path):
    sched = fake_scheduler()
    with pytest.raises(SchedulerError) as info:
        shared(sched, tmp_path, secret="another secret")
    text = str(info.value)
    assert f"127.0.0.1:{sched.port}" in text
    assert "same secret" in text
    assert "secret=" in text  # where this client's secret came from
    assert "no TLS" in text
    assert "--cluster_secret" in text
    assert not list(tmp_path.iterdir())  # no recover file


def setup_square(tag: Any = None) -> int:
    return 0


def test_a_node_allocates_own_depends_and_setup_args_go_with_its_answer(fake_scheduler, tmp_path):
    own = tmp_path / "own.txt"
    own.write_text("for a only")

    class PerNode(dispy.NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
            # as a 4.15 program does: the node's own setup, set for the node asked about
            self.setup_args = (f"tag-{name}",)
            self.depends = [str(own)] if name == "a" else []
            return cpus

    sched = fake_scheduler(
        nodes=[
            fake_scheduler.Node("127.0.0.2", name="a"),
            fake_scheduler.Node("127.0.0.3", name="b"),
            fake_scheduler.Node("127.0.0.4", name="c"),
        ]
    )
    nodes = [dispy.NodeAllocate("127.0.0.4"), PerNode("127.0.0.[23]")]
    with shared(sched, tmp_path, nodes=nodes, setup=setup_square) as cluster:
        _, common = sched.expect(ComputationStart)
        wait_for(lambda: len(sched.received(NodeAllocation)) == 3, 5)
        got = {}
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            got[host] = sched.expect(NodeAllocation, lambda a, h=host: a.ip_addr == h)
        a, a_payload = got["127.0.0.2"]
        assert a.cpus == 2
        assert a.start is not None
        assert [(p, size) for p, size, _, _ in a.files] == [("own.txt", len("for a only"))]
        assert a_payload[a.start :] == b"for a only"
        bundle = serialize.loads(a_payload[: a.start])
        assert bundle["setup_args"] == ("tag-a",)
        b, b_payload = got["127.0.0.3"]
        assert b.files == []
        assert b.start == len(b_payload)
        assert serialize.loads(b_payload)["setup_args"] == ("tag-b",)
        c, c_payload = got["127.0.0.4"]  # no per-node data: the common set-up
        assert (c.start, c.files, c_payload) == (None, [], b"")
        assert serialize.loads(common).get("setup_args") in (None, ())
        wait_for(lambda: len(cluster.nodes()) == 3, 5)


def test_setup_args_with_a_program_computation_decline_the_node(fake_scheduler, tmp_path, records):
    program = tmp_path / "prog.py"
    program.write_text("print('hi')\n")
    sched = fake_scheduler()
    nodes = [dispy.NodeAllocate("*", setup_args=(1,))]
    with shared(sched, tmp_path, computation=str(program), nodes=nodes):
        allocation, _ = sched.expect(NodeAllocation)
        assert allocation.cpus == 0
        wait_for(lambda: any("setup_args need" in r.getMessage() for r in records), 5)


def test_resetup_node_is_a_clear_error_on_a_shared_cluster(fake_scheduler, tmp_path, records):
    sched = fake_scheduler()
    with shared(sched, tmp_path) as cluster:
        wait_for(lambda: len(cluster.nodes()) == 1, 5)
        assert cluster.resetup_node(cluster.nodes()[0]) == -1
        assert cluster.resetup_node("127.0.0.1", setup_args=(2,)) == -1
        assert any(
            "resetup_node: a SharedJobCluster" in r.getMessage() and r.levelno == logging.ERROR
            for r in records
        )


def test_no_scheduler_listening_is_a_clear_error(tmp_path):
    port = free_port()
    with pytest.raises(SchedulerError, match=f"127.0.0.1:{port}: nothing accepts connections"):
        dispy.SharedJobCluster(
            square, scheduler_port=port, port=0, secret=SECRET, recover_file=str(tmp_path / "r")
        )


def test_a_refusal_before_acceptance_is_a_clear_error(fake_scheduler, tmp_path):
    sched = fake_scheduler(refuse="dest_path escapes the prefix")
    with pytest.raises(SchedulerError, match="it ended the session: dest_path escapes the prefix"):
        shared(sched, tmp_path)


def test_port_is_used_when_free_and_two_clients_share_a_host(fake_scheduler, tmp_path, records):
    sched = fake_scheduler(compute=square)
    port = free_port()
    first = shared(sched, tmp_path, port=port)
    second = shared(sched, tmp_path, port=port, loglevel=logging.DEBUG)  # busy: any port
    third = shared(sched, tmp_path, port=0)
    try:
        assert first.port == port
        assert second.port not in (0, port)
        assert third.port not in (0, port, second.port)
        assert any("in use" in r.getMessage() for r in records if r.levelno == logging.DEBUG)
        jobs = [c.submit(n) for n, c in enumerate((first, second, third), 2)]
        assert [j() for j in jobs] == [4, 9, 16]
        comp_ids = {m.comp_id for m in sched.received(SharedComputation)}
        assert len(comp_ids) == 3
    finally:
        for cluster in (first, second, third):
            cluster.close()


def test_close_with_terminate_abandons_what_the_scheduler_did_not_end(fake_scheduler, tmp_path):
    sched = fake_scheduler(auto_run=False)
    cluster = shared(sched, tmp_path)
    job = cluster.submit(1)
    sched.expect(SharedSubmit)
    assert cluster.close(terminate=True)
    close, _ = sched.expect(CloseComputation)
    assert close.terminate is True
    assert job.status == JobStatus.Abandoned
    assert job.exception == "cluster closed"


def test_a_silent_scheduler_is_declared_lost(fake_scheduler, tmp_path, monkeypatch):
    monkeypatch.setattr(_shared_core, "SILENCE_LIMIT", 0.6)  # the fake never pulses
    sched = fake_scheduler(auto_run=False)
    cluster = shared(sched, tmp_path)
    job = cluster.submit(1)
    sched.expect(Pulse, timeout=5)  # the client keeps the connection alive meanwhile
    assert job.finish.wait(5)
    assert job.status == JobStatus.Abandoned
    assert "lost: nothing heard from it for" in job.exception
    cluster.close(timeout=5)
    os.remove(cluster.recover_file)


def make_cert(directory: Any) -> tuple[str, str]:
    """A self-signed certificate: (key file, cert file)."""
    key, cert = directory / "dispy.key", directory / "dispy.crt"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    args = [*command.split(), "-keyout", str(key), "-out", str(cert), "-subj", "/CN=dispy"]
    subprocess.run(args, check=True, capture_output=True, timeout=30)
    return str(key), str(cert)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_toward_the_scheduler_and_a_clear_error_when_one_side_lacks_it(
    fake_scheduler, tmp_path
):
    key, cert = make_cert(tmp_path)
    with_tls = fake_scheduler(compute=square, tls=TLSConfig(cert, key))
    with shared(with_tls, tmp_path, certfile=cert, keyfile=key) as cluster:
        assert cluster.submit(6)() == 36
    with pytest.raises(SchedulerError, match=r"this client: a secret .*, no TLS"):
        shared(with_tls, tmp_path, msg_timeout=1)
    without_tls = fake_scheduler()
    with pytest.raises(SchedulerError, match=re.escape(f"TLS with certfile '{cert}'")):
        shared(without_tls, tmp_path, certfile=cert, keyfile=key, msg_timeout=1)


def test_no_node_serving_the_computation_is_warned_about(
    fake_scheduler, tmp_path, monkeypatch, records
):
    monkeypatch.setattr(_shared_core, "NO_NODE_WARNING_DELAY", 0.2)
    sched = fake_scheduler(nodes=[fake_scheduler.Node("127.0.0.7", name="far")])
    with shared(sched, tmp_path, nodes=["127.0.0.8"]) as cluster:
        job = cluster.submit(1)
        wait_for(lambda: any(r.levelno == logging.WARNING for r in records), 5)
        (warning,) = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert (
            f"no node serves cluster 'square' on dispy-scheduler 127.0.0.1:{sched.port}" in warning
        )
        assert "(1 job(s) waiting)" in warning
        assert "far (127.0.0.7:51348, 2 CPUs, declined by this cluster's nodes)" in warning
        cluster.cancel(job)
        assert job.finish.wait(5)
        assert job.status == JobStatus.Cancelled


def test_hosts_for_the_scheduler_keep_a_node_entrys_port():
    # The scheduler pings a bare name at its own --node_port: a port given here must go too.
    from dispy.shared import scheduler_hosts

    nodes = [
        dispy.NodeAllocate("127.0.0.2"),
        dispy.NodeAllocate("127.0.0.3", port=9999),
        dispy.NodeAllocate("127.0.0.*", port=9999),
        dispy.NodeAllocate("::1", port=9999),
    ]
    assert scheduler_hosts(nodes, 51348) == ["127.0.0.2", "127.0.0.3:9999", "::1"]
    assert scheduler_hosts(nodes[:1], 7000) == ["127.0.0.2:7000"]
