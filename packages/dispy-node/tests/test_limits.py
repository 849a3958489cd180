"""A session's queued jobs and unacknowledged results are bounded (issue 9, item 8c)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dispy_core import serialize
from dispy_core.protocol.messages import ComputationSetup, JobDone, JobSubmit
from dispy_core.result_store import ResultStore, oldest_over_budget
from dispy_core.results import Reply
from dispy_core.testing import async_test
from dispy_node import _limits
from dispy_node._computation_session import ComputationSession as Session
from dispy_node._limits import (
    MAX_QUEUED_PER_CPU,
    MAX_UNACKED_BYTES,
    MIN_QUEUED_BYTES,
    queue_full,
)

MiB = 1 << 20


def test_queue_bounds_leave_room_for_what_a_client_queues():
    # the client queues at most 32 jobs per CPU (dispy_core.engine.MAX_DEPTH)
    assert queue_full(32 * 4, 0, 100, cpus=4) is None
    reason = queue_full(MAX_QUEUED_PER_CPU * 4, 0, 100, cpus=4)
    assert reason is not None
    assert "queue for this computation is full" in reason
    # bytes: at least MIN_QUEUED_BYTES in all
    assert queue_full(4, MIN_QUEUED_BYTES - 10, 10, cpus=4) is None
    reason = queue_full(4, MIN_QUEUED_BYTES - 10, 11, cpus=4)
    assert reason is not None
    assert "bytes of arguments waiting" in reason


def test_oldest_replies_leave_first_until_half_the_budget():
    unacked = {i: Reply(i, "finished", 0.0, 0.0, b"x" * (MAX_UNACKED_BYTES // 8)) for i in range(9)}
    total = sum(len(r.payload) for r in unacked.values())
    taken = oldest_over_budget(unacked, total, MAX_UNACKED_BYTES)
    assert [r.job_id for r in taken] == [0, 1, 2, 3, 4]
    assert list(unacked) == [5, 6, 7, 8]


class _Runner:
    comp_id = 1
    name = "bounded"
    cpus = 1
    held = False

    def __init__(self) -> None:
        self.jobs: list[int] = []
        self.queued_bytes = 0

    @property
    def queued(self) -> int:
        return len(self.jobs)

    running = 0

    def submit(self, job_id: int, payload: Any, notify: bool = False) -> None:
        self.jobs.append(job_id)
        self.queued_bytes += len(payload)


class _Conn:
    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_nowait(self, message: Any, payload: Any = b"") -> None:
        self.sent.append(message)


def _session(tmp_path: Any, cpus: int = 2) -> tuple[Session, _Runner, _Conn]:
    config = SimpleNamespace(max_file_size=0, dest_path_prefix=str(tmp_path))
    node = SimpleNamespace(cpus=cpus, config=config, store=ResultStore(str(tmp_path)))
    session = Session(node)  # type: ignore[arg-type]
    session.setup = ComputationSetup(comp_id=1, name="bounded", kind="function", cpus=cpus)
    runner = _Runner()
    session.computation = runner  # type: ignore[assignment]
    conn = _Conn()
    session.conn = conn  # type: ignore[assignment]
    return session, runner, conn


def _reasons(conn: _Conn) -> dict[int, str]:
    return {
        report.job_id: report.outcome
        for message in conn.sent
        if isinstance(message, JobDone)
        for report in message.jobs
    }


@async_test()
async def test_a_flood_of_jobs_is_refused_past_the_bound_never_dropped(tmp_path):
    session, runner, conn = _session(tmp_path, cpus=2)
    limit = MAX_QUEUED_PER_CPU * 2
    jobs = [(job_id, 3) for job_id in range(1, limit + 11)]
    session._submit(JobSubmit(comp_id=1, jobs=jobs), b"abc" * len(jobs))
    session._flush()
    assert runner.jobs == list(range(1, limit + 1))
    refused = _reasons(conn)
    assert sorted(refused) == list(range(limit + 1, limit + 11))  # each one answered
    assert set(refused.values()) == {"terminated"}
    reply = session._unacked[limit + 1]
    _result, _out, _err, reason = serialize.loads(reply.payload)
    assert "queue for this computation is full" in reason


@async_test()
async def test_unacknowledged_results_over_the_budget_wait_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(_limits, "MAX_UNACKED_BYTES", 8 * MiB)
    import dispy_node._replies as session_module

    monkeypatch.setattr(session_module, "MAX_UNACKED_BYTES", 8 * MiB)
    session, _runner, _conn = _session(tmp_path)
    for job_id in range(1, 11):  # 10 MiB of results, never acknowledged
        session._on_reply(Reply(job_id, "finished", 0.0, 1.0, bytes([job_id]) * MiB))
        session._flush()
    assert session._unacked_bytes <= 8 * MiB
    on_disk = sorted(r.job_id for r in session.node.store.load(1))
    assert on_disk == [1, 2, 3, 4, 5]  # at 9 MiB the oldest went, down to half the budget
    assert sorted(session._unacked) == [6, 7, 8, 9, 10]
    # the client acknowledges them wherever they are
    session._acked(list(range(1, 11)))
    assert session.node.store.load(1) == []
    assert session._unacked_bytes == 0
