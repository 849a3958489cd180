"""The engine (dispy_core.engine) one event at a time, with a fake clock."""

from __future__ import annotations

import pytest

from dispy_core.engine import (
    MAX_DEPTH,
    CancelRequested,
    Command,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    Engine,
    EngineError,
    JobEnded,
    JobReport,
    JobRequeued,
    JobsDone,
    JobSpec,
    JobsRunning,
    JobsStarted,
    JobsSubmitted,
    NodeCpusChanged,
    NodeDeclaredDead,
    NodeHeard,
    NodeLost,
    NodeReady,
    NodeStatusChanged,
    ProvisionalReceived,
    ResultsAccepted,
    SendCancel,
    SendJobs,
    Tick,
)
from dispy_core.engine.records import Job, move
from dispy_core.protocol.jobs import JobStatus, NodeStatus

A, B, C = ("10.0.0.1", 51348), ("10.0.0.2", 51348), ("10.0.0.3", 51348)
COMP = 7


def engine(*, reentrant: bool = False, pulse: float | None = 1.0) -> Engine:
    eng = Engine()
    assert eng.handle(ComputationOpened(COMP, reentrant=reentrant, pulse_interval=pulse), 0) == []
    return eng


def submit(eng: Engine, ids, *, pinned=None, size=100, now=0.0) -> list[Command]:
    specs = tuple(JobSpec(i, size, pinned) for i in ids)
    return eng.handle(JobsSubmitted(COMP, specs), now)


def done(node, *ids, outcome="finished", took=1.0):
    return JobsDone(node, COMP, tuple(JobReport(i, outcome, 0.0, took) for i in ids))


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def sent(cmds) -> dict:
    return {c.node: c.job_ids for c in of(cmds, SendJobs)}


# --- nodes and placement ---------------------------------------------------------------


def test_ready_node_is_initialized_and_takes_queued_jobs():
    eng = engine()
    assert submit(eng, range(3)) == []
    cmds = eng.handle(NodeReady(A, COMP, cpus=2, total_cpus=8), 1.0)
    assert cmds[0] == NodeStatusChanged(A, COMP, NodeStatus.Initialized)
    # two CPUs and one job ahead per CPU: all three go, two start now, one waits
    assert cmds[1] == SendJobs(A, COMP, (0, 1, 2), frozenset({2}))
    assert cmds[2] == JobsRunning(A, COMP, (0, 1))
    assert eng.node_jobs(COMP, A) == [0, 1]
    assert eng.pending(COMP) == 0


def test_capacity_is_cpus_plus_one_ahead_per_cpu_until_measured():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=2), 0)
    cmds = submit(eng, range(10))
    assert sent(cmds) == {A: (0, 1, 2, 3)}
    assert eng.pending(COMP) == 6


def test_least_loaded_node_first_and_ties_to_the_first_joined():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    eng.handle(NodeReady(B, COMP, cpus=3), 0)
    cmds = submit(eng, range(4))
    # free fractions: A 2/2, B 6/6 -> A (joined first); then B 1.0 > A 0.5 -> B, B, B
    assert sent(cmds) == {A: (0,), B: (1, 2, 3)}
    cmds = submit(eng, range(4, 7))
    # A 1/2 = B 3/6 -> A; then B 0.5 > A 0 -> B, B
    assert sent(cmds) == {A: (4,), B: (5, 6)}


def test_jobs_started_makes_waiting_jobs_running_once():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(2))
    assert eng.handle(JobsStarted(A, COMP, (1, 0, 99)), 1) == [JobsRunning(A, COMP, (1,))]
    assert eng.handle(JobsStarted(A, COMP, (1,)), 1) == []


def test_done_accepts_only_jobs_placed_on_that_node():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    eng.handle(NodeReady(B, COMP, cpus=1), 0)
    submit(eng, range(2))  # 0 on A, 1 on B
    cmds = eng.handle(done(A, 0, 1, 5), 1)
    assert of(cmds, ResultsAccepted) == [ResultsAccepted(A, COMP, (0,), frozenset({1, 5}))]
    cmds = eng.handle(done(A, 0), 1)  # twice: ignored
    assert of(cmds, ResultsAccepted) == [ResultsAccepted(A, COMP, (), frozenset({0}))]
    assert eng.job_status(COMP, 1) == (JobStatus.Running, B)


def test_done_for_a_job_sent_ahead_ends_it():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(2))
    cmds = eng.handle(done(A, 1, outcome="terminated"), 1)
    assert of(cmds, ResultsAccepted)[0].job_ids == (1,)
    assert eng.job_status(COMP, 1) is None
    assert eng.allocation(COMP, A).busy == 1  # job 0 still runs


