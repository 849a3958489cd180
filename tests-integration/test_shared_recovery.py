"""Nothing is lost through the shared scheduler (issue 11; PROTOCOL.md 13, "Undeliverable
results", "Recovery", "Scheduler lost").

Real processes only: ``dispy-scheduler serve``, two ``dispy-node``s and real
``dispy.SharedJobCluster`` clients, each in its own process
(:func:`harness.shared_proc.shared_submitter`) so a test can ``kill -9`` it. Jobs are
:func:`harness.executions.recorded`, which leave a file per execution, so each test also
counts how often every job ran; gates (files the test creates) say exactly which jobs run
when a process is killed. ``dispy.recover_jobs`` runs in the test process.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness.client_proc import ClientProcess, recover_file_plan
from harness.executions import ExecutionLog, Gate, expected, recovery_problems
from harness.nemesis import Nemesis
from harness.polling import wait_for
from harness.ports import LOOPBACK, free_port
from harness.scheduler import SchedulerProcess
from harness.shared_proc import job_lines, seconds_of, shared_submitter

import dispy
from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)

# A client whose scheduler vanished must know within a few seconds (the connection breaks
# at once on loopback), not after a silence timeout.
LOST_WITHIN = 5.0


@pytest.fixture
def clients(tmp_path: Path, cluster_secret: str) -> Any:
    """Start SharedJobCluster client processes; kill them at the end and show their output."""
    started: list[ClientProcess] = []

    def start(sched: SchedulerProcess, **kwargs: Any) -> ClientProcess:
        name = kwargs.pop("name", f"client{len(started) + 1}")
        kwargs.setdefault("secret", cluster_secret)
        client = shared_submitter(
            tmp_path / name, scheduler_port=sched.scheduler_port, name=name, **kwargs
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()
        print(f"----- {client.name} stdout:\n" + "\n".join(client.lines()))
        print(f"----- {client.name} stderr:\n{client.stderr_text()}")


def _tagged_nodes(node_factory: Any, name: str, cpus: int) -> list[Any]:
    """Two nodes whose jobs know which node ran them (``NODE_TAG``, the node's name)."""
    nodes = [
        node_factory.one(cpus=cpus, name=f"{name}-{i}", env={"NODE_TAG": f"{name}-{i}"}, wait=False)
        for i in (1, 2)
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def _store_files(store: Path) -> list[str]:
    """Every file in the scheduler's store, relative to it."""
    out = []
    for folder, _dirs, names in os.walk(store):
        out += [os.path.relpath(os.path.join(folder, name), store) for name in names]
    return sorted(out)


def _sched_id(recover_file: Path) -> int:
    return int(recover_file_plan(recover_file)["header"]["sched_id"])


def _kill_when_sent(client: ClientProcess, recover_file: Path, count: int) -> None:
    """Once the recover file lists ``count`` jobs sent to the scheduler, ``kill -9`` it."""
    client.wait_line("submitted", 30)
    wait_for(
        lambda: len(set(recover_file_plan(recover_file)["sent"])) >= count,
        10,
        lambda: (
            f"the recover file should list {count} jobs sent: {recover_file_plan(recover_file)}"
        ),
    )
    client.kill()


def _check_recovered(recovered: list[DispyJob], numbers: list[int]) -> None:
    problems = recovery_problems(numbers, [], recovered, allow_redelivery=False)
    assert not problems, "\n".join(problems)
    assert sorted(job.id for job in recovered) == sorted(numbers)


def _finished_all(client: ClientProcess, numbers: list[int]) -> None:
    seconds_of(client, "closed", 60)
    results = job_lines(client)
    assert sorted(results) == sorted(numbers), client.lines()
    for n in numbers:
        status, result, exc = results[n]
        assert status == DispyJob.Finished, (n, status, exc)
        assert tuple(result) == expected(n)


def test_client_killed_its_jobs_run_on_and_are_recovered_through_the_scheduler(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="kept")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate_a, gate_b = Gate(tmp_path / "gate-a"), Gate(tmp_path / "gate-b")
    victim_file = tmp_path / "victim.recover"
    # 6 jobs on 2 CPUs: some run, the others wait in the scheduler when the client dies.
    victim_jobs = list(range(1, 7))
    victim = clients(
        sched,
        name="victim",
        recover_file=victim_file,
        log_dir=runs,
        jobs=[(n, 0.5, str(gate_a)) for n in victim_jobs],
    )
    bystander_jobs = list(range(101, 105))
    bystander = clients(
        sched,
        name="bystander",
        recover_file=tmp_path / "bystander.recover",
        log_dir=runs,
        jobs=[(n, 0.1, str(gate_b)) for n in bystander_jobs],
        close=True,
    )
    bystander.wait_line("submitted", 30)
    runs.wait_running(2, 20)
    _kill_when_sent(victim, victim_file, len(victim_jobs))
    sched_id = _sched_id(victim_file)
    gate_a.open()
    gate_b.open()

    # The bystander was not disturbed: every result, then a clean close.
    _finished_all(bystander, bystander_jobs)
    # The scheduler runs every job of the dead client, queued ones too, each once; what
    # ended is in its store, the rest comes to recover_jobs as it ends.
    recovered = dispy.recover_jobs(str(victim_file), timeout=30)
    _check_recovered(recovered, victim_jobs)
    assert Counter(runs.starts()) == Counter({n: 1 for n in victim_jobs + bystander_jobs})
    assert not victim_file.exists(), "recover_jobs got every job: its file is removed"
    # The scheduler forgot the computation once recover_jobs had every result.
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")
    assert not (store / str(sched_id)).exists()


def _lost_jobs_told(client: ClientProcess, numbers: list[int]) -> dict[int, Any]:
    """What a client whose scheduler went away printed of its jobs, once it closed."""
    seconds_of(client, "closed", LOST_WITHIN + 20)
    results = job_lines(client)
    assert sorted(results) == sorted(numbers), client.lines()
    return results


def _lost_jobs(client: ClientProcess, sched: SchedulerProcess, numbers: list[int]) -> None:
    """The client of a vanished scheduler: every unfinished job Abandoned, naming it."""
    waited = seconds_of(client, "waited", LOST_WITHIN + 5)
    closed = seconds_of(client, "closed", 20)
    assert closed < 5, f"close() took {closed} s after the scheduler was lost"
    assert client.wait(10) == 0
    results = job_lines(client)
    assert sorted(results) == sorted(numbers), client.lines()
    lost = f"scheduler {LOOPBACK}:{sched.scheduler_port} lost"
    for n in numbers:
        status, _result, exc = results[n]
        assert status == DispyJob.Abandoned, (n, status, exc)
        assert exc is not None, n
        assert lost in exc, exc
    log = client.stderr_text()
    assert f"dispy ERROR: {lost}" in log, log
    assert waited < 60


def test_scheduler_killed_results_come_back_through_the_restarted_one(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = _tagged_nodes(node_factory, "survivor", cpus=2)
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate, late_gate = Gate(tmp_path / "gate"), Gate(tmp_path / "late-gate")
    recover_file = tmp_path / "orphan.recover"
    numbers = [1, 2, 3, 4]
    client = clients(
        sched,
        name="orphan",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.1, str(gate)) for n in numbers[:3]] + [(4, 0.1, str(late_gate))],
        close=True,
        late=True,
    )
    client.wait_line("submitted", 30)
    sched_id = _sched_id(recover_file)
    # Submitted before the nodes are ready, all four go to the first one ready (2 CPUs and
    # 2 sent ahead): two run there, waiting at the gate, and two wait in its queue.
    runs.wait_running(2, 20)
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
    killed_at = time.monotonic()
    gate.open()  # they finish on the nodes while no scheduler is there

    # The client is told at once: its jobs end Abandoned, wait() and close() return.
    client.wait_line(lambda line: line.startswith("waited "), LOST_WITHIN)
    assert time.monotonic() - killed_at < LOST_WITHIN
    _lost_jobs(client, sched, numbers)
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
    _check_recovered(recovered, numbers)
    assert not recover_file.exists()
    assert Counter(runs.starts()) == Counter({n: 1 for n in numbers})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")

    # The nodes serve the restarted scheduler's new computations.
    later = [11, 12, 13, 14, 15, 16]
    fresh = clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.3, None) for n in later],
        close=True,
    )
    _finished_all(fresh, later)
    tags = {e.node for e in runs.executions() if e.n in later}
    assert tags == {"survivor-1", "survivor-2"}, f"nodes that ran the new jobs: {tags}"


