"""What the shared-recovery tests share: SharedJobCluster client processes, and checks of
what a killed client, a lost scheduler and ``dispy.recover_jobs`` leave behind.

Used by test_shared_recovery.py (clients killed, recover_jobs, --clean, a scheduler that
cannot be reached) and test_shared_scheduler_restart.py (the scheduler killed, stopped
and restarted).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dispy import DispyJob
from harness.client_proc import ClientProcess, recover_file_plan
from harness.executions import expected, recovery_problems
from harness.polling import wait_for
from harness.ports import LOOPBACK
from harness.scheduler import SchedulerProcess
from harness.shared_proc import job_lines, seconds_of, shared_submitter

# A client whose scheduler vanished must know within a few seconds (the connection breaks
# at once on loopback), not after a silence timeout.
LOST_WITHIN = 5.0


class SharedClients:
    """Starts SharedJobCluster client processes (:func:`shared_submitter`) for one test;
    :meth:`teardown` kills them and prints their output (shown when the test fails)."""

    def __init__(self, tmp_path: Path, cluster_secret: str) -> None:
        self.tmp = tmp_path
        self.secret = cluster_secret
        self.started: list[ClientProcess] = []

    def __call__(self, sched: SchedulerProcess, **kwargs: Any) -> ClientProcess:
        name = kwargs.pop("name", f"client{len(self.started) + 1}")
        kwargs.setdefault("secret", self.secret)
        client = shared_submitter(
            self.tmp / name, scheduler_port=sched.scheduler_port, name=name, **kwargs
        )
        self.started.append(client)
        return client

    def teardown(self) -> None:
        for client in self.started:
            client.kill()
            print(f"----- {client.name} stdout:\n" + "\n".join(client.lines()))
            print(f"----- {client.name} stderr:\n{client.stderr_text()}")


def tagged_nodes(node_factory: Any, name: str, cpus: int) -> list[Any]:
    """Two nodes whose jobs know which node ran them (``NODE_TAG``, the node's name)."""
    nodes = [
        node_factory.one(cpus=cpus, name=f"{name}-{i}", env={"NODE_TAG": f"{name}-{i}"}, wait=False)
        for i in (1, 2)
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def store_files(store: Path) -> list[str]:
    """Every file in the scheduler's store, relative to it."""
    out = []
    for folder, _dirs, names in os.walk(store):
        out += [os.path.relpath(os.path.join(folder, name), store) for name in names]
    return sorted(out)


def sched_id_of(recover_file: Path) -> int:
    return int(recover_file_plan(recover_file)["header"]["sched_id"])


def kill_when_sent(client: ClientProcess, recover_file: Path, count: int) -> None:
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


def check_recovered(recovered: list[DispyJob], numbers: list[int]) -> None:
    problems = recovery_problems(numbers, [], recovered, allow_redelivery=False)
    assert not problems, "\n".join(problems)
    assert sorted(job.id for job in recovered) == sorted(numbers)


def finished_all(client: ClientProcess, numbers: list[int]) -> None:
    seconds_of(client, "closed", 60)
    results = job_lines(client)
    assert sorted(results) == sorted(numbers), client.lines()
    for n in numbers:
        status, result, exc = results[n]
        assert status == DispyJob.Finished, (n, status, exc)
        assert tuple(result) == expected(n)


def lost_jobs_told(client: ClientProcess, numbers: list[int]) -> dict[int, Any]:
    """What a client whose scheduler went away printed of its jobs, once it closed."""
    seconds_of(client, "closed", LOST_WITHIN + 20)
    results = job_lines(client)
    assert sorted(results) == sorted(numbers), client.lines()
    return results


def lost_jobs(client: ClientProcess, sched: SchedulerProcess, numbers: list[int]) -> None:
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


def results_in(store: Path, sched_id: int) -> list[str]:
    return [p for p in store_files(store) if p.startswith(f".dispy-results/{sched_id}/")]


def kill_scheduler(sched: SchedulerProcess) -> None:
    """``kill -9`` the scheduler and reap it."""
    sched.kill()
    assert sched.proc is not None
    sched.proc.wait(10)


def done_ids(recover_file: Path) -> set[Any]:
    """The ids (``job.id``) of the jobs the recover file records as done at the client."""
    ids: dict[int, Any] = {}
    done: set[int] = set()
    for line in recover_file.read_text().splitlines()[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written when the client died
        if "c" in record:
            ids.update((uid, ident) for uid, ident in record["c"])
        if "j" in record and "i" in record:
            ids.update((uid, ident) for uid, ident in zip(record["j"], record["i"], strict=False))
        elif "i" in record:
            ids.update((uid, ident) for uid, ident in record["i"])
        if "d" in record:
            done.update(record["d"])
    return {ids.get(uid, uid) for uid in done}