def test_depth_follows_job_time_and_size():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=2), 0)
    submit(eng, range(200), size=10)
    cmds = eng.handle(done(A, 0, 1, took=1e-4), 1)
    # tiny fast jobs: MAX_DEPTH per CPU queued on top of the running one
    assert eng.allocation(COMP, A).capacity == 2 * (MAX_DEPTH + 1)
    assert len(sent(cmds)[A]) == 2 * MAX_DEPTH
    # long jobs: one ahead per CPU again
    eng.handle(done(A, 2, took=10.0), 2)
    eng.handle(done(A, 3, took=10.0), 2)
    assert eng.allocation(COMP, A).depth <= 2 * 2


def test_large_arguments_shorten_queues_at_once():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=2), 0)
    submit(eng, range(2), size=10)
    eng.handle(done(A, 0, 1, took=1e-4), 1)
    assert eng.allocation(COMP, A).depth == 2 * MAX_DEPTH
    submit(eng, range(2, 4), size=64 << 20)
    assert eng.allocation(COMP, A).depth == 2  # one large job ahead per CPU


def test_cpus_changed_resets_depth_and_places_more():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(10))
    cmds = eng.handle(NodeCpusChanged(A, COMP, 3), 1)
    assert sent(cmds) == {A: (2, 3, 4, 5)}
    assert of(cmds, JobsRunning) == [JobsRunning(A, COMP, (2, 3))]


# --- pinned jobs ----------------------------------------------------------------------


def test_pinned_jobs_run_only_on_their_node():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=4), 0)
    eng.handle(NodeReady(B, COMP, cpus=1), 0)
    cmds = submit(eng, range(5), pinned=B)
    assert sent(cmds) == {B: (0, 1)}
    cmds = eng.handle(done(B, 0), 1)
    assert sent(cmds) == {B: (2,)}


def test_pinned_to_a_node_not_in_the_cluster_is_cancelled():
    eng = engine()
    cmds = submit(eng, [0], pinned=C)
    assert cmds == [
        JobEnded(COMP, 0, JobStatus.Cancelled, "node 10.0.0.3:51348 is not in this cluster")
    ]


def test_pinned_waiting_lists_jobs_of_that_node_not_started_and_job_pin_names_it():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=4), 0)
    eng.handle(NodeReady(B, COMP, cpus=1), 0)
    submit(eng, range(4), pinned=B)  # 0 runs (once started), 1 sent ahead, 2 and 3 wait
    submit(eng, [10])  # not pinned: never listed
    eng.handle(JobsStarted(B, COMP, (0,)), 0)
    assert sorted(eng.pinned_waiting(COMP, B)) == [1, 2, 3]
    assert eng.pinned_waiting(COMP, A) == []
    assert eng.pinned_waiting(COMP, C) == []  # not a node of the computation
    assert (eng.job_pin(COMP, 2), eng.job_pin(COMP, 10), eng.job_pin(COMP, 99)) == (B, None, None)


def test_cancel_with_a_reason_ends_waiting_jobs_with_it_and_names_their_node():
    eng = engine()
    eng.handle(NodeReady(B, COMP, cpus=1), 0)
    submit(eng, range(3), pinned=B)  # 0 and 1 placed, 2 waits
    cmds = eng.handle(CancelRequested(COMP, (2,), "Cancelled: node closed"), 1)
    assert cmds == [JobEnded(COMP, 2, JobStatus.Cancelled, "Cancelled: node closed", B)]


# --- cancel ----------------------------------------------------------------------------


def test_cancel_queued_ends_it_and_placed_asks_the_node():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(4))
    cmds = eng.handle(CancelRequested(COMP, (3, 0, 42)), 1)
    assert cmds == [
        JobEnded(COMP, 3, JobStatus.Cancelled, "Cancelled"),
        SendCancel(A, COMP, (0,)),
    ]
    cmds = eng.handle(done(A, 0, 1, outcome="cancelled"), 1)
    assert of(cmds, ResultsAccepted)[0].job_ids == (0, 1)
    assert of(cmds, SendJobs) == [SendJobs(A, COMP, (2,), frozenset())]
    assert eng.live(COMP) == 1


def test_close_with_terminate_cancels_everything():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(3))
    cmds = eng.handle(ComputationClosed(COMP, terminate=True), 1)
    assert of(cmds, JobEnded) == [JobEnded(COMP, 2, JobStatus.Cancelled, "Cancelled")]
    assert of(cmds, SendCancel) == [SendCancel(A, COMP, (0, 1))]


def test_dropped_computation_abandons_what_is_left():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(3))
    cmds = eng.handle(ComputationDropped(COMP), 1)
    assert {c.job_id for c in cmds} == {0, 1, 2}
    assert {(c.status, c.reason) for c in cmds} == {(JobStatus.Abandoned, "cluster closed")}
    assert eng.computations() == []


# --- lost and dead nodes -------------------------------------------------------------------


