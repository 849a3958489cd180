"""Node failures under a live client (client.txt pulse_interval, reentrant, ping_interval;
issue 4).

Real ``dispy-node`` processes are killed (SIGKILL), stopped (SIGTERM), hung (SIGSTOP of the
whole process tree) and restarted by :class:`harness.nemesis.Nemesis` while jobs run. Jobs
are :func:`harness.executions.recorded`: each execution leaves files naming its job and
node, and gated jobs wait for a file the test creates, so the test knows which jobs a node
is running when the fault hits. Every test checks the client's history
(:class:`harness.History`: one terminal status and one callback per job, Finished results
equal to the pure function of the arguments) and counts executions on the nodes.
"""

from __future__ import annotations

import time
from collections import Counter

import psutil
import pytest
from harness import History, wait_for
from harness.executions import ExecutionLog, Gate, expected, recorded
from harness.nemesis import Nemesis

from dispy import DispyJob, DispyNode

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def nemesis(node_factory, cluster_factory):
    """Set up after nodes and clusters, so paused processes are resumed before clusters
    close and nodes stop."""
    chaos = Nemesis()
    yield chaos
    chaos.heal()
    print("nemesis: " + "; ".join(chaos.log))


@pytest.fixture
def pair(node_factory):
    """Two one-CPU nodes whose jobs know which node runs them (NODE_TAG)."""
    return [node_factory.one(cpus=1, name=name, env={"NODE_TAG": name}) for name in ("fa", "fb")]


def _cluster(cluster_factory, nodes, history, **kwargs):
    """A cluster of ``recorded`` over ``nodes``, once every node has joined it."""
    cluster = cluster_factory(
        recorded,
        nodes,
        callback=history.callback,
        cluster_status=history.cluster_status,
        **kwargs,
    )
    wait_for(
        lambda: len(cluster.nodes()) == len(nodes),
        20,
        lambda: f"{len(nodes)} nodes should join; {cluster.nodes()} did",
    )
    return cluster


def _dispy_node(cluster, node) -> DispyNode | None:
    """The cluster's DispyNode for ``node`` while it serves the cluster."""
    return next((n for n in cluster.nodes() if n.port == node.port), None)


def _running_on(cluster, node) -> list[DispyJob]:
    """The jobs the cluster says run on ``node`` now (not those waiting in its queue)."""
    found = _dispy_node(cluster, node)
    assert found is not None, f"{node.name} does not serve the cluster"
    return cluster.node_jobs(found)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _node_ended_as(history: History, job: DispyJob) -> str | None:
    """The node the job's terminal status came from."""
    record = next(r for r in history.records() if r.job is job)
    return record.nodes[-1] if record.nodes else None


def _run_early(cluster, history, log):
    """Jobs that finish before the fault (0.1 s each: the client then keeps one job queued
    per node CPU, so gated jobs spread over both nodes)."""
    early = [history.submit(cluster, n, str(log), 0.1) for n in range(4)]
    assert cluster.wait(30), history.summary()
    return early


def _start_gated(cluster, history, log, gate, a, b, numbers):
    """Submit gated jobs and wait until each of the two nodes runs one."""
    jobs = [history.submit(cluster, n, str(log), 0, str(gate)) for n in numbers]
    log.wait_running(1, 20, node=a.name)
    log.wait_running(1, 20, node=b.name)
    return jobs


def _snapshot(history: History) -> dict[int, tuple[int, int, int]]:
    return {
        id(r.job): (int(r.job.status), len(r.statuses), len(r.callbacks)) for r in history.records()
    }


def _rejoined(cluster, node, timeout: float) -> DispyNode:
    return wait_for(
        lambda: _dispy_node(cluster, node),
        timeout,
        lambda: f"{node.name} did not rejoin the cluster; it serves {cluster.nodes()}",
    )


