"""The scheduling engine (dispy_core.scheduling.Scheduler)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from dispy_core.scheduling import Scheduler


def placed_per_node(assignments):
    return Counter(node for _job, node in assignments)


# --- placement -------------------------------------------------------------------------------


def test_nothing_is_assigned_without_nodes():
    s: Scheduler[int, str] = Scheduler()
    s.submit(1)
    assert s.assign() == []
    assert s.pending == 1


def test_jobs_fill_nodes_in_proportion_to_their_cpus():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("small", cpus=2)
    s.add_node("big", cpus=4)
    for job in range(6):
        s.submit(job)
    assignments = s.assign()
    assert placed_per_node(assignments) == {"small": 2, "big": 4}
    assert [job for job, _ in assignments] == list(range(6))  # first in, first placed


def test_least_loaded_node_gets_the_next_job():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("small", cpus=2)
    s.add_node("big", cpus=4)
    s.submit("a", "small")
    s.submit("b", "big")
    s.assign()  # small is half busy, big a quarter busy
    s.submit("c")
    assert s.assign() == [("c", "big")]
    s.submit("d")
    s.submit("e")
    # big is now 2/4 busy like small 1/2; the tie goes to the node added first
    assert s.assign() == [("d", "small"), ("e", "big")]


def test_freed_slot_on_a_full_cluster_takes_the_next_job():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.add_node("b", cpus=1)
    for job in range(4):
        s.submit(job)
    assert placed_per_node(s.assign()) == {"a": 1, "b": 1}
    assert s.finished(1) == "b"
    assert s.assign() == [(2, "b")]
    assert s.assign() == []
    assert s.pending == 1


def test_capacity_is_cpus_plus_extra():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=2, extra=3)
    for job in range(10):
        s.submit(job)
    assert len(s.assign()) == 5
    assert s.pending == 5
    assert len(s.jobs_on("n")) == 5


def test_node_with_zero_cpus_gets_no_jobs_even_with_extra():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=0, extra=2)
    s.submit(1)
    assert s.assign() == []


def test_set_cpus_changes_capacity():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=1)
    for job in range(3):
        s.submit(job)
    assert len(s.assign()) == 1
    s.set_cpus("n", 3)
    assert len(s.assign()) == 2


def test_add_node_again_updates_its_cpus_and_keeps_its_jobs():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=1)
    s.submit(1)
    s.assign()
    s.add_node("n", cpus=2)
    s.submit(2)
    assert s.assign() == [(2, "n")]
    assert sorted(s.jobs_on("n")) == [1, 2]
    assert s.nodes() == ["n"]


def test_front_submission_jumps_the_queue():
    s: Scheduler[str, str] = Scheduler()
    s.submit("late")
    s.submit("resubmitted", front=True)
    s.add_node("n", cpus=1)
    assert s.assign() == [("resubmitted", "n")]


def test_submitting_a_scheduled_job_twice_is_refused():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=1)
    s.submit(1)
    with pytest.raises(ValueError, match="already scheduled"):
        s.submit(1)
    s.assign()
    with pytest.raises(ValueError, match="already scheduled"):
        s.submit(1)


# --- pinned jobs ---------------------------------------------------------------------------


def test_pinned_jobs_run_only_on_their_node():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.add_node("b", cpus=4)
    for job in ("p1", "p2", "p3"):
        s.submit(job, "a")
    assert s.assign() == [("p1", "a")]  # b has room but may not take them
    s.finished("p1")
    assert s.assign() == [("p2", "a")]


def test_pinned_jobs_go_before_unpinned_ones():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.submit("free")
    s.submit("pinned", "a")
    assert s.assign() == [("pinned", "a")]


def test_pinning_to_an_unknown_node_is_refused():
    s: Scheduler[int, str] = Scheduler()
    with pytest.raises(KeyError):
        s.submit(1, "nowhere")


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_of_queued_job_drops_it():
    s: Scheduler[int, str] = Scheduler()
    for job in range(3):
        s.submit(job)
    assert s.cancel(1) == "queued"
    assert s.pending == 2
    s.add_node("n", cpus=5)
    assert [job for job, _ in s.assign()] == [0, 2]


def test_cancel_of_queued_job_is_lazy_and_constant_time():
    s: Scheduler[int, str] = Scheduler()
    for job in range(10_000):
        s.submit(job)
    for job in range(10_000):
        assert s.cancel(job) == "queued"  # nothing is searched or moved
    assert s.pending == 0
    s.add_node("n", cpus=1)
    assert s.assign() == []


def test_cancel_of_pinned_queued_job_drops_it():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.submit("p", "a")
    assert s.cancel("p") == "queued"
    assert s.assign() == []
    assert s.remove_node("a") == []


def test_cancel_of_placed_job_returns_placed_and_keeps_its_slot():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=1)
    s.submit(1)
    s.submit(2)
    s.assign()
    assert s.cancel(1) == "placed"
    assert s.node_of(1) == "n"  # still running until the node says it ended
    assert s.assign() == []
    assert s.finished(1) == "n"
    assert s.assign() == [(2, "n")]


def test_cancel_of_unknown_or_finished_job_returns_none():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("n", cpus=1)
    s.submit(1)
    s.assign()
    s.finished(1)
    assert s.cancel(1) is None
    assert s.cancel(99) is None
    assert s.finished(99) is None


def test_job_resubmitted_with_a_pin_after_cancel_runs_only_on_its_node():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.add_node("b", cpus=1)
    s.submit("x")
    s.cancel("x")
    s.submit("busy", "b")
    s.submit("x", "b")
    assert ("x", "a") not in s.assign()


def test_remove_node_ignores_a_job_repinned_elsewhere_after_cancel():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.add_node("b", cpus=0)
    s.submit("x", "a")
    s.cancel("x")
    s.submit("x", "b")
    assert s.remove_node("a") == []
    assert s.pending == 1


# --- nodes leaving ---------------------------------------------------------------------------


def test_remove_node_returns_its_placed_and_pinned_jobs():
    s: Scheduler[str, str] = Scheduler()
    s.add_node("a", cpus=1)
    s.add_node("b", cpus=1)
    s.submit("on-a", "a")
    s.submit("on-b", "b")
    s.submit("waits-for-a", "a")
    s.submit("free")
    s.assign()
    lost = s.remove_node("a")
    assert sorted(lost) == ["on-a", "waits-for-a"]
    assert s.node_of("on-a") is None
    assert s.nodes() == ["b"]
    assert s.pending == 1  # only "free" is still queued
    assert s.finished("on-a") is None  # a late result from the dead node changes nothing


def test_removed_node_jobs_can_be_resubmitted_elsewhere():
    s: Scheduler[int, str] = Scheduler()
    s.add_node("a", cpus=2)
    s.submit(1)
    s.submit(2)
    s.assign()
    s.add_node("b", cpus=2)
    for job in s.remove_node("a"):
        s.submit(job, front=True)
    assert sorted(s.assign()) == [(1, "b"), (2, "b")]


def test_remove_unknown_node_returns_nothing():
    s: Scheduler[int, str] = Scheduler()
    assert s.remove_node("ghost") == []
    assert not s.has_node("ghost")


# --- state machine -----------------------------------------------------------------------------

NODE_NAMES = ("n1", "n2", "n3")


class SchedulerMachine(RuleBasedStateMachine):
    """Random interleavings of submit, nodes joining and leaving, cancel, finish and assign.

    The model records what must be true of every job: it is exactly one of queued, placed,
    finished, cancelled or lost (returned by remove_node).
    """

    jobs = Bundle("jobs")

    @initialize()
    def setup(self):
        self.s: Scheduler[int, str] = Scheduler()
        self.capacity: dict[str, int] = {}
        self.state: dict[int, str] = {}  # job -> queued | placed | finished | cancelled | lost
        self.where: dict[int, str] = {}  # placed job -> node
        self.pin: dict[int, str] = {}
        self.cancel_requested: set[int] = set()
        self.next_job = 0

    def _new_job(self) -> int:
        self.next_job += 1
        self.state[self.next_job] = "queued"
        return self.next_job

    @rule(
        node=st.sampled_from(NODE_NAMES),
        cpus=st.integers(min_value=0, max_value=3),
        extra=st.integers(min_value=0, max_value=2),
    )
    def add_node(self, node, cpus, extra):
        if node in self.capacity:
            return  # shrinking a busy node is the caller's business, not modelled here
        self.s.add_node(node, cpus, extra)
        self.capacity[node] = cpus + extra if cpus > 0 else 0

    @precondition(lambda self: self.capacity)
    @rule(data=st.data())
    def remove_node(self, data):
        node = data.draw(st.sampled_from(sorted(self.capacity)))
        lost = self.s.remove_node(node)
        assert len(lost) == len(set(lost))
        expected = {j for j, n in self.where.items() if n == node} | {
            j for j, n in self.pin.items() if n == node and self.state[j] == "queued"
        }
        assert set(lost) == expected
        for job in lost:
            self.state[job] = "lost"
            self.where.pop(job, None)
        del self.capacity[node]

    @rule(target=jobs)
    def submit(self):
        job = self._new_job()
        self.s.submit(job)
        return job

    @precondition(lambda self: self.capacity)
    @rule(target=jobs, data=st.data())
    def submit_pinned(self, data):
        node = data.draw(st.sampled_from(sorted(self.capacity)))
        job = self._new_job()
        self.s.submit(job, node)
        self.pin[job] = node
        return job

    @rule(job=jobs)
    def cancel(self, job):
        result = self.s.cancel(job)
        state = self.state[job]
        if state == "queued":
            assert result == "queued"
            self.state[job] = "cancelled"
        elif state == "placed":
            assert result == "placed"
            self.cancel_requested.add(job)
        else:
            assert result is None

    @rule(job=consumes(jobs))
    def finish(self, job):
        node = self.s.finished(job)
        if self.state[job] == "placed":
            assert node == self.where.pop(job)
            self.state[job] = "finished"
        else:
            assert node is None

    @rule()
    def assign(self):
        assignments = self.s.assign()
        for job, node in assignments:
            assert self.state[job] == "queued", f"job {job} was {self.state[job]}"
            assert node in self.capacity
            if job in self.pin:
                assert node == self.pin[job], f"pinned job {job} ran on {node}"
            self.state[job] = "placed"
            self.where[job] = node
        # nothing that could run is left waiting
        for node, cap in self.capacity.items():
            if len(self.s.jobs_on(node)) < cap:
                waiting = [j for j, st_ in self.state.items() if st_ == "queued"]
                assert all(self.pin.get(j) not in (None, node) for j in waiting), (
                    f"node {node} has room but jobs wait: {waiting}"
                )

    @invariant()
    def no_node_exceeds_its_capacity(self):
        for node, cap in self.capacity.items():
            assert len(self.s.jobs_on(node)) <= cap

    @invariant()
    def no_job_is_both_queued_and_placed(self):
        assert self.s._queued.isdisjoint(self.s._placed)

    @invariant()
    def every_job_is_in_exactly_one_state(self):
        counts = Counter(self.state.values())
        assert set(counts) <= {"queued", "placed", "finished", "cancelled", "lost"}
        assert self.s.pending == counts["queued"]
        assert self.s.placed == counts["placed"]
        for job, state in self.state.items():
            assert self.s.node_of(job) == (self.where[job] if state == "placed" else None)
        on_nodes = [j for node in self.capacity for j in self.s.jobs_on(node)]
        assert sorted(on_nodes) == sorted(j for j, s in self.state.items() if s == "placed")


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_scheduler_state_machine_keeps_its_invariants = SchedulerMachine.TestCase
