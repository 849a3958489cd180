"""Client crashes and ``dispy.recover_jobs`` (client.txt "(Fault) Recover Jobs"; issue 4).

The client is a real process (:func:`harness.client_proc.submitter`) killed with SIGKILL once
the recover file says where its jobs went; recovery runs in the test process. Jobs are
:func:`harness.executions.recorded`, which leave one file per execution, so every test also
checks how often each job ran on the nodes. The history of a crashed client is what it
printed before dying plus what recovery returned (:func:`recovery_problems`): every job ends
exactly once across the two, Finished with the pure function of its arguments and its
stdout.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from harness import History, free_port, wait_for
from harness.client_proc import ClientProcess, done_lines, recover_file_plan, submitter
from harness.executions import (
    ExecutionLog,
    Gate,
    expected,
    recorded,
    recovery_problems,
)
from harness.nemesis import Nemesis

import dispy
from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)

WARMUP = (100, 101, 102, 103)


@pytest.fixture
def clients(tmp_path, secret):
    """Start :func:`submitter` clients; kill them at the end and show their output."""
    started: list[ClientProcess] = []

    def start(**kwargs):
        kwargs.setdefault("secret", secret)
        name = kwargs.pop("name", f"client{len(started) + 1}")
        client = submitter(tmp_path / name, name=name, **kwargs)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()
        print(f"----- {client.name} stdout:\n" + "\n".join(client.lines()))
        print(f"----- {client.name} stderr:\n{client.stderr_text()}")


@pytest.fixture
def nemesis(node_factory):
    """Set up after the nodes, so paused processes are resumed before the nodes stop."""
    chaos = Nemesis()
    yield chaos
    chaos.heal()
    print("nemesis: " + "; ".join(chaos.log))


def _kill_when_sent(client: ClientProcess, recover_file: Path, count: int) -> list[int]:
    """Once ``count`` jobs are logged as sent to nodes, kill -9 the client.

    Returns the jobs the client saw end before it died.
    """
    client.wait_line("submitted", 30)
    wait_for(
        lambda: len(set(recover_file_plan(recover_file)["sent"])) >= count,
        10,
        lambda: (
            f"the recover file should list {count} jobs sent: {recover_file_plan(recover_file)}"
        ),
    )
    client.kill()
    return [n for n, _ in done_lines(client)]


def _results_dir(node, recover_file: Path) -> Path:
    comp_id = recover_file_plan(recover_file)["header"]["comp_id"]
    return node.dest_path_prefix / ".dispy-results" / str(comp_id)


def _stored(node, recover_file: Path) -> int:
    folder = _results_dir(node, recover_file)
    try:
        return sum(1 for name in os.listdir(folder) if name.endswith(".result"))
    except FileNotFoundError:
        return 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _free_and_serving(node, cluster_factory, log: ExecutionLog, timeout: float = 20) -> None:
    """A new cluster gets ``node`` and a job runs there: the node is free."""
    history = History()
    cluster = cluster_factory(
        recorded, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    job = history.submit(cluster, 500, str(log))
    assert job.finish.wait(timeout), (
        f"a new cluster did not get node {node.name} within {timeout:g} s "
        f"(the cluster has {cluster.nodes()}); is it still busy?"
    )
    assert job.status == DispyJob.Finished, job.exception
    cluster.close()
    history.check(expected, allowed={DispyJob.Finished})


def test_kill_client_then_recover_every_job(node_factory, cluster_factory, clients, tmp_path):
    """client.txt: recover_jobs "inquires nodes about jobs, retrieves results of jobs, waiting
    until they are all finished ... also releases the nodes"."""
    node = node_factory.one(cpus=2, name="keeper")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 0.4 + (n % 3) * 0.4, None) for n in range(8)]
    client = clients(
        nodes=[node.address],
        recover_file=recover_file,
        log_dir=log,
        jobs=jobs,
        warmup=WARMUP,
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    node.wait_log("is gone", 10)  # the node noticed: jobs go on, results are kept

    started = time.monotonic()
    recovered = dispy.recover_jobs(str(recover_file), timeout=30)
    took = time.monotonic() - started
    submitted = [n for n, _, _ in jobs] + list(WARMUP)
    problems = recovery_problems(submitted, seen, recovered)
    assert not problems, "\n".join(problems)
    assert {j.result[0] for j in recovered} >= {n for n, _, _ in jobs} - set(seen)
    assert took < 15, f"recover_jobs took {took:.1f} s for ~5 s of jobs"
    # Every job ran exactly once: the crash reran nothing.
    assert log.starts() == Counter(submitted), log.executions()
    assert log.ends() == Counter(submitted)
    assert not os.path.exists(recover_file), "a completed recovery removes the recover file"

    node.wait_log("free again", 10)
    _free_and_serving(node, cluster_factory, log)


def test_recover_with_timeout_then_again(node_factory, clients, tmp_path):
    """recover_jobs(timeout=...) returns the finished jobs and leaves the others Running; a
    later call gets the rest, and never turns a job it returned before into a failure (it
    used to report them Abandoned: nothing recorded that they had been delivered)."""
    node = node_factory.one(cpus=2, name="patient")
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(0, 0.1, None), (1, 0.1, None), (2, 0, str(gate)), (3, 0, str(gate))]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    node.wait_log("is gone", 10)
    wait_for(lambda: log.ends()[0] and log.ends()[1], 10, "jobs 0 and 1 should end")
    log.wait_running(2, 10)

    started = time.monotonic()
    first = dispy.recover_jobs(str(recover_file), timeout=1.5)
    took = time.monotonic() - started
    assert 1.4 <= took < 5, f"recover_jobs(timeout=1.5) took {took:.1f} s"
    running = [j for j in first if j.status == DispyJob.Running]
    finished = [j for j in first if j.status == DispyJob.Finished]
    assert len(running) == 2, [(j, j.exception) for j in first]
    assert len(finished) == 2, [(j, j.exception) for j in first]
    assert sorted(j.result[0] for j in finished) == [0, 1]
    assert not recovery_problems([0, 1], [], finished)
    for job in running:
        assert job.result is None
        assert not job.finish.is_set()
    assert os.path.exists(recover_file), "jobs still running: the recover file must stay"

    gate.open()
    wait_for(lambda: log.ends()[2] and log.ends()[3], 10, "the gated jobs should end")
    second = dispy.recover_jobs(str(recover_file), timeout=20)
    done_second = [j for j in second if j.status == DispyJob.Finished]
    assert {j.result[0] for j in done_second} >= {2, 3}, [(j, j.exception) for j in second]
    # Returning jobs 0 and 1 again would be allowed, but not as Abandoned or with another
    # result.
    problems = recovery_problems([0, 1, 2, 3, *WARMUP], seen, second)
    problems = [p for p in problems if "neither seen" not in p]  # 0, 1 came the first time
    assert not problems, "\n".join(problems)
    assert log.starts() == Counter([0, 1, 2, 3, *WARMUP])
    node.wait_log("free again", 10)


