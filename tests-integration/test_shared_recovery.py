"""Nothing is lost through the shared scheduler when a client dies (issue 11; PROTOCOL.md
13, "Undeliverable results", "Recovery", "Scheduler lost").

Real processes only: ``dispy-scheduler serve``, real ``dispy-node``s and real
``dispy.SharedJobCluster`` clients, each in its own process
(:func:`harness.shared_proc.shared_submitter`) so a test can ``kill -9`` it. Jobs are
:func:`harness.executions.recorded`, which leave a file per execution, so each test also
counts how often every job ran; gates (files the test creates) say exactly which jobs run
when a process is killed. ``dispy.recover_jobs`` runs in the test process. The scheduler
killed, stopped and restarted: test_shared_scheduler_restart.py.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from harness.executions import ExecutionLog, Gate, expected
from harness.polling import wait_for
from harness.ports import LOOPBACK, free_port
from harness.shared_recovery import (
    check_recovered,
    done_ids,
    finished_all,
    kill_when_sent,
    results_in,
    sched_id_of,
    store_files,
)

import dispy
from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)


def test_client_killed_its_jobs_run_on_and_are_recovered_through_the_scheduler(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="kept")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate_a, gate_b = Gate(tmp_path / "gate-a"), Gate(tmp_path / "gate-b")
    victim_file = tmp_path / "victim.recover"
    # 6 jobs on 2 CPUs: some run, the others wait in the scheduler when the client dies.
    victim_jobs = list(range(1, 7))
    victim = shared_clients(
        sched,
        name="victim",
        recover_file=victim_file,
        log_dir=runs,
        jobs=[(n, 0.5, str(gate_a)) for n in victim_jobs],
    )
    bystander_jobs = list(range(101, 105))
    bystander = shared_clients(
        sched,
        name="bystander",
        recover_file=tmp_path / "bystander.recover",
        log_dir=runs,
        jobs=[(n, 0.1, str(gate_b)) for n in bystander_jobs],
        close=True,
    )
    bystander.wait_line("submitted", 30)
    runs.wait_running(2, 20)
    kill_when_sent(victim, victim_file, len(victim_jobs))
    sched_id = sched_id_of(victim_file)
    gate_a.open()
    gate_b.open()

    # The bystander was not disturbed: every result, then a clean close.
    finished_all(bystander, bystander_jobs)
    # The scheduler runs every job of the dead client, queued ones too, each once; what
    # ended is in its store, the rest comes to recover_jobs as it ends.
    recovered = dispy.recover_jobs(str(victim_file), timeout=30)
    check_recovered(recovered, victim_jobs)
    assert Counter(runs.starts()) == Counter({n: 1 for n in victim_jobs + bystander_jobs})
    assert not victim_file.exists(), "recover_jobs got every job: its file is removed"
    # The scheduler forgot the computation once recover_jobs had every result.
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
    assert not (store / str(sched_id)).exists()


def test_clean_empties_the_store_at_start_and_without_it_results_stay(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="cleaned")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "gone.recover"
    numbers = [1, 2, 3]
    client = shared_clients(
        sched,
        name="gone",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in numbers],
    )
    kill_when_sent(client, recover_file, len(numbers))
    sched_id = sched_id_of(recover_file)
    gate.open()
    # The client is gone: the scheduler keeps every result in its store.
    wait_for(
        lambda: len(results_in(store, sched_id)) == len(numbers),
        30,
        lambda: f"3 results stored: {store_files(store)}",
    )
    kept = store_files(store)

    # A restart without --clean keeps them (and a recover_jobs would get them) ...
    assert sched.stop() == 0
    sched.start()
    sched.wait_log(f"({sched_id}) left by a previous run")
    sched.wait_log(f"({sched_id}): 0 result(s) recovered from")  # the nodes had none left
    assert store_files(store) == kept
    # ... one with --clean removes them, and says so.
    assert sched.stop() == 0
    sched.extra_args.append("--clean")
    sched.start()
    sched.wait_log(
        f"--clean: emptied the scheduler's store {store} (1 computation record(s) and "
        f"{len(numbers)} kept result(s) of previous runs removed)"
    )
    assert store_files(store) == []
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
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    # One node with 2 CPUs: 1 ends at once, then 2 and 3 run side by side (none waits
    # behind a gated job in a node's queue).
    node = node_factory.one(cpus=2, name="steps")
    store = tmp_path / "store"
    sched = scheduler_factory([node], "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate, never = Gate(tmp_path / "gate"), Gate(tmp_path / "never")
    recover_file = tmp_path / "steps.recover"
    client = shared_clients(
        sched,
        name="steps",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(1, 0.0, None), (2, 0.0, str(gate)), (3, 0.0, str(never))],
    )
    kill_when_sent(client, recover_file, 3)
    sched_id = sched_id_of(recover_file)
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
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
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
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="turns")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    alone = shared_clients(
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
    waiter = shared_clients(
        sched,
        name="waiter",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, None) for n in numbers],
    )
    kill_when_sent(waiter, recover_file, len(numbers))
    assert not any(runs.starts()[n] for n in numbers), "it waits for the exclusive one"
    gate.open()
    finished_all(alone, [101, 102])
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    check_recovered(recovered, numbers)
    assert Counter(runs.starts()) == Counter({n: 1 for n in [*numbers, 101, 102]})
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def test_client_killed_with_nothing_submitted_leaves_nothing_behind(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=1, name="idle")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    recover_file = tmp_path / "idle.recover"
    client = shared_clients(
        sched, name="idle", recover_file=recover_file, log_dir=tmp_path / "runs", jobs=[]
    )
    client.wait_line("submitted", 30)
    sched_id = sched_id_of(recover_file)
    sched.wait_log("ready for recorded", count=2)
    client.kill()
    # Nothing to keep: the computation ends on the nodes and its record goes.
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
    sched.wait_log(f"computation recorded ({sched_id}) done")
    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    assert recovered == []
    assert not recover_file.exists()


def test_client_killed_in_the_middle_of_many_jobs_each_runs_once_and_is_recovered_once(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    nodes = node_factory(2, cpus=2, name="many")
    store = tmp_path / "store"
    sched = scheduler_factory(nodes, "--pulse_interval", "1", "--dest_path_prefix", str(store))
    runs = ExecutionLog(tmp_path / "runs")
    recover_file = tmp_path / "many.recover"
    numbers = list(range(1, 301))
    client = shared_clients(
        sched,
        name="many",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.01, None) for n in numbers],
    )
    # Killed while results flow back and jobs still wait: some results reached the
    # client (and are done in its file), the others are the scheduler's to keep.
    wait_for(lambda: sum(runs.ends().values()) >= 30, 30, "30 jobs end")
    client.kill()
    done_on_file = done_ids(recover_file)
    recovered = dispy.recover_jobs(str(recover_file), timeout=60)
    seen = [int(line.split()[1]) for line in client.lines() if line.startswith("done ")]
    starts = runs.starts()
    assert all(count == 1 for count in starts.values()), "a job ran twice"
    finished = [job for job in recovered if job.status == DispyJob.Finished]
    for job in finished:
        assert job.result == expected(job.id)
    others = [job for job in recovered if job.status != DispyJob.Finished]
    # A job the scheduler never got (the kill cut its frame) never ran; nothing else fails.
    for job in others:
        assert job.status == DispyJob.Abandoned, (job.id, job.status, job.exception)
        assert "does not have this job" in str(job.exception)
        assert starts[job.id] == 0
    assert len(seen) == len(set(seen)), "the client saw a job end twice"
    recovered_ids = [job.id for job in recovered]
    assert len(recovered_ids) == len(set(recovered_ids)), "a job recovered twice"
    # At least once across the crash: a result the client had but had not yet recorded as
    # done (the kill came between the two) is recovered again, and only such a one.
    again = set(seen) & {job.id for job in finished}
    assert not again & done_on_file, "a result recorded as done was recovered again"
    got = set(seen) | {job.id for job in finished}
    assert got | {job.id for job in others} == set(numbers)
    assert set(got) == set(starts), "every job that ran came back, once"
    assert not recover_file.exists()
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_client_killed_recovered_over_tls_to_the_scheduler(
    node_factory, scheduler_factory, shared_clients, tmp_path
):
    cert, key = _certificate(tmp_path, "clients")
    nodes = node_factory(2, cpus=1, name="sealed")
    store = tmp_path / "store"
    sched = scheduler_factory(
        nodes,
        "--pulse_interval", "1", "--dest_path_prefix", str(store),
        "--cluster_certfile", str(cert), "--cluster_keyfile", str(key),
    )  # fmt: skip
    runs = ExecutionLog(tmp_path / "runs")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "sealed.recover"
    numbers = [1, 2, 3]
    client = shared_clients(
        sched,
        name="sealed",
        recover_file=recover_file,
        log_dir=runs,
        jobs=[(n, 0.0, str(gate)) for n in numbers],
        options={"certfile": str(cert), "keyfile": str(key)},
    )
    kill_when_sent(client, recover_file, len(numbers))
    gate.open()
    # The recover file names the TLS files: recover_jobs uses them toward the scheduler.
    check_recovered(dispy.recover_jobs(str(recover_file), timeout=30), numbers)
    wait_for(lambda: not store_files(store), 10, lambda: f"store: {store_files(store)}")