def test_client_then_scheduler_killed_stored_and_held_results_all_come_back(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="twice")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    first, second = Gate(tmp_path / "first"), Gate(tmp_path / "second")
    recover_file = tmp_path / "twice.recover"
    numbers = [1, 2, 3, 4]
    client = clients(
        sched,
        name="twice",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(first if n <= 2 else second)) for n in numbers],
    )
    _kill_when_sent(client, recover_file, len(numbers))
    sched_id = _sched_id(recover_file)
    first.open()
    # 1 and 2 end with their client gone: the scheduler stores them (and lets the nodes
    # forget them); 3 and 4 are on the nodes (one CPU each and one job sent ahead: at
    # least one waits at its gate, the other may wait behind it) when the scheduler dies.
    wait_for(
        lambda: len(_results_in(store, sched_id)) == 2,
        30,
        lambda: f"2 results stored: {_store_files(store)}",
    )
    runs.wait_running(1, 20)
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
    second.open()
    wait_for(lambda: all(runs.ends()[n] == 1 for n in numbers), 20, "jobs end on the nodes")

    sched.start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    _check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in numbers})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")


def _results_in(store: Path, sched_id: int) -> list[str]:
    return [p for p in _store_files(store) if p.startswith(f".dispy-results/{sched_id}/")]


