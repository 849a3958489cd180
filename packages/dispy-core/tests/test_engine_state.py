"""The engine under random events (Hypothesis stateful testing), checked after every step.

A model of the world (which jobs each fake node holds, which nodes are up) consumes the
engine's commands and checks each against the rules; invariants compare the model with the
engine after every step, and teardown drops every computation so each job must have ended
exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dispy_core.engine import (
    CancelRequested,
    Command,
    ComputationActive,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    ComputationWaiting,
    Engine,
    Event,
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
    ResultsAccepted,
    SendCancel,
    SendJobs,
    Tick,
)
from dispy_core.protocol.jobs import JobStatus, NodeStatus

NODES = [(f"10.0.0.{i}", 51348) for i in range(1, 5)]
PULSE = 1.0  # dead after 5 s of silence


@dataclass
class MJob:
    pin: tuple[str, int] | None
    node: tuple[str, int] | None = None
    state: str = "queued"  # queued | ahead | running | ended
    ends: int = 0


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine()
        self.now = 0.0
        self.next_comp = 1
        self.next_job = 0
        self.open: dict[int, bool] = {}  # comp -> reentrant
        self.closing: set[int] = set()
        self.up: dict[tuple[int, tuple[str, int]], int] = {}  # (comp, node) -> cpus
        self.jobs: dict[tuple[int, int], MJob] = {}
        self.all_jobs: dict[tuple[int, int], MJob] = {}
        self.lost_reason: dict[tuple[int, tuple[str, int]], str] = {}

    # -- driving -----------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        self.apply(self.engine.handle(event, self.now))

    def apply(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, SendJobs):
                assert (cmd.comp_id, cmd.node) in self.up, "sent to a node that is not up"
                assert cmd.ahead <= set(cmd.job_ids)
                for jid in cmd.job_ids:
                    job = self.jobs[cmd.comp_id, jid]
                    assert job.state == "queued", "job placed twice"
                    assert job.pin in (None, cmd.node), "pinned job on another node"
                    job.node = cmd.node
                    job.state = "ahead"
                alloc = self.engine.allocation(cmd.comp_id, cmd.node)
                assert alloc is not None
                assert len(alloc.placed) <= alloc.capacity
            elif isinstance(cmd, JobsRunning):
                for jid in cmd.job_ids:
                    job = self.jobs[cmd.comp_id, jid]
                    assert job.node == cmd.node
                    assert job.state == "ahead"
                    job.state = "running"
                running = self.on_node(cmd.comp_id, cmd.node, "running")
                assert len(running) <= self.up[cmd.comp_id, cmd.node], "more running than CPUs"
            elif isinstance(cmd, SendCancel):
                assert (cmd.comp_id, cmd.node) in self.up
                for jid in cmd.job_ids:
                    assert self.jobs[cmd.comp_id, jid].node == cmd.node
            elif isinstance(cmd, ResultsAccepted):
                for jid in cmd.job_ids:
                    job = self.jobs.pop((cmd.comp_id, jid))
                    assert job.node == cmd.node
                    assert job.state in ("ahead", "running")
                    self.end(job)
            elif isinstance(cmd, JobEnded):
                job = self.jobs.pop((cmd.comp_id, cmd.job_id))
                if cmd.reason.startswith("Cancelled: node "):
                    key = (cmd.comp_id, job.node or job.pin)
                    reason = self.lost_reason[key]
                    assert cmd.reason == f"Cancelled: node {key[1][0]}:{key[1][1]} {reason}"
                    assert not self.open[cmd.comp_id] or job.pin or cmd.comp_id in self.closing
                self.end(job)
            elif isinstance(cmd, JobRequeued):
                job = self.jobs[cmd.comp_id, cmd.job_id]
                assert self.open[cmd.comp_id]
                assert job.pin is None
                assert cmd.comp_id not in self.closing
                assert (cmd.comp_id, job.node) in self.lost_reason
                job.node, job.state = None, "queued"
            elif isinstance(cmd, NodeStatusChanged):
                key = (cmd.comp_id, cmd.node)
                if cmd.status == NodeStatus.Initialized:
                    assert key in self.up
                else:
                    assert key in self.lost_reason
                    assert cmd.status == (
                        NodeStatus.Closed if cmd.reason is None else NodeStatus.AbandonedNode
                    )
            elif isinstance(cmd, NodeDeclaredDead):
                pass
            else:  # pragma: no cover
                raise AssertionError(cmd)

    def end(self, job: MJob) -> None:
        job.ends += 1
        job.state = "ended"
        job.node = None

    def lose(self, comp: int, node: tuple[str, int], reason: str) -> None:
        del self.up[comp, node]
        self.lost_reason[comp, node] = reason

    # -- rules --------------------------------------------------------------------------

    @initialize(cpus=st.integers(1, 3))
    def two_computations_two_nodes(self, cpus: int) -> None:
        for reentrant in (True, False):
            self.open_computation(reentrant)
        for comp in self.open:
            for node in NODES[:2]:
                self.up[comp, node] = cpus
                self.feed(NodeReady(node, comp, cpus, 8))

    @precondition(lambda self: len(self.open) < 3)
    @rule(reentrant=st.booleans())
    def open_computation(self, reentrant: bool) -> None:
        comp = self.next_comp
        self.next_comp += 1
        self.open[comp] = reentrant
        self.feed(ComputationOpened(comp, reentrant=reentrant, pulse_interval=PULSE))

    @precondition(lambda self: len(self.open) > 1)
    @rule(data=st.data(), terminate=st.booleans())
    def close_computation(self, data: st.DataObject, terminate: bool) -> None:
        comp = data.draw(st.sampled_from(sorted(self.open)))
        self.closing.add(comp)
        self.feed(ComputationClosed(comp, terminate))

    @precondition(lambda self: len(self.open) > 1)
    @rule(data=st.data())
    def drop_computation(self, data: st.DataObject) -> None:
        comp = data.draw(st.sampled_from(sorted(self.open)))
        self.feed(ComputationDropped(comp))
        for key in [k for k in self.up if k[0] == comp]:
            del self.up[key]
        del self.open[comp]
        assert not any(c == comp for c, _ in self.jobs)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), node=st.sampled_from(NODES), cpus=st.integers(1, 4))
    def node_ready(self, data: st.DataObject, node: tuple[str, int], cpus: int) -> None:
        comp = data.draw(st.sampled_from(sorted(self.open)))
        self.up[comp, node] = cpus
        self.lost_reason.pop((comp, node), None)
        self.feed(NodeReady(node, comp, cpus, 8))

    @precondition(lambda self: self.up)
    @rule(data=st.data(), cpus=st.integers(1, 4))
    def cpus_changed(self, data: st.DataObject, cpus: int) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        self.up[comp, node] = cpus
        self.feed(NodeCpusChanged(node, comp, cpus))

    @precondition(lambda self: self.up)
    @rule(data=st.data(), reason=st.sampled_from(["closed", "connection lost: reset"]))
    def node_lost(self, data: st.DataObject, reason: str) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        whole = data.draw(st.booleans())
        for key in [k for k in self.up if k[1] == node and (whole or k[0] == comp)]:
            self.lose(key[0], node, reason)
        self.feed(NodeLost(node, reason, None if whole else comp))

    @rule(dt=st.sampled_from([0.5, 2.0, 4.0]), silent=st.sets(st.sampled_from(NODES), max_size=1))
    def tick(self, dt: float, silent: set[tuple[str, int]]) -> None:
        for node in NODES:
            if node not in silent:
                self.feed(NodeHeard(node))
        self.now += dt
        cmds = self.engine.handle(Tick(), self.now)
        for cmd in cmds:
            if isinstance(cmd, NodeDeclaredDead):
                for key in [k for k in self.up if k[1] == cmd.node]:
                    self.lose(key[0], cmd.node, cmd.reason)
        dead = {c.node for c in cmds if isinstance(c, NodeDeclaredDead)}
        for cmd in cmds:
            if isinstance(cmd, NodeStatusChanged) and cmd.node in dead:
                self.lost_reason[cmd.comp_id, cmd.node] = cmd.reason or ""
        self.apply(cmds)

    @precondition(lambda self: self.open)
    @rule(
        data=st.data(),
        count=st.integers(1, 6),
        pinned=st.booleans(),
        size=st.sampled_from([10, 1 << 24]),
    )
    def submit(self, data: st.DataObject, count: int, pinned: bool, size: int) -> None:
        comp = data.draw(st.sampled_from(sorted(self.open)))
        pin = data.draw(st.sampled_from(NODES)) if pinned else None
        specs = []
        for _ in range(count):
            jid = self.next_job
            self.next_job += 1
            self.jobs[comp, jid] = self.all_jobs[comp, jid] = MJob(pin)
            specs.append(JobSpec(jid, size, pin))
        self.feed(JobsSubmitted(comp, tuple(specs)))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        comp, jid = data.draw(st.sampled_from(sorted(self.jobs)))
        self.feed(CancelRequested(comp, (jid,)))

    def on_node(self, comp: int, node: tuple[str, int], state: str) -> list[int]:
        return sorted(
            j
            for (c, j), m in self.jobs.items()
            if c == comp and m.node == node and m.state == state
        )

    @precondition(lambda self: self.up)
    @rule(data=st.data())
    def node_starts_jobs(self, data: st.DataObject) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        room = self.up[comp, node] - len(self.on_node(comp, node, "running"))
        ahead = self.on_node(comp, node, "ahead")[: max(0, room)]
        again = self.on_node(comp, node, "running")[:1]  # a repeated report changes nothing
        if ahead or again:
            self.feed(JobsStarted(node, comp, tuple(ahead + again)))

    @precondition(lambda self: self.up)
    @rule(data=st.data())
    def node_starts_more(self, data: st.DataObject) -> None:
        self.node_starts_jobs(data)

    @precondition(lambda self: self.up)
    @rule(data=st.data())
    def node_reports_more(self, data: st.DataObject) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        running = self.on_node(comp, node, "running")[:2]
        if running:
            reports = tuple(JobReport(j, "finished", 0.0, 0.01) for j in running)
            self.feed(JobsDone(node, comp, reports))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), count=st.integers(1, 6))
    def submit_more(self, data: st.DataObject, count: int) -> None:
        self.submit(data, count, False, 10)

    @precondition(lambda self: self.up)
    @rule(data=st.data(), count=st.integers(4, 12))
    def submit_pinned_to_a_node_up(self, data: st.DataObject, count: int) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        specs = []
        for _ in range(count):
            jid = self.next_job
            self.next_job += 1
            self.jobs[comp, jid] = self.all_jobs[comp, jid] = MJob(node)
            specs.append(JobSpec(jid, 10, node))
        self.feed(JobsSubmitted(comp, tuple(specs)))

    @precondition(lambda self: self.up)
    @rule(data=st.data(), outcome=st.sampled_from(["finished", "cancelled", "terminated"]))
    def node_reports_done(self, data: st.DataObject, outcome: str) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        held = self.on_node(comp, node, "running") + self.on_node(comp, node, "ahead")
        # stale reports: jobs that ended, or that this node no longer holds (moved on)
        stale = [j for (c, j), m in self.all_jobs.items() if c == comp and m.state == "ended"][:2]
        stale += [j for (c, j), m in self.jobs.items() if c == comp and m.node not in (None, node)][
            :2
        ]
        ids = (
            data.draw(st.lists(st.sampled_from(held + stale), unique=True)) if held + stale else []
        )
        if ids:
            reports = tuple(JobReport(j, outcome, 0.0, 0.01) for j in ids)  # type: ignore[arg-type]
            self.feed(JobsDone(node, comp, reports))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def each_job_in_exactly_one_place(self) -> None:
        eng = self.engine
        for comp in self.open:
            live = {j: m for (c, j), m in self.jobs.items() if c == comp}
            assert eng.live(comp) == len(live)
            assert eng.pending(comp) == sum(m.state == "queued" for m in live.values())
            for jid, m in live.items():
                status = eng.job_status(comp, jid)
                assert status is not None
                assert status[1] == m.node
                expected = {"queued": JobStatus.Created, "ahead": JobStatus.Created}
                assert status[0] == expected.get(m.state, JobStatus.Running)
        for m in self.all_jobs.values():
            assert m.ends <= 1

    @invariant()
    def nodes_hold_no_more_than_allowed(self) -> None:
        for (comp, node), cpus in self.up.items():
            alloc = self.engine.allocation(comp, node)
            assert alloc is not None
            assert alloc.cpus == cpus
            running = self.on_node(comp, node, "running")
            held = running + self.on_node(comp, node, "ahead")
            assert alloc.busy == len(running)
            assert sorted(alloc.placed) == sorted(held)
            pinned_elsewhere = [j for j in held if self.jobs[comp, j].pin not in (None, node)]
            assert not pinned_elsewhere
        for comp in self.open:
            assert set(self.engine.nodes(comp)) == {n for c, n in self.up if c == comp}

    def teardown(self) -> None:
        for comp in list(self.open):
            self.feed(ComputationDropped(comp))
        assert not self.jobs
        assert all(m.ends == 1 for m in self.all_jobs.values())


EngineMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestEngineMachine = EngineMachine.TestCase


TOTAL = 3  # each node's CPUs, shared by the computations it serves


class SharedNodesMachine(EngineMachine):
    """The same world, with nodes that say their CPUs (``TOTAL``) and run no more jobs than
    that across computations, and computations that may be ``exclusive``. Checks that a node
    never holds more than its CPUs + depth placed, nor more than its CPUs started, and that
    exactly the computations whose turn it is get jobs placed."""

    def __init__(self) -> None:
        super().__init__()
        self.exclusive: set[int] = set()
        self.waiting: set[int] = set()

    def apply(self, cmds: list[Command]) -> None:
        rest = []
        for cmd in cmds:
            if isinstance(cmd, ComputationWaiting):
                assert cmd.comp_id not in self.waiting
                self.waiting.add(cmd.comp_id)
            elif isinstance(cmd, ComputationActive):
                self.waiting.remove(cmd.comp_id)
            else:
                rest.append(cmd)
        super().apply(rest)
        for node in {c.node for c in rest if isinstance(c, SendJobs)}:
            allocs = [self.engine.allocation(c, node) for c in self.open]
            held = [a for a in allocs if a is not None]
            depth = max(a.depth for a in held)
            assert sum(len(a.placed) for a in held) <= TOTAL + depth, "node over its bound"

    @precondition(lambda self: len(self.open) > 1)
    @rule(data=st.data())
    def drop_computation(self, data: st.DataObject) -> None:
        before = set(self.open)
        super().drop_computation(data)
        self.waiting -= before - set(self.open)  # a dropped one waits no more

    @initialize(cpus=st.integers(1, TOTAL))
    def two_computations_two_nodes(self, cpus: int) -> None:
        for reentrant in (True, False):
            self.open_computation(reentrant)
        for comp in self.open:
            for node in NODES[:2]:
                self.up[comp, node] = cpus
                self.feed(NodeReady(node, comp, cpus, TOTAL))

    @precondition(lambda self: len(self.open) < 3)
    @rule(reentrant=st.booleans())
    def open_exclusive(self, reentrant: bool) -> None:
        comp = self.next_comp
        self.next_comp += 1
        self.open[comp] = reentrant
        self.exclusive.add(comp)
        self.feed(ComputationOpened(comp, reentrant, PULSE, exclusive=True))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), node=st.sampled_from(NODES), cpus=st.integers(1, TOTAL))
    def node_ready(self, data: st.DataObject, node: tuple[str, int], cpus: int) -> None:
        comp = data.draw(st.sampled_from(sorted(self.open)))
        self.up[comp, node] = cpus
        self.lost_reason.pop((comp, node), None)
        self.feed(NodeReady(node, comp, cpus, TOTAL))

    @precondition(lambda self: self.up)
    @rule(data=st.data(), cpus=st.integers(1, TOTAL))
    def cpus_changed(self, data: st.DataObject, cpus: int) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        self.up[comp, node] = cpus
        self.feed(NodeCpusChanged(node, comp, cpus))

    def running_on(self, node: tuple[str, int]) -> int:
        return sum(m.node == node and m.state == "running" for m in self.jobs.values())

    @precondition(lambda self: self.up)
    @rule(data=st.data())
    def node_starts_jobs(self, data: st.DataObject) -> None:
        comp, node = data.draw(st.sampled_from(sorted(self.up)))
        own = self.up[comp, node] - len(self.on_node(comp, node, "running"))
        room = min(own, TOTAL - self.running_on(node))  # the node shares its CPUs
        ahead = self.on_node(comp, node, "ahead")[: max(0, room)]
        again = self.on_node(comp, node, "running")[:1]
        if ahead or again:
            self.feed(JobsStarted(node, comp, tuple(ahead + again)))

    @invariant()
    def nodes_run_no_more_than_their_cpus(self) -> None:
        for node in NODES:
            assert self.running_on(node) <= TOTAL

    @invariant()
    def only_computations_whose_turn_it_is_get_jobs(self) -> None:
        turn: set[int] = set()
        for comp in sorted(self.open):  # ids grow: this is the order of opening
            if comp in self.exclusive:
                if not turn:
                    turn.add(comp)
                break
            turn.add(comp)
        assert self.waiting == set(self.open) - turn
        for (comp, _), m in self.jobs.items():
            assert comp in turn or m.state == "queued"


SharedNodesMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestSharedNodesMachine = SharedNodesMachine.TestCase
