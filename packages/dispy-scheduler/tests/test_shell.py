"""The scheduler's shell (engine commands -> messages) with fake links and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dispy_core.engine import (
    ComputationClosed,
    ComputationOpened,
    JobSpec,
    JobsSubmitted,
    NodeHeard,
    NodeLost,
    NodeReady,
    Tick,
)
from dispy_core.protocol.messages import (
    CloseComputation,
    JobAck,
    JobDone,
    JobReport,
    JobSubmit,
    SharedDone,
    SharedEnded,
    SharedRequeued,
    SharedRunning,
    SharedStatus,
)
from dispy_core.protocol.messages import (
    ComputationClosed as ClosedMsg,
)
from dispy_scheduler import _shell
from dispy_scheduler._shell import Shell
from dispy_scheduler._state import SharedComp

NODE_A = ("10.0.0.1", 51348)
NODE_B = ("10.0.0.2", 51348)
SCHED_ID = 77


class Conn:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def send_nowait(self, message: Any, payload: Any = b"") -> None:
        self.sent.append((message, payload))


class FakeNode:
    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.conn = Conn()
        self.aborted: str | None = None

    def send(self, message: Any, payload: Any = b"") -> None:
        self.conn.send_nowait(message, payload)

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def of(self, kind: type) -> list[Any]:
        return [m for m, _ in self.conn.sent if isinstance(m, kind)]


class FakeClient(FakeNode):
    def __init__(self) -> None:
        super().__init__(("client", 0))
        self.forgotten: list[SharedComp] = []

    def forget(self, comp: SharedComp) -> None:
        self.forgotten.append(comp)


class Record:
    def __init__(self) -> None:
        self.files_dir = Path("/nonexistent")
        self.kept: list[tuple[list[int], bytes]] = []
        self.closed = False

    def store(self, reports: Sequence[JobReport], payload: Any) -> None:
        self.kept.append(([r.job_id for r in reports], bytes(payload)))

    def close(self) -> None:
        self.closed = True


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_shell.time, "monotonic", fake)
    return fake


def _setup(clock: Clock, *, reentrant: bool = False, nodes: Sequence[Any] = (NODE_A,)) -> Any:
    shell = Shell(store=None)  # type: ignore[arg-type]
    client = FakeClient()
    record = Record()
    comp = SharedComp(
        sched_id=SCHED_ID,
        comp_id=5,
        name="c",
        kind="function",
        dest_path=None,
        cleanup=True,
        reentrant=reentrant,
        exclusive=False,
        client=client,  # type: ignore[arg-type]
        record=record,  # type: ignore[arg-type]
        start=b"bundle",
        opened=True,
    )
    shell.comps[SCHED_ID] = comp
    links = {key: FakeNode(key) for key in nodes}
    shell.nodes.update(links)  # type: ignore[arg-type]
    shell.handle(ComputationOpened(SCHED_ID, reentrant, 1.0))
    for key in nodes:
        comp.setup[key] = 1
        comp.ready.add(key)
        shell.handle(NodeReady(key, SCHED_ID, 1, 1))
    return shell, comp, client, record, links


def _submit(shell: Shell, comp: SharedComp, ids: Sequence[int]) -> None:
    for job_id in ids:
        comp.args[job_id] = f"args{job_id}".encode()
    shell.handle(JobsSubmitted(SCHED_ID, tuple(JobSpec(j, 5) for j in ids)))


def _done(job_ids: Sequence[int], outcome: str = "finished") -> tuple[JobDone, bytes]:
    reports = [
        JobReport(job_id=j, outcome=outcome, start=1.0, end=2.0, size=3)  # type: ignore[arg-type]
        for j in job_ids
    ]
    return JobDone(comp_id=SCHED_ID, jobs=reports), b"".join(b"r%02d" % j for j in job_ids)


def test_jobs_go_out_with_their_arguments_and_run_is_told_to_the_client(clock: Clock) -> None:
    shell, comp, client, _, links = _setup(clock)
    _submit(shell, comp, [1, 2])
    (submit,) = links[NODE_A].of(JobSubmit)
    payload = links[NODE_A].conn.sent[-1][1]
    assert submit.comp_id == SCHED_ID
    assert [j for j, _ in submit.jobs] == [1, 2]
    assert submit.notify == [2]  # one CPU: the second waits on the node
    assert b"".join(payload) == b"args1args2"
    (running,) = client.of(SharedRunning)
    assert running.comp_id == 5
    assert running.job_ids == [1]


def test_results_are_acked_to_the_node_only_after_the_client_acked(clock: Clock) -> None:
    shell, comp, client, _, links = _setup(clock)
    _submit(shell, comp, [1])
    msg, payload = _done([1])
    shell.results(links[NODE_A], msg, payload)  # type: ignore[arg-type]
    (done,) = client.of(SharedDone)
    assert done.comp_id == 5
    assert (done.ip_addr, done.port) == NODE_A
    assert links[NODE_A].of(JobAck) == []
    assert 1 not in comp.args  # the arguments are dropped once the job ended
    shell.client_acked(comp, [1])
    (ack,) = links[NODE_A].of(JobAck)
    assert ack.comp_id == SCHED_ID
    assert ack.job_ids == [1]


def test_a_stale_report_is_acked_at_once_and_not_forwarded(clock: Clock) -> None:
    shell, comp, client, _, links = _setup(clock)
    _submit(shell, comp, [1])
    msg, payload = _done([99])
    shell.results(links[NODE_A], msg, payload)  # type: ignore[arg-type]
    assert client.of(SharedDone) == []
    (ack,) = links[NODE_A].of(JobAck)
    assert ack.job_ids == [99]


def test_a_gone_clients_results_are_stored_then_acked(clock: Clock) -> None:
    shell, comp, _client, record, links = _setup(clock)
    _submit(shell, comp, [1, 2, 3])
    msg, payload = _done([1])
    shell.results(links[NODE_A], msg, payload)  # type: ignore[arg-type]
    comp.client = None  # the connection ended before the client acked job 1
    shell.store_unacked(comp)
    assert record.kept == [([1], b"r01")]
    msg, payload = _done([2])
    shell.results(links[NODE_A], msg, payload)  # type: ignore[arg-type]
    assert record.kept[-1] == ([2], b"r02")
    assert [a.job_ids for a in links[NODE_A].of(JobAck)] == [[1], [2]]
    # the last job done: the computation closes on its node, and is dropped when closed
    msg, payload = _done([3])
    shell.results(links[NODE_A], msg, payload)  # type: ignore[arg-type]
    shell.maybe_finish(SCHED_ID)
    (close,) = links[NODE_A].of(CloseComputation)
    assert close.comp_id == SCHED_ID
    shell.handle(NodeLost(NODE_A, "closed", SCHED_ID))  # the node's computation.closed
    assert SCHED_ID not in shell.comps
    assert not record.closed  # results are in the store: the record stays for recovery


def test_a_silent_node_is_declared_dead_and_reentrant_jobs_move(clock: Clock) -> None:
    shell, comp, client, _, links = _setup(clock, reentrant=True, nodes=(NODE_A, NODE_B))
    _submit(shell, comp, [1])
    silent = NODE_A if links[NODE_A].of(JobSubmit) else NODE_B
    talking = NODE_B if silent == NODE_A else NODE_A
    clock.now += 4.0
    shell.handle(Tick())
    assert links[silent].aborted is None
    # one node keeps talking, the other stays silent past 5 x pulse_interval
    clock.now += 2.0
    shell.handle(NodeHeard(talking))
    shell.handle(Tick())
    assert links[talking].aborted is None
    assert links[silent].aborted is not None
    assert "declared dead" in links[silent].aborted
    (resent,) = links[talking].of(JobSubmit)
    assert [j for j, _ in resent.jobs] == [1]
    # in the same turn the job was requeued and runs again: the client hears it in order
    told = [m for m, _ in client.conn.sent if isinstance(m, SharedRequeued | SharedRunning)]
    assert [type(m).__name__ for m in told] == ["SharedRunning", "SharedRequeued", "SharedRunning"]
    assert (told[2].ip_addr, told[2].port) == talking


def test_not_reentrant_jobs_of_a_lost_node_end_cancelled_and_the_client_is_told(
    clock: Clock,
) -> None:
    shell, comp, client, _, _links = _setup(clock)
    _submit(shell, comp, [1, 2])
    shell.handle(NodeLost(NODE_A, "connection lost: reset"))
    (ended,) = client.of(SharedEnded)
    assert sorted(j for j, _, _ in ended.jobs) == [1, 2]
    assert all(status == "cancelled" for _, status, _ in ended.jobs)
    assert all(f"{NODE_A[0]}:{NODE_A[1]}" in reason for _, _, reason in ended.jobs)
    assert comp.args == {}


def test_an_exclusive_computation_waits_and_is_told_when_its_turn_comes(clock: Clock) -> None:
    shell, comp, client, _, _links = _setup(clock)
    other = FakeClient()
    second = SharedComp(
        sched_id=88,
        comp_id=6,
        name="x",
        kind="function",
        dest_path=None,
        cleanup=True,
        reentrant=False,
        exclusive=True,
        client=other,  # type: ignore[arg-type]
        record=Record(),  # type: ignore[arg-type]
        start=b"bundle",
        opened=True,
    )
    shell.comps[88] = second
    shell.handle(ComputationOpened(88, False, 1.0, exclusive=True))
    assert [m.state for m in other.of(SharedStatus)] == ["waiting"]
    comp.closing = True
    shell.handle(ComputationClosed(SCHED_ID))
    shell.maybe_finish(SCHED_ID)  # no job left: closes on its node
    shell.handle(NodeLost(NODE_A, "closed", SCHED_ID))
    assert [m.state for m in other.of(SharedStatus)] == ["waiting", "active"]
    assert client.of(ClosedMsg)


def _sent_ids(link: FakeNode) -> list[int]:
    return [j for m in link.of(JobSubmit) for j, _ in m.jobs]


def test_a_clean_stop_sends_a_gone_clients_queued_jobs_to_its_nodes_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    shell, comp, _client, record, links = _setup(clock, nodes=(NODE_A, NODE_B))
    _submit(shell, comp, [1, 2, 3, 4, 5, 6])
    # one CPU and one job ahead on each node: four placed, 5 and 6 queued here
    placed = _sent_ids(links[NODE_A]) + _sent_ids(links[NODE_B])
    assert sorted(placed) == [1, 2, 3, 4]
    comp.client = None  # killed
    caplog.set_level("INFO", logger="dispy_scheduler")
    shell.hand_over_queued()
    a, b = _sent_ids(links[NODE_A]), _sent_ids(links[NODE_B])
    assert sorted(a + b) == [1, 2, 3, 4, 5, 6]  # each job on one node, once
    assert len(a) == len(b) == 3  # spread by load
    handed = [link.conn.sent[-1] for link in links.values()]
    assert all(isinstance(m, JobSubmit) and m.notify == [] for m, _ in handed)
    assert all(m.comp_id == SCHED_ID for m, _ in handed)
    assert sorted(b"".join(p) for _, p in handed) == [b"args5", b"args6"]
    assert caplog.text.count("queued here sent to node") == 2
    # A place frees up during the stop (job 1 ends): nothing is sent again.
    holder = NODE_A if 1 in _sent_ids(links[NODE_A])[:2] else NODE_B
    msg, payload = _done([1])
    shell.results(links[holder], msg, payload)  # type: ignore[arg-type]
    assert sorted(_sent_ids(links[NODE_A]) + _sent_ids(links[NODE_B])) == [1, 2, 3, 4, 5, 6]
    assert record.kept == [([1], b"r01")]  # the gone client's result is stored as ever
    assert not any(m.job_ids for m in links[holder].of(SharedEnded))


def test_a_clean_stop_leaves_a_connected_clients_queued_jobs(clock: Clock) -> None:
    shell, comp, _client, _record, links = _setup(clock)
    _submit(shell, comp, [1, 2, 3])
    shell.hand_over_queued()
    assert _sent_ids(links[NODE_A]) == [1, 2]  # the client is told they end Abandoned


def test_a_clean_stop_keeps_pins_and_logs_what_no_node_can_take(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    shell, comp, _client, _record, links = _setup(clock, nodes=(NODE_A, NODE_B))
    _submit(shell, comp, [1, 2, 3, 4])  # both nodes full
    for job_id, node in ((5, NODE_A), (6, NODE_B)):
        comp.args[job_id] = f"args{job_id}".encode()
        shell.handle(JobsSubmitted(SCHED_ID, (JobSpec(job_id, 5, node),)))
    del shell.nodes[NODE_B]  # its connection ended as the stop began
    comp.client = None
    shell.hand_over_queued()
    assert 5 in _sent_ids(links[NODE_A])
    assert 6 not in _sent_ids(links[NODE_A]) + _sent_ids(links[NODE_B])
    assert "1 job(s) of its gone client queued here are lost at the stop (6)" in caplog.text


def test_a_clean_stop_without_a_node_ready_logs_the_lost_jobs(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    shell, comp, _client, _record, links = _setup(clock)
    _submit(shell, comp, [1, 2, 3])
    del shell.nodes[NODE_A]  # its connection ended before the stop
    comp.client = None
    shell.hand_over_queued()
    assert _sent_ids(links[NODE_A]) == [1, 2]
    assert "1 job(s) of its gone client queued here are lost at the stop (3)" in caplog.text