def test_recover_terminate_pending(node_factory, cluster_factory, clients, tmp_path):
    """terminate_pending=True: jobs not done at the timeout end Cancelled on the node (their
    processes are killed); finished ones come back with their results; the node is free."""
    node = node_factory.one(cpus=2, name="terminator")
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")  # never opened: these jobs run until cancelled
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(0, 0.1, None), (1, 0.1, None), (2, 0, str(gate)), (3, 0, str(gate)), (4, 0, str(gate))]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    node.wait_log("is gone", 10)
    wait_for(lambda: log.ends()[0] and log.ends()[1], 10, "jobs 0 and 1 should end")
    log.wait_running(2, 10)
    pids = [e.pid for e in log.running()]

    recovered = dispy.recover_jobs(str(recover_file), timeout=0.5, terminate_pending=True)
    assert Counter(j.status for j in recovered) == {DispyJob.Finished: 2, DispyJob.Cancelled: 3}, [
        (j, j.exception) for j in recovered
    ]
    assert not recovery_problems(
        [0, 1], [], [j for j in recovered if j.status == DispyJob.Finished]
    )
    for job in recovered:
        assert job.finish.is_set()
        if job.status == DispyJob.Cancelled:
            assert job.result is None
    for pid in pids:
        wait_for(lambda pid=pid: _gone(pid), 10, f"cancelled job process {pid} should die")
    # The queued job never ran; nothing ran twice.
    assert log.starts()[4] == 0
    assert max(log.starts().values()) == 1
    assert not os.path.exists(recover_file)
    node.wait_log("free again", 10)
    _free_and_serving(node, cluster_factory, log)


