"""Computations sharing nodes: the node-wide bound, fair placement, and exclusive turns."""

from __future__ import annotations

from dataclasses import dataclass, field

from dispy_core.engine import (
    Command,
    ComputationActive,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    ComputationWaiting,
    Engine,
    JobReport,
    JobsDone,
    JobSpec,
    JobsRunning,
    JobsStarted,
    JobsSubmitted,
    NodeReady,
    SendJobs,
)

A, B = ("10.0.0.1", 51348), ("10.0.0.2", 51348)


@dataclass
class FakeNode:
    """A node that runs what the engine starts, and starts what waits (in order of arrival,
    across computations) when its CPUs free up."""

    key: tuple[str, int]
    cpus: int
    running: list[tuple[int, int]] = field(default_factory=list)  # (comp, job)
    waiting: list[tuple[int, int]] = field(default_factory=list)


class World:
    def __init__(self, nodes: list[FakeNode]) -> None:
        self.engine = Engine()
        self.nodes = {n.key: n for n in nodes}
        self.now = 0.0
        self.done: dict[int, list[int]] = {}  # comp -> jobs ended, in order
        self.steps = 0

    def feed(self, event: object) -> list[Command]:
        if isinstance(event, ComputationDropped):  # its jobs end on the nodes too
            for node in self.nodes.values():
                node.running = [(c, j) for c, j in node.running if c != event.comp_id]
                node.waiting = [(c, j) for c, j in node.waiting if c != event.comp_id]
        cmds = self.engine.handle(event, self.now)  # type: ignore[arg-type]
        self.apply(cmds)
        return cmds

    def apply(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, SendJobs):
                node = self.nodes[cmd.node]
                for jid in cmd.job_ids:
                    if jid in cmd.ahead:
                        node.waiting.append((cmd.comp_id, jid))
                    else:
                        node.running.append((cmd.comp_id, jid))
                self.check(node)
            elif isinstance(cmd, JobsRunning):
                self.check(self.nodes[cmd.node])

    def check(self, node: FakeNode) -> None:
        assert len(node.running) <= node.cpus, "more jobs run than the node has CPUs"
        depth = max(a.depth for a in self.engine._nodes[node.key].allocs.values())
        assert len(node.running) + len(node.waiting) <= node.cpus + depth

    def open(self, comp: int, *, exclusive: bool = False, cpus: int | None = None) -> list:
        cmds = self.feed(ComputationOpened(comp, exclusive=exclusive))
        for node in self.nodes.values():
            self.feed(NodeReady(node.key, comp, cpus or node.cpus, node.cpus))
        return cmds

    def submit(self, comp: int, ids: range) -> None:
        self.feed(JobsSubmitted(comp, tuple(JobSpec(i, 100) for i in ids)))

    def step(self) -> None:
        """Every node finishes its running jobs, then starts what waits."""
        self.steps += 1
        self.now += 1.0
        for node in self.nodes.values():
            finished, node.running = node.running, []
            for comp in sorted({c for c, _ in finished}):
                ids = [j for c, j in finished if c == comp]
                self.done.setdefault(comp, []).extend(ids)
                reports = tuple(JobReport(j, "finished", self.now - 1.0, self.now) for j in ids)
                self.feed(JobsDone(node.key, comp, reports))
            free = node.cpus - len(node.running)
            starting, node.waiting = node.waiting[:free], node.waiting[free:]
            node.running.extend(starting)
            for comp in sorted({c for c, _ in starting}):
                ids = tuple(j for c, j in starting if c == comp)
                self.feed(JobsStarted(node.key, comp, ids))
            self.check(node)


def test_two_computations_on_one_node_never_exceed_its_cpus():
    world = World([FakeNode(A, 4)])
    world.open(1)
    world.open(2)
    specs = tuple(JobSpec(i, 100) for i in range(30))
    world.apply(world.engine.handle_many([JobsSubmitted(c, specs) for c in (1, 2)], 0.0))
    placed = [len(world.engine.allocation(c, A).placed) for c in (1, 2)]  # type: ignore[union-attr]
    assert sum(placed) == 4 + 4  # CPUs + one job ahead per CPU, not twice that
    assert placed == [4, 4]  # shared evenly
    while world.engine.live(1) or world.engine.live(2):
        world.step()  # World.check asserts the bound after every command
    assert sorted(world.done[1]) == list(range(30))
    assert sorted(world.done[2]) == list(range(30))


def test_a_small_computation_is_not_starved_by_a_big_one():
    world = World([FakeNode(A, 4), FakeNode(B, 4)])
    world.open(1)
    world.submit(1, range(10_000))
    world.step()
    world.open(2)
    world.submit(2, range(10))
    small_done_at = None
    while world.engine.live(1):
        world.step()
        if small_done_at is None and not world.engine.live(2):
            small_done_at = world.steps
    assert small_done_at is not None
    # 8 CPUs: the small one takes the next freed places and ends within a few steps,
    # the big one needs about 10,000 / 8 steps
    assert small_done_at <= 5
    assert world.steps >= 1_000


def test_a_node_without_its_total_is_bounded_by_its_allocations_alone():
    eng = Engine()
    for comp in (1, 2):
        eng.handle(ComputationOpened(comp), 0)
        eng.handle(NodeReady(A, comp, cpus=2), 0)  # total_cpus unknown
    for comp in (1, 2):
        eng.handle(JobsSubmitted(comp, tuple(JobSpec(i) for i in range(9))), 0)
        assert len(eng.node_jobs(comp, A)) == 2


def test_exclusive_waits_for_those_before_and_those_after_wait_for_it():
    world = World([FakeNode(A, 2), FakeNode(B, 2)])
    eng = world.engine
    assert world.open(1) == []
    assert world.open(9, exclusive=True) == [ComputationWaiting(9)]
    assert world.open(2) == [ComputationWaiting(2)]
    for comp in (1, 9, 2):
        world.submit(comp, range(6))
    assert eng.pending(1) == 0  # all six placed on two nodes of 2 + 2
    assert eng.pending(9) == eng.pending(2) == 6
    world.step()
    world.feed(ComputationClosed(1))  # closing is not enough: its jobs still hold the nodes
    while eng.live(1):
        assert eng.pending(9) == 6
        world.step()
    cmds = world.feed(ComputationDropped(1))
    assert cmds[0] == ComputationActive(9)
    assert eng.pending(9) == 0
    assert eng.pending(2) == 6
    while eng.live(9):
        world.step()
        assert eng.pending(2) == 6
    cmds = world.feed(ComputationDropped(9))
    assert cmds[0] == ComputationActive(2)
    assert eng.pending(2) == 0


def test_exclusive_alone_starts_at_once_and_later_ones_queue_in_order():
    world = World([FakeNode(A, 2)])
    assert world.open(9, exclusive=True) == []
    assert world.open(1) == [ComputationWaiting(1)]
    assert world.open(8, exclusive=True) == [ComputationWaiting(8)]
    assert world.open(2) == [ComputationWaiting(2)]
    for comp in (1, 8, 2):
        world.submit(comp, range(3))
    assert ComputationActive(1) in world.feed(ComputationDropped(9))
    assert world.engine.pending(8) == world.engine.pending(2) == 3
    assert ComputationActive(8) in world.feed(ComputationDropped(1))
    assert world.engine.pending(2) == 3
    assert ComputationActive(2) in world.feed(ComputationDropped(8))
    assert world.engine.pending(2) == 0