def _serves_again(cluster, history, log, node, numbers) -> None:
    """Jobs submitted now run on ``node`` too."""
    more = [history.submit(cluster, n, str(log), 0.3) for n in numbers]
    assert cluster.wait(30), history.summary()
    on_node = [j for j in more if _node_ended_as(history, j) == node.name]
    where = Counter(_node_ended_as(history, j) for j in more)
    assert on_node, f"no new job ran on {node.name}: {where}"
    ran_there = {e.n for e in log.executions() if e.node == node.name and e.ended}
    assert ran_there & set(numbers)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_node_dies_mid_job_reentrant_jobs_finish_elsewhere(
    pair, cluster_factory, nemesis, tmp_path, how
):
    """reentrant=True: the jobs of a node that dies (SIGKILL, or SIGTERM shutdown) run again
    on the other node; each job ends Finished exactly once at the client; jobs that had
    finished are not rerun. With ping_interval the restarted node rejoins and serves."""
    a, b = pair
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")
    history = History()
    cluster = _cluster(cluster_factory, [a, b], history, reentrant=True, ping_interval=1)
    early = _run_early(cluster, history, log)
    gated = _start_gated(cluster, history, log, gate, a, b, range(10, 16))
    victims = _running_on(cluster, a)
    assert victims, "the node to kill has no job"
    killed_pids = [e.pid for e in log.running(a.name)]

    if how == "kill":
        orphans = nemesis.kill(a)
        assert not nemesis.wait_gone(orphans), "the killed node's job processes live on"
    else:
        assert nemesis.terminate(a) == 0
    for pid in killed_pids:
        wait_for(lambda pid=pid: _gone(pid), 10, f"job process {pid} of {a.name} should die")
    gate.open()
    assert cluster.wait(30), history.summary()

    history.check(expected, allowed={DispyJob.Finished})
    for job in victims:
        assert _node_ended_as(history, job) == b.name, job
    starts, ends = log.starts(), log.ends()
    for job in early:
        assert starts[job.args[0]] == 1, f"finished job {job.args[0]} ran again"
    for job in gated:
        n = job.args[0]
        assert ends[n] == 1, f"job {n} ran to its end {ends[n]} times"
        assert starts[n] <= 2
    assert any(starts[j.args[0]] == 2 for j in victims), "the killed job should have rerun"
    assert any(s == DispyNode.AbandonedNode and name == a.name for s, name in history.node_events)

    nemesis.restart(a)
    _rejoined(cluster, a, 15)
    _serves_again(cluster, history, log, a, range(20, 26))
    history.check(expected, allowed={DispyJob.Finished})
    cluster.close()


def test_node_killed_not_reentrant_jobs_cancelled(pair, cluster_factory, nemesis, tmp_path):
    """reentrant=False: the jobs placed on a node that dies end Cancelled with an exception
    naming the node; the other jobs finish; no job runs twice."""
    a, b = pair
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")
    history = History()
    cluster = _cluster(cluster_factory, [a, b], history)
    early = _run_early(cluster, history, log)
    gated = _start_gated(cluster, history, log, gate, a, b, range(10, 16))
    victims = _running_on(cluster, a)
    assert victims

    nemesis.kill(a)
    for job in victims:
        assert job.finish.wait(10), f"{job} should end once its node died"
    gate.open()
    assert cluster.wait(30), history.summary()

    history.check(expected, allowed={DispyJob.Finished, DispyJob.Cancelled})
    cancelled = [j for j in early + gated if j.status == DispyJob.Cancelled]
    assert set(victims) <= set(cancelled)
    for job in cancelled:  # the running ones, and any sent ahead to the dead node's queue
        assert job.exception.startswith(f"Cancelled: node 127.0.0.1:{a.port} "), job.exception
        assert job.result is None
        assert log.ends()[job.args[0]] == 0
        assert all(e.node == a.name for e in log.executions() if e.n == job.args[0])
    for job in early + gated:
        if job not in cancelled:
            assert job.status == DispyJob.Finished, (job, job.exception)
    assert all(_node_ended_as(history, j) == b.name for j in gated if j not in cancelled)
    starts = log.starts()
    assert max(starts.values()) == 1, f"a job ran twice without reentrant: {starts}"
    assert any(s == DispyNode.AbandonedNode and name == a.name for s, name in history.node_events)
    cluster.close()


def test_hung_node_declared_dead_jobs_move_then_node_returns(
    pair, cluster_factory, nemesis, tmp_path
):
    """A node that stops answering (SIGSTOP of its processes) is declared dead after
    5 x pulse_interval; reentrant jobs finish elsewhere. When it wakes up its late results
    change nothing at the client, it frees itself, and with ping_interval it serves the
    same cluster again."""
    a, b = pair
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")
    history = History()
    cluster = _cluster(
        cluster_factory, [a, b], history, reentrant=True, pulse_interval=1, ping_interval=1
    )
    early = _run_early(cluster, history, log)
    _start_gated(cluster, history, log, gate, a, b, range(10, 16))
    victims = _running_on(cluster, a)
    stuck = log.running(a.name)

    nemesis.pause(a)
    paused = time.monotonic()
    gate.open()  # the paused node's job cannot see it until it wakes up
    assert cluster.wait(30), history.summary()
    took = time.monotonic() - paused
    assert 4 <= took < 15, f"declared dead and rerun after {took:.1f} s (5 x pulse_interval)"
    history.check(expected, allowed={DispyJob.Finished})
    for job in victims:
        assert _node_ended_as(history, job) == b.name
    before = _snapshot(history)

    nemesis.resume(a)
    # Its stale job finishes there (or is killed as the node frees itself) ...
    for e in stuck:
        wait_for(lambda e=e: _gone(e.pid) or log.ends()[e.n] >= 2, 10, f"stale job {e}")
    a.wait_log("free again", 10)
    # ... and comes back into the cluster, which uses it again.
    _rejoined(cluster, a, 15)
    _serves_again(cluster, history, log, a, range(20, 26))
    after = _snapshot(history)
    changed = {k: (v, after[k]) for k, v in before.items() if after[k] != v}
    assert not changed, f"jobs changed after they had ended: {changed}"
    history.check(expected, allowed={DispyJob.Finished})
    assert all(log.starts()[j.args[0]] == 1 for j in early)
    cluster.close()