def test_jobs_never_sent_are_abandoned(clients, tmp_path):
    """Jobs still at the client when it died (no node to run them) come back Abandoned with
    a reason, not missing."""
    recover_file = tmp_path / "recover.jsonl"
    log = ExecutionLog(tmp_path / "executions")
    nowhere = ("127.0.0.1", free_port())
    jobs = [(n, 0, None) for n in range(3)]
    client = clients(nodes=[nowhere], recover_file=recover_file, log_dir=log, jobs=jobs)
    client.wait_line("submitted", 30)
    wait_for(
        lambda: len(recover_file_plan(recover_file)["created"]) == 3,
        10,
        lambda: f"the recover file should list 3 jobs: {recover_file_plan(recover_file)}",
    )
    client.kill()
    started = time.monotonic()
    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    assert time.monotonic() - started < 5
    assert len(recovered) == 3, recovered
    for job in recovered:
        assert job.status == DispyJob.Abandoned, (job, job.exception)
        assert "before this job reached a node" in (job.exception or ""), job.exception
        assert job.finish.is_set()
        assert job.result is None
    assert log.executions() == []


def test_node_restart_keeps_undelivered_results_until_clean(
    node_factory, clients, nemesis, tmp_path
):
    """node.txt --clean: results a client could not receive survive a node restart (same
    --dest_path_prefix) and are recovered from disk; ``--clean`` removes them."""
    node = node_factory.one(cpus=2, name="disk")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 0.3, None) for n in range(4)]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    wait_for(lambda: _stored(node, recover_file) == 4, 15, "4 results should be stored")
    folder = _results_dir(node, recover_file)
    assert nemesis.terminate(node) == 0
    assert _stored(node, recover_file) == 4, "a clean shutdown keeps undelivered results"
    nemesis.restart(node)

    recovered = dispy.recover_jobs(str(recover_file), timeout=20)
    problems = recovery_problems([n for n, _, _ in jobs] + list(WARMUP), seen, recovered)
    assert not problems, "\n".join(problems)
    assert {j.result[0] for j in recovered} == {0, 1, 2, 3}
    assert not folder.exists(), f"recovered results stay on disk: {os.listdir(folder)}"

    # A second crashed client; this time the node restarts with --clean.
    recover_file2 = tmp_path / "recover2.jsonl"
    jobs2 = [(n, 0.1, None) for n in range(10, 13)]
    client2 = clients(
        nodes=[node.address], recover_file=recover_file2, log_dir=log, jobs=jobs2, name="second"
    )
    _kill_when_sent(client2, recover_file2, len(jobs2))
    wait_for(lambda: _stored(node, recover_file2) == 3, 15, "3 results should be stored")
    assert nemesis.terminate(node) == 0
    nemesis.restart(node, extra_args=["--clean"])
    assert not (node.dest_path_prefix / ".dispy-results").exists() or not any(
        (node.dest_path_prefix / ".dispy-results").iterdir()
    ), "--clean should remove stored results"
    lost = dispy.recover_jobs(str(recover_file2), timeout=10)
    assert len(lost) == 3
    for job in lost:
        assert job.status == DispyJob.Abandoned, (job, job.exception)
        assert "does not have this job" in (job.exception or "")
    assert log.starts() == Counter([n for n, _, _ in jobs + jobs2] + list(WARMUP))