def test_lost_node_cancels_its_jobs_without_reentrant():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(3))
    cmds = eng.handle(NodeLost(A, "connection lost: reset"), 1)
    reason = "Cancelled: node 10.0.0.1:51348 connection lost: reset"
    assert {c.job_id for c in of(cmds, JobEnded)} == {0, 1}  # running and sent ahead
    assert {c.reason for c in of(cmds, JobEnded)} == {reason}
    assert cmds[-1] == NodeStatusChanged(
        A, COMP, NodeStatus.AbandonedNode, "connection lost: reset"
    )
    assert eng.pending(COMP) == 1


def test_lost_node_requeues_at_the_front_when_reentrant():
    eng = engine(reentrant=True)
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(3))
    cmds = eng.handle(NodeLost(A, "closed"), 1)
    assert {c.job_id for c in of(cmds, JobRequeued)} == {0, 1}
    assert cmds[-1] == NodeStatusChanged(A, COMP, NodeStatus.Closed)
    cmds = eng.handle(NodeReady(B, COMP, cpus=1), 2)
    assert set(sent(cmds)[B]) == {0, 1}


def test_pinned_jobs_of_a_lost_node_are_cancelled_even_when_reentrant():
    eng = engine(reentrant=True)
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(4), pinned=A)
    cmds = eng.handle(NodeLost(A, "gone"), 1)
    assert sorted(c.job_id for c in of(cmds, JobEnded)) == [0, 1, 2, 3]
    assert eng.live(COMP) == 0
    assert eng.pending(COMP) == 0


def test_closing_computation_does_not_requeue():
    eng = engine(reentrant=True)
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(1))
    eng.handle(ComputationClosed(COMP), 1)
    cmds = eng.handle(NodeLost(A, "gone"), 1)
    assert of(cmds, JobEnded)[0].status == JobStatus.Cancelled


def test_tick_declares_a_silent_node_dead():
    eng = engine(pulse=1.0)  # dead after 5 s of silence
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    eng.handle(NodeReady(B, COMP, cpus=1), 0)
    submit(eng, range(2))
    assert eng.handle(Tick(), 4.0) == []
    eng.handle(NodeHeard(B), 4.0)
    cmds = eng.handle(Tick(), 6.0)
    assert cmds[-1] == NodeDeclaredDead(A, "declared dead: no pulse for 6 s")
    assert (
        NodeStatusChanged(A, COMP, NodeStatus.AbandonedNode, "declared dead: no pulse for 6 s")
        in cmds
    )
    assert eng.nodes(COMP) == [B]
    # events from the dead node are ignored
    assert eng.handle(done(A, 0), 7.0) == []


def test_a_node_can_serve_two_computations():
    eng = engine()
    eng.handle(ComputationOpened(8), 0)
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    eng.handle(NodeReady(A, 8, cpus=2), 0)
    submit(eng, range(5))
    cmds = eng.handle(JobsSubmitted(8, tuple(JobSpec(i) for i in range(5))), 0)
    assert cmds == [SendJobs(A, 8, (0, 1, 2, 3), frozenset({2, 3})), JobsRunning(A, 8, (0, 1))]
    cmds = eng.handle(NodeLost(A, "closed", comp_id=COMP), 1)
    assert eng.nodes(8) == [A]
    assert eng.nodes(COMP) == []


# --- rules -------------------------------------------------------------------------------


def test_illegal_transition_raises():
    job = Job(1, JobStatus.Finished)
    with pytest.raises(EngineError, match="Finished -> Running"):
        move(job, JobStatus.Running)


def test_misuse_raises():
    eng = engine()
    with pytest.raises(EngineError):
        eng.handle(ComputationOpened(COMP), 0)
    with pytest.raises(EngineError):
        eng.handle(JobsSubmitted(99, (JobSpec(1),)), 0)
    submit(eng, [1])
    with pytest.raises(EngineError):
        submit(eng, [1])


def test_provisional_result_of_a_waiting_job_starts_it():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=1), 0)
    submit(eng, range(2))
    cmds = eng.handle(ProvisionalReceived(A, COMP, 1), 1)
    assert cmds == [JobsRunning(A, COMP, (1,))]
    assert eng.job_status(COMP, 1) == (JobStatus.ProvisionalResult, A)


def test_handle_many_places_once():
    eng = engine()
    cmds = eng.handle_many(
        [
            NodeReady(A, COMP, cpus=1),
            NodeReady(B, COMP, cpus=1),
            JobsSubmitted(COMP, (JobSpec(0), JobSpec(1))),
        ],
        0,
    )
    assert sent(cmds) == {A: (0,), B: (1,)}


def test_heap_stays_small_while_results_come_and_nothing_is_queued():
    eng = engine()
    eng.handle(NodeReady(A, COMP, cpus=2), 0)
    submit(eng, [0, 1])
    eng.handle(done(A, 0, 1), 1)
    for _ in range(1000):
        eng.handle(done(A, 0, 1), 1)  # stale reports still touch the allocation
    assert eng.live(COMP) == 0
    assert len(eng.allocation(COMP, A).comp.heap) <= 4 + 64