def test_clean_empties_the_store_at_start_and_without_it_results_stay(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="cleaned")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "gone.recover"
    numbers = [1, 2, 3]
    client = clients(
        sched,
        name="gone",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in numbers],
    )
    _kill_when_sent(client, recover_file, len(numbers))
    sched_id = _sched_id(recover_file)
    gate.open()
    # The client is gone: the scheduler keeps every result in its store.
    wait_for(
        lambda: len(_results_in(store, sched_id)) == len(numbers),
        30,
        lambda: f"3 results stored: {_store_files(store)}",
    )
    kept = _store_files(store)

    # A restart without --clean keeps them (and a recover_jobs would get them) ...
    assert sched.stop() == 0
    sched.start()
    sched.wait_log(f"({sched_id}) left by a previous run")
    sched.wait_log(f"({sched_id}): 0 result(s) recovered from")  # the nodes had none left
    assert _store_files(store) == kept
    # ... one with --clean removes them, and says so.
    assert sched.stop() == 0
    sched.extra_args.append("--clean")
    sched.start()
    sched.wait_log(
        f"--clean: emptied the scheduler's store {store} (1 computation record(s) and "
        f"{len(numbers)} kept result(s) of previous runs removed)"
    )
    assert _store_files(store) == []
    assert sched.log_count(f"({sched_id}) left by a previous run") == 1
    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    assert sorted(job.id for job in recovered) == numbers
    for job in recovered:
        assert job.status == DispyJob.Abandoned, (job.id, job.status, job.exception)
        assert "does not have this job" in str(job.exception)
        assert "--clean" in str(job.exception)


def test_no_scheduler_there_one_clear_error_at_once(cluster_secret):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(dispy.SchedulerError) as caught:
        dispy.SharedJobCluster(
            expected,
            scheduler_node=LOOPBACK,
            scheduler_port=port,
            port=0,
            secret=cluster_secret,
        )
    took = time.monotonic() - started
    assert took < 5, f"SharedJobCluster() took {took:.1f} s to fail"
    text = str(caught.value)
    assert f"{LOOPBACK}:{port}" in text
    assert "connection refused" in text
    assert "secret" in text
    assert "TLS" in text
    assert "--cluster_secret" in text
    assert not list(Path.cwd().glob("_dispy_*")), "no recover file for a cluster never opened"