def test_hung_node_jobs_end_and_close_is_prompt(pair, cluster_factory, nemesis, tmp_path):
    """Without reentrant, the jobs of a hung node end Cancelled ("declared dead") within
    about 5 x pulse_interval, none stays Running; close(terminate=True) returns promptly
    while the node is still stopped; when it wakes up it kills the jobs and frees itself."""
    a, b = pair
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")
    history = History()
    cluster = _cluster(cluster_factory, [a, b], history, pulse_interval=1)
    gated = _start_gated(cluster, history, log, gate, a, b, range(6))
    victims = _running_on(cluster, a)
    stuck = log.running(a.name)

    nemesis.pause(a)
    paused = time.monotonic()
    for job in victims:
        assert job.finish.wait(15), f"{job} still {job.status} 15 s after its node hung"
    took = time.monotonic() - paused
    assert took < 10, f"jobs of the hung node ended after {took:.1f} s"
    gate.open()
    assert cluster.wait(20), history.summary()
    history.check(expected, allowed={DispyJob.Finished, DispyJob.Cancelled})
    cancelled = [j for j in gated if j.status == DispyJob.Cancelled]
    assert set(victims) <= set(cancelled)
    for job in cancelled:  # the running ones, and any sent ahead to the hung node's queue
        assert job.exception.startswith(f"Cancelled: node 127.0.0.1:{a.port} declared dead")
        assert all(e.node == a.name for e in log.executions() if e.n == job.args[0])
    assert all(_node_ended_as(history, j) == b.name for j in gated if j not in cancelled)

    started = time.monotonic()
    cluster.close(terminate=True)
    assert time.monotonic() - started < 3, "close() waited for the hung node"

    nemesis.resume(a)
    a.wait_log("free again", 10)
    for e in stuck:
        wait_for(lambda e=e: _gone(e.pid) or log.ends()[e.n] == 1, 10, f"stale job {e}")
    assert max(log.starts().values()) == 1


def _close_while_hung(node, cluster_factory, nemesis, log, gate, history):
    """A cluster with a job running on ``node`` (and, the client's queue depth permitting,
    one sent ahead to wait there), closed with terminate=True while the node is stopped;
    returns the job process that was running."""
    msg_timeout = 3.0
    cluster = _cluster(cluster_factory, [node], history, msg_timeout=msg_timeout)
    jobs = [history.submit(cluster, n, str(log), 0, str(gate)) for n in range(3)]
    log.wait_running(1, 20)
    pid = log.running()[0].pid

    nemesis.pause(node)
    started = time.monotonic()
    cluster.close(terminate=True)
    took = time.monotonic() - started
    assert took < msg_timeout + 3, f"close(terminate=True) took {took:.1f} s"
    for job in jobs:
        assert job.finish.is_set()
        assert job.status in (DispyJob.Cancelled, DispyJob.Abandoned), job
    history.check(allowed={DispyJob.Cancelled, DispyJob.Abandoned})
    nemesis.resume(node)
    return pid


def test_close_terminate_while_node_hung(node_factory, cluster_factory, nemesis, tmp_path):
    """close(terminate=True) right after the only node hung (no pulse_interval: it is not
    declared dead yet) returns within msg_timeout, and every job ends. The node, when it
    wakes up to the close of a client that has gone, kills the jobs, frees itself and serves
    the next cluster. (It used to stay busy for good: the reply of the cancelled queued job
    waited unacknowledged, so the session was "orphaned" although its computation was
    closed.)"""
    node = node_factory.one(cpus=1, name="frozen", env={"NODE_TAG": "frozen"})
    log = ExecutionLog(tmp_path / "executions")
    pid = _close_while_hung(node, cluster_factory, nemesis, log, Gate(tmp_path / "gate"), History())
    wait_for(lambda: _gone(pid), 10, f"the job process {pid} should be killed")
    node.wait_log("free again", 10)
    assert sum(log.starts().values()) == 1
    assert sum(log.ends().values()) == 0

    again = History()
    follow = _cluster(cluster_factory, [node], again)
    job = again.submit(follow, 7, str(log))
    assert job.finish.wait(20), "the node should serve the next cluster"
    follow.close()
    again.check(expected, allowed={DispyJob.Finished})