def test_orphaned_node_frees_itself_when_its_jobs_end_results_stay_recoverable(
    node_factory, cluster_factory, clients, tmp_path
):
    """A client killed while its jobs run: the node finishes them, stores the results and is
    free for other clients as soon as the last one ends (not zombie_interval later: the
    connection is gone, so no word can come on it; an hour of zombie_interval would keep a
    node idle for nothing). The results stay recoverable from disk."""
    node = node_factory.one(cpus=2, name="orphan")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 1.0, None) for n in range(3)]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    wait_for(lambda: sum(log.ends()[n] for n in range(3)) == 3, 15, "jobs should end")
    ended = time.monotonic()
    node.wait_log("free again", 10)
    freed = time.monotonic() - ended
    assert freed < 5, f"freed {freed:.1f} s after its last job ended"
    assert node.log_contains("no job left (results kept): freeing")
    assert _stored(node, recover_file) == 3
    folder = _results_dir(node, recover_file)

    _free_and_serving(node, cluster_factory, log)

    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    problems = recovery_problems([0, 1, 2, *WARMUP], seen, recovered)
    assert not problems, "\n".join(problems)
    assert not folder.exists(), f"recovered results stay on disk: {os.listdir(folder)}"
    assert log.starts() == Counter([0, 1, 2, 500, *WARMUP])


# -- regressions (bugs this suite found; fixed in 31ac5d4 and 02830d2) ------------------------


def test_results_stored_then_recovered_are_removed(node_factory, clients, tmp_path):
    """Results a node stored for a crashed client and handed to recover_jobs through the
    still-running session are deleted from its disk (they used to stay, and came back in
    every later recovery)."""
    node = node_factory.one(cpus=2, name="tidy")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 0.2, None) for n in range(2)]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    wait_for(lambda: _stored(node, recover_file) == 2, 15, "2 results should be stored")
    folder = _results_dir(node, recover_file)
    recovered = dispy.recover_jobs(str(recover_file), timeout=20)
    assert not recovery_problems([0, 1, *WARMUP], seen, recovered)
    node.wait_log("free again", 10)
    leftover = sorted(os.listdir(folder)) if folder.exists() else []
    assert leftover == [], f"recovered results left on the node in {folder}: {leftover}"


def test_node_freed_when_recovery_stops_waiting_for_close(
    node_factory, cluster_factory, clients, tmp_path
):
    """recover_jobs stops waiting for computation.closed after msg_timeout (here the
    computation's cleanup takes longer); the node must still end the session and be free
    (it used to stay busy for good)."""
    node = node_factory.one(cpus=1, name="slowclose")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(0, 0.1, None)]
    client = clients(
        nodes=[node.address],
        recover_file=recover_file,
        log_dir=log,
        jobs=jobs,
        cleanup_seconds=2.5,
        options={"msg_timeout": 1.0},
    )
    seen = _kill_when_sent(client, recover_file, 1)
    node.wait_log("is gone", 10)
    recovered = dispy.recover_jobs(str(recover_file), timeout=10)
    assert not recovery_problems([0], seen, recovered)
    # The cleanup ends ~2.5 s after the close request; the node must be free after it.
    _free_and_serving(node, cluster_factory, log, timeout=15)