def test_recover_in_two_steps_then_terminate_pending(
    node_factory, scheduler_factory, clients, tmp_path
):
    # One node with 2 CPUs: 1 ends at once, then 2 and 3 run side by side (none waits
    # behind a gated job in a node's queue).
    node = node_factory.one(cpus=2, name="steps")
    store = tmp_path / "store"
    sched = scheduler_factory([node], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate, never = Gate(tmp_path / "gate"), Gate(tmp_path / "never")
    recover_file = tmp_path / "steps.recover"
    client = clients(
        sched,
        name="steps",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, None), (2, 0.0, str(gate)), (3, 0.0, str(never))],
    )
    _kill_when_sent(client, recover_file, 3)
    sched_id = _sched_id(recover_file)
    wait_for(lambda: runs.ends()[1] == 1, 20, "job 1 ends")
    runs.wait_running(2, 20)

    # First: job 1's result; 2 and 3 still run and stay on record for a later call.
    first = {job.id: job for job in dispy.recover_jobs(str(recover_file), timeout=1)}
    assert sorted(first) == [1, 2, 3]
    assert first[1].status == DispyJob.Finished
    assert first[1].result == expected(1)
    assert first[2].status == DispyJob.Running
    assert first[3].status == DispyJob.Running
    assert recover_file.exists(), "jobs still running: the file stays"

    # Then: job 2 ends and comes back; job 3 is cancelled when the timeout passes.
    gate.open()
    second = {job.id: job for job in dispy.recover_jobs(str(recover_file), 3, True)}
    assert sorted(second) == [2, 3], "job 1 was recovered once only"
    assert second[2].status == DispyJob.Finished
    assert second[2].result == expected(2)
    assert second[3].status in (DispyJob.Cancelled, DispyJob.Terminated), second[3].exception
    assert not recover_file.exists()
    assert runs.ends()[3] == 0
    assert Counter(runs.starts()) == Counter({1: 1, 2: 1, 3: 1})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")
    sched.wait_log(f"computation recorded ({sched_id}) done")


def test_a_port_that_never_answers_fails_within_msg_timeout(cluster_secret):
    # Something listens there (the kernel completes the connection) but never speaks.
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(dispy.SchedulerError) as caught:
            dispy.SharedJobCluster(
                expected,
                scheduler_node=LOOPBACK,
                scheduler_port=port,
                port=0,
                secret=cluster_secret,
                msg_timeout=2,
            )
        took = time.monotonic() - started
    assert took < 8, f"SharedJobCluster() took {took:.1f} s to fail"
    text = str(caught.value)
    assert f"{LOOPBACK}:{port}" in text
    assert "no answer within msg_timeout (2 s)" in text


def test_client_killed_while_waiting_for_its_turn_its_jobs_run_when_it_comes(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="turns")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    alone = clients(
        sched,
        name="alone",
        recover_file=tmp_path / "alone.recover",
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in (101, 102)],
        close=True,
        options={"exclusive": True},
    )
    alone.wait_line("submitted", 30)
    runs.wait_running(1, 20)
    recover_file = tmp_path / "waiter.recover"
    numbers = [1, 2, 3]
    waiter = clients(
        sched,
        name="waiter",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, None) for n in numbers],
    )
    _kill_when_sent(waiter, recover_file, len(numbers))
    assert not any(runs.starts()[n] for n in numbers), "it waits for the exclusive one"
    gate.open()
    _finished_all(alone, [101, 102])
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    _check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in [*numbers, 101, 102]})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")


def test_scheduler_killed_jobs_it_had_not_placed_are_reported_never_run(
    node_factory, scheduler_factory, clients, tmp_path
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
    client = clients(
        sched,
        name="narrow",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in numbers],
    )
    _kill_when_sent(client, recover_file, len(numbers))
    runs.wait_running(1, 20)
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
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
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")


def test_two_computations_on_the_nodes_scheduler_killed_twice_nothing_lost(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = _tagged_nodes(node_factory, "both", cpus=2)
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    plans = {"red": [1, 2], "blue": [11, 12]}
    started = {
        name: clients(
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
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
    gate.open()
    for name, client in started.items():
        _lost_jobs(client, sched, plans[name])
    wait_for(lambda: sum(runs.ends().values()) == 4, 20, "all four end on the nodes")

    # Restarted, it takes every result from the nodes into its store; killed again before
    # anyone recovers them, the next run still has them all.
    sched.start()
    sched.wait_log("2 result(s) recovered from", count=len(plans))
    sched.kill()
    sched.proc.wait(10)
    sched.start()
    for name, numbers in plans.items():
        recovered = dispy.recover_jobs(str(tmp_path / f"{name}.recover"), timeout=30)
        _check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in [1, 2, 11, 12]})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")
    later = [21, 22, 23, 24]
    fresh = clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.3, None) for n in later],
        close=True,
    )
    _finished_all(fresh, later)


