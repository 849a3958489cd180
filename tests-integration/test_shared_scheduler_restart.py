"""Nothing is lost when the shared scheduler dies or stops (issue 11: "scheduler kill -9
and restart with nothing lost"; PROTOCOL.md 13, "Recovery", "Scheduler lost").

Real processes, as in test_shared_recovery.py: ``dispy-scheduler serve`` killed with
``kill -9`` (or stopped with SIGINT) while jobs run on real ``dispy-node``s, then started
again on the same ports and store (``--dest_path_prefix``); the clients are real
``dispy.SharedJobCluster`` processes; ``dispy.recover_jobs`` runs in the test process.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from harness.executions import ExecutionLog, Gate, expected
from harness.nemesis import Nemesis
from harness.polling import wait_for
from harness.ports import LOOPBACK
from harness.shared_recovery import (
    LOST_WITHIN,
    check_recovered,
    done_ids,
    finished_all,
    kill_scheduler,
    kill_when_sent,
    lost_jobs,
    lost_jobs_told,
    results_in,
    sched_id_of,
    store_files,
    tagged_nodes,
)

import dispy
from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)


def test_scheduler_killed_results_come_back_through_the_restarted_one(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = tagged_nodes(node_factory, "survivor", cpus=2)
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate, late_gate = Gate(tmp_path / "gate"), Gate(tmp_path / "late-gate")
    recover_file = tmp_path / "orphan.recover"
    numbers = [1, 2, 3, 4]
    client = shared_clients(
        sched,
        name="orphan",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.1, str(gate)) for n in numbers[:3]] + [(4, 0.1, str(late_gate))],
        close=True,
        late=True,
    )
    client.wait_line("submitted", 30)
    sched_id = sched_id_of(recover_file)
    # Submitted before the nodes are ready, all four go to the first one ready (2 CPUs and
    # 2 sent ahead): two run there, waiting at the gate, and two wait in its queue.
    runs.wait_running(2, 20)
    kill_scheduler(sched)
    killed_at = time.monotonic()
    gate.open()  # they finish on the nodes while no scheduler is there

    # The client is told at once: its jobs end Abandoned, wait() and close() return.
    client.wait_line(lambda line: line.startswith("waited "), LOST_WITHIN)
    assert time.monotonic() - killed_at < LOST_WITHIN
    lost_jobs(client, sched, numbers)
    # A job submitted afterwards ends at once, the same way.
    late = json.loads(client.wait_line(lambda line: line.startswith("late "), 1)[5:])
    assert late[0] == DispyJob.Abandoned
    assert f"scheduler {LOOPBACK}:{sched.scheduler_port} lost" in late[1]
    assert recover_file.exists(), "the recover file stays for recover_jobs"
    wait_for(lambda: all(runs.ends()[n] == 1 for n in numbers[:3]), 20, "jobs end on nodes")
    runs.wait_running(1, 10)  # job 4, at its gate

    # Asked while no scheduler runs there: nothing is given up, the file stays.
    early = dispy.recover_jobs(str(recover_file), timeout=5)
    assert sorted(job.id for job in early) == numbers
    for job in early:
        assert job.status == DispyJob.Abandoned
        assert f"scheduler {LOOPBACK}:{sched.scheduler_port} could not be asked" in job.exception
    assert recover_file.exists()

    # Restarted on the same ports and store: it takes the results back from the nodes, the
    # ones they hold and job 4's when it ends (recover_jobs comes meanwhile).
    sched.start()
    threading.Timer(1.0, late_gate.open).start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    sched.wait_log(f"({sched_id}): 4 result(s) recovered from")
    check_recovered(recovered, numbers)
    assert not recover_file.exists()
    assert Counter(runs.starts()) == Counter({n: 1 for n in numbers})
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")

    # The nodes serve the restarted scheduler's new computations.
    later = [11, 12, 13, 14, 15, 16]
    fresh = shared_clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.3, None) for n in later],
        close=True,
    )
    finished_all(fresh, later)
    tags = {e.node for e in runs.executions() if e.n in later}
    assert tags == {"survivor-1", "survivor-2"}, f"nodes that ran the new jobs: {tags}"


def test_client_then_scheduler_killed_stored_and_held_results_all_come_back(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="twice")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    first, second = Gate(tmp_path / "first"), Gate(tmp_path / "second")
    recover_file = tmp_path / "twice.recover"
    numbers = [1, 2, 3, 4]
    client = shared_clients(
        sched,
        name="twice",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(first if n <= 2 else second)) for n in numbers],
    )
    kill_when_sent(client, recover_file, len(numbers))
    sched_id = sched_id_of(recover_file)
    first.open()
    # 1 and 2 end with their client gone: the scheduler stores them (and lets the nodes
    # forget them); 3 and 4 are on the nodes (one CPU each and one job sent ahead: at
    # least one waits at its gate, the other may wait behind it) when the scheduler dies.
    wait_for(
        lambda: len(results_in(store, sched_id)) == 2,
        30,
        lambda: f"2 results stored: {store_files(store)}",
    )
    runs.wait_running(1, 20)
    kill_scheduler(sched)
    second.open()
    wait_for(lambda: all(runs.ends()[n] == 1 for n in numbers), 20, "jobs end on the nodes")

    sched.start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in numbers})
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def test_scheduler_killed_jobs_it_had_not_placed_are_reported_never_run(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    # One CPU and one job sent ahead: of four jobs, two are on the node, two wait in the
    # scheduler (whose store keeps no job arguments) when it is killed.
    node = node_factory.one(cpus=1, name="narrow")
    store = tmp_path / "store"
    sched = scheduler_factory([node], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "narrow.recover"
    numbers = [1, 2, 3, 4]
    client = shared_clients(
        sched,
        name="narrow",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in numbers],
    )
    kill_when_sent(client, recover_file, len(numbers))
    runs.wait_running(1, 20)
    kill_scheduler(sched)
    gate.open()
    wait_for(lambda: sum(runs.ends().values()) == 2, 20, "the node's two jobs end")
    sched.start()
    recovered = {job.id: job for job in dispy.recover_jobs(str(recover_file), timeout=30)}
    ran = sorted(runs.ends())
    assert len(ran) == 2
    assert sorted(recovered) == numbers
    for n in numbers:
        job = recovered[n]
        if n in ran:
            assert job.status == DispyJob.Finished, (n, job.exception)
            assert job.result == expected(n)
        else:
            assert job.status == DispyJob.Abandoned
            assert "does not have this job (it never reached a node" in job.exception
            assert "killed before placing it" in job.exception
    time.sleep(1)
    assert sum(runs.starts().values()) == 2, "the restarted scheduler does not run them"
    assert not recover_file.exists()
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def test_two_computations_on_the_nodes_scheduler_killed_twice_nothing_lost(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = tagged_nodes(node_factory, "both", cpus=2)
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    plans = {"red": [1, 2], "blue": [11, 12]}
    started = {
        name: shared_clients(
            sched,
            name=name,
            recover_file=tmp_path / f"{name}.recover",
            log_dir=runs,
            jobs=[(n, 0.0, str(gate)) for n in numbers],
            close=True,
        )
        for name, numbers in plans.items()
    }
    for client in started.values():
        client.wait_line("submitted", 30)
    runs.wait_running(4, 20)  # both computations run on the nodes
    kill_scheduler(sched)
    gate.open()
    for name, client in started.items():
        lost_jobs(client, sched, plans[name])
    wait_for(lambda: sum(runs.ends().values()) == 4, 20, "all four end on the nodes")

    # Restarted, it takes every result from the nodes into its store; killed again before
    # anyone recovers them, the next run still has them all.
    sched.start()
    sched.wait_log("2 result(s) recovered from", count=len(plans))
    kill_scheduler(sched)
    sched.start()
    for name, numbers in plans.items():
        recovered = dispy.recover_jobs(str(tmp_path / f"{name}.recover"), timeout=30)
        check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in [1, 2, 11, 12]})
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
    later = [21, 22, 23, 24]
    fresh = shared_clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.3, None) for n in later],
        close=True,
    )
    finished_all(fresh, later)


def test_scheduler_restarted_a_job_longer_than_its_recovery_ends_cancelled_not_running(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    node = node_factory.one(cpus=1, name="long")
    store = tmp_path / "store"
    sched = scheduler_factory(
        [node], "--pulse_interval", "1", "--msg_timeout", "2", "--dest_path_prefix", str(store)
    )
    runs = ExecutionLog(tmp_path / "runs")
    never = Gate(tmp_path / "never")
    recover_file = tmp_path / "long.recover"
    client = shared_clients(
        sched,
        name="long",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, str(never))],
        close=True,
    )
    runs.wait_running(1, 20)
    kill_scheduler(sched)
    lost_jobs(client, sched, [1])
    sched.start()
    # The restarted scheduler waits --msg_timeout for it, then cancels it to have its node
    # back (PROTOCOL.md 13): the job ends Cancelled, never stays Running.
    [job] = dispy.recover_jobs(str(recover_file), timeout=20)
    assert job.status == DispyJob.Cancelled, (job.status, job.exception)
    assert not recover_file.exists()
    assert runs.ends()[1] == 0
    later = [5, 6]
    fresh = shared_clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.0, None) for n in later],
        close=True,
    )
    finished_all(fresh, later)


def test_a_node_down_while_the_scheduler_restarts_is_asked_again_later(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    node = node_factory.one(cpus=1, name="away")
    store = tmp_path / "store"
    sched = scheduler_factory([node], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "away.recover"
    client = shared_clients(
        sched,
        name="away",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, str(gate))],
        close=True,
    )
    runs.wait_running(1, 20)
    kill_scheduler(sched)
    lost_jobs(client, sched, [1])
    gate.open()
    wait_for(lambda: runs.ends()[1] == 1, 20, "job 1 ends on the node")
    node.wait_log("free again", timeout=20)  # its result is on the node's disk
    nemesis = Nemesis()
    nemesis.kill(node)
    sched.start()  # the node is down: it cannot be asked now
    sched.wait_log(f"cannot reach node {LOOPBACK}:{node.port}", timeout=20)

    # Asked meanwhile, the scheduler cannot answer for that node: nothing is given up.
    [early] = dispy.recover_jobs(str(recover_file), timeout=10)
    assert early.status == DispyJob.Abandoned
    assert f"node {LOOPBACK}:{node.port}" in early.exception
    assert recover_file.exists()

    # Back (the same port and disk), the node is asked again and the result comes.
    nemesis.restart(node)
    [job] = dispy.recover_jobs(str(recover_file), timeout=20)
    assert job.status == DispyJob.Finished, (job.status, job.exception)
    assert job.result == expected(1)
    assert not recover_file.exists()
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def test_scheduler_stopped_cleanly_keeps_what_its_gone_clients_had(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    a, b = node_factory(2, cpus=1, name="stopped")
    store = tmp_path / "store"
    sched = scheduler_factory([a, b], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    first, second = Gate(tmp_path / "first"), Gate(tmp_path / "second")
    recover_file = tmp_path / "stopped.recover"
    numbers = [1, 2, 3, 4]
    # Node a alone, one CPU and one job ahead: two of its four jobs are on the node and two
    # wait in the scheduler. Job 1 lasts long enough (0.1 s) for the queue on the node to
    # stay one job deep after it ends.
    client = shared_clients(
        sched,
        name="stopped",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.1, str(first))] + [(n, 0.0, str(second)) for n in numbers[1:]],
        options={"nodes": [list(a.address)]},
    )
    kill_when_sent(client, recover_file, len(numbers))
    sched_id = sched_id_of(recover_file)
    first.open()
    wait_for(lambda: len(results_in(store, sched_id)) == 1, 20, "job 1's result stored")
    # Job 2 runs on node a, job 3 waits there: job 4 certainly waits in the scheduler.
    runs.wait_running(1, 20)
    # ... and a client still there, its job running too (on node b: node a has no place).
    alive_file = tmp_path / "alive.recover"
    alive = shared_clients(
        sched,
        name="alive",
        recover_file=alive_file,
        log_dir=runs,
        jobs=[(7, 0.0, str(second))],
        close=True,
    )
    alive.wait_line("submitted", 30)
    wait_for(lambda: runs.starts()[7] == 1, 20, "job 7 runs")
    assert [runs.starts()[n] for n in numbers] == [1, 1, 0, 0]
    assert sched.stop() == 0  # SIGINT, as an operator's restart does
    # The job still queued in the scheduler went to node a at the stop.
    sched.wait_log(
        f"1 job(s) of its gone client queued here sent to node {a.address[0]}:{a.address[1]}",
        1,
    )
    # The client still there is told, and keeps its recover file.
    [(status, _result, exc)] = lost_jobs_told(alive, [7]).values()
    assert status == DispyJob.Abandoned
    assert "scheduler shutting down" in exc
    second.open()
    wait_for(lambda: all(runs.ends()[n] == 1 for n in [*numbers, 7]), 20, "jobs end on nodes")
    sched.start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    check_recovered(recovered, numbers)
    check_recovered(dispy.recover_jobs(str(alive_file), timeout=30), [7])
    assert Counter(runs.starts()) == Counter({n: 1 for n in [*numbers, 7]})
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def test_scheduler_killed_in_the_middle_of_many_jobs_every_job_that_ran_comes_back_once(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=2, name="midway")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    recover_file = tmp_path / "midway.recover"
    numbers = list(range(1, 301))
    client = shared_clients(
        sched,
        name="midway",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.01, None) for n in numbers],
        close=True,
    )
    wait_for(lambda: sum(runs.ends().values()) >= 30, 30, "30 jobs end")
    kill_scheduler(sched)
    told = lost_jobs_told(client, numbers)
    seen = {n for n, (status, _r, _e) in told.items() if status == DispyJob.Finished}
    for n in seen:
        assert tuple(told[n][1]) == expected(n)
    assert {status for status, _r, _e in told.values()} <= {
        DispyJob.Finished,
        DispyJob.Abandoned,
    }
    assert seen, "some results came before the kill"
    done_on_file = done_ids(recover_file)
    # Jobs running on the nodes at the kill end there; the restarted scheduler gets them.
    wait_for(lambda: not runs.running(), 20, "the nodes' jobs end")
    sched.start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    starts = runs.starts()
    assert all(count == 1 for count in starts.values()), "a job ran twice"
    finished = {job.id for job in recovered if job.status == DispyJob.Finished}
    for job in recovered:
        if job.status == DispyJob.Finished:
            assert job.result == expected(job.id)
        else:  # it was still queued in the scheduler: it never ran
            assert job.status == DispyJob.Abandoned, (job.id, job.status, job.exception)
            assert "killed before placing it" in str(job.exception)
            assert starts[job.id] == 0
    assert not finished & done_on_file, "a result recorded as done was recovered again"
    assert seen | finished == set(starts), "every job that ran came back"
    assert {job.id for job in recovered} == set(numbers) - done_on_file
    assert not recover_file.exists()
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