def test_close_right_after_cancel_does_not_hang(node_factory, clients, tmp_path):
    """recover_jobs(terminate_pending=True) cancels running jobs (the node forks replacement
    workers) and closes the computation at once. An at-fork hook that takes a while (set by
    the computation's setup) makes the close reach the computation process before the new
    workers are in their own process groups, every time rather than by chance. The
    computation process used to killpg() them too early, miss them, and hang in waitpid()
    until the daemon killed it 10 s later (and the node then stayed busy); the close must
    be prompt and the node free."""
    node = node_factory.one(cpus=2, name="racer")
    log = ExecutionLog(tmp_path / "executions")
    gate = Gate(tmp_path / "gate")  # never opened
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(0, 0, str(gate)), (1, 0, str(gate))]
    client = clients(
        nodes=[node.address],
        recover_file=recover_file,
        log_dir=log,
        jobs=jobs,
        fork_delay=1.0,
        options={"msg_timeout": 4.0},
    )
    _kill_when_sent(client, recover_file, 2)
    node.wait_log("is gone", 10)
    log.wait_running(2, 10)
    comp = psutil.Process(log.running()[0].pid).parent()

    started = time.monotonic()
    recovered = dispy.recover_jobs(str(recover_file), timeout=0.2, terminate_pending=True)
    took = time.monotonic() - started
    assert [j.status for j in recovered] == [DispyJob.Cancelled] * 2
    wait_for(
        lambda: _gone(comp.pid),
        3,
        lambda: (
            f"computation process {comp.pid} still there, stuck in close "
            f"(recover_jobs took {took:.1f} s)"
        ),
    )
    assert took < 3, f"recover_jobs took {took:.1f} s: the node did not confirm the close"
    node.wait_log("free again", 5)


def test_recovered_jobs_keep_their_ids(node_factory, clients, tmp_path):
    """Recovered jobs carry the ``id`` the program gave them, so it can tell which is which
    (client.txt sets ``job.id = n`` after ``submit()``; here after all submits). It used to
    be None: the recover file took the id when the job was recorded, before it was set."""
    node = node_factory.one(cpus=2, name="names")
    log = ExecutionLog(tmp_path / "executions")
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 1.0, None) for n in range(4)]
    client = clients(
        nodes=[node.address],
        recover_file=recover_file,
        log_dir=log,
        jobs=jobs,
        warmup=WARMUP,
        id_delay=0.2,
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    node.wait_log("is gone", 10)
    recovered = dispy.recover_jobs(str(recover_file), timeout=20)
    assert not recovery_problems([0, 1, 2, 3, *WARMUP], seen, recovered)
    assert recovered
    assert [j.id for j in recovered] == [j.result[0] for j in recovered]


def test_recover_jobs_without_a_file_takes_the_newest_default_one(
    node_factory, clients, tmp_path, monkeypatch
):
    """dispy 4.15 programs call ``recover_jobs()`` with no file: the newest ``_dispy_*``
    recover file in the current directory (a cluster's default name) is the one."""
    node = node_factory.one(cpus=2, name="latest")
    log = ExecutionLog(tmp_path / "executions")
    work = tmp_path / "work"
    work.mkdir()
    recover_file = tmp_path / "recover.jsonl"
    jobs = [(n, 0.5, None) for n in range(4)]
    client = clients(
        nodes=[node.address], recover_file=recover_file, log_dir=log, jobs=jobs, warmup=WARMUP
    )
    seen = _kill_when_sent(client, recover_file, len(jobs) + len(WARMUP))
    node.wait_log("is gone", 10)
    older = work / "_dispy_20260101000000"
    older.write_text("an older run's file: not the one to read\n")
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    latest = work / "_dispy_20261129120000"
    os.replace(recover_file, latest)
    monkeypatch.chdir(work)
    recovered = dispy.recover_jobs(timeout=20)
    assert not recovery_problems([0, 1, 2, 3, *WARMUP], seen, recovered)
    assert {j.result[0] for j in recovered} >= {0, 1, 2, 3} - set(seen)
    assert not latest.exists()  # the one it read is done with
    assert older.exists()


def test_recover_jobs_without_a_file_and_none_there(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert dispy.recover_jobs() == []
    assert "no recover file given and none (_dispy_*)" in caplog.text