def test_client_killed_with_nothing_submitted_leaves_nothing_behind(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="idle")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    recover_file = tmp_path / "idle.recover"
    client = clients(
        sched, name="idle", recover_file=recover_file, log_dir=tmp_path / "runs", jobs=[]
    )
    client.wait_line("submitted", 30)
    sched_id = _sched_id(recover_file)
    sched.wait_log("ready for recorded", count=2)
    client.kill()
    # Nothing to keep: the computation ends on the nodes and its record goes.
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")
    sched.wait_log(f"computation recorded ({sched_id}) done")
    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    assert recovered == []
    assert not recover_file.exists()


def test_scheduler_restarted_a_job_longer_than_its_recovery_ends_cancelled_not_running(
    node_factory, scheduler_factory, clients, tmp_path
):
    node = node_factory.one(cpus=1, name="long")
    store = tmp_path / "store"
    sched = scheduler_factory(
        [node], "--pulse_interval", "1", "--msg_timeout", "2", "--dest_path_prefix", str(store)
    )
    runs = ExecutionLog(tmp_path / "runs")
    never = Gate(tmp_path / "never")
    recover_file = tmp_path / "long.recover"
    client = clients(
        sched,
        name="long",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, str(never))],
        close=True,
    )
    runs.wait_running(1, 20)
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
    _lost_jobs(client, sched, [1])
    sched.start()
    # The restarted scheduler waits --msg_timeout for it, then cancels it to have its node
    # back (PROTOCOL.md 13): the job ends Cancelled, never stays Running.
    [job] = dispy.recover_jobs(str(recover_file), timeout=20)
    assert job.status == DispyJob.Cancelled, (job.status, job.exception)
    assert not recover_file.exists()
    assert runs.ends()[1] == 0
    later = [5, 6]
    fresh = clients(
        sched,
        name="fresh",
        recover_file=tmp_path / "fresh.recover",
        log_dir=runs,
        jobs=[(n, 0.0, None) for n in later],
        close=True,
    )
    _finished_all(fresh, later)


def test_a_node_down_while_the_scheduler_restarts_is_asked_again_later(
    node_factory, scheduler_factory, clients, tmp_path
):
    node = node_factory.one(cpus=1, name="away")
    store = tmp_path / "store"
    sched = scheduler_factory([node], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "away.recover"
    client = clients(
        sched,
        name="away",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, str(gate))],
        close=True,
    )
    runs.wait_running(1, 20)
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)
    _lost_jobs(client, sched, [1])
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
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")


def test_scheduler_stopped_cleanly_keeps_what_its_gone_clients_had(
    node_factory, scheduler_factory, clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="stopped")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    first, second = Gate(tmp_path / "first"), Gate(tmp_path / "second")
    recover_file = tmp_path / "stopped.recover"
    numbers = [1, 2, 3]
    client = clients(
        sched,
        name="stopped",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, str(first)), (2, 0.0, str(second)), (3, 0.0, str(second))],
    )
    _kill_when_sent(client, recover_file, len(numbers))
    sched_id = _sched_id(recover_file)
    first.open()
    wait_for(lambda: len(_results_in(store, sched_id)) == 1, 20, "job 1's result stored")
    # ... and a client still there, its job running too.
    alive_file = tmp_path / "alive.recover"
    alive = clients(
        sched,
        name="alive",
        recover_file=alive_file,
        log_dir=runs,
        jobs=[(7, 0.0, str(second))],
        close=True,
    )
    alive.wait_line("submitted", 30)
    wait_for(lambda: runs.starts()[7] == 1, 20, "job 7 runs")
    assert sched.stop() == 0  # SIGINT, as an operator's restart does
    # The client still there is told, and keeps its recover file.
    [(status, _result, exc)] = _lost_jobs_told(alive, [7]).values()
    assert status == DispyJob.Abandoned
    assert "scheduler shutting down" in exc
    second.open()
    sched.start()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    _check_recovered(recovered, numbers)
    _check_recovered(dispy.recover_jobs(str(alive_file), timeout=30), [7])
    assert Counter(runs.starts()) == Counter({n: 1 for n in [*numbers, 7]})
    wait_for(lambda: not _store_files(store), 10, lambda: f"store: {_store_files(store)}")
