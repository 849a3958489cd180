"""The scheduling engine: which queued job runs on which node, least-loaded first.

Theory of operation
-------------------
The engine knows nodes (with a capacity: the CPUs allocated to the cluster plus an optional
number of jobs to keep queued on the node so its CPUs never wait for the network) and jobs
(opaque hashable keys). ``submit`` queues a job, optionally pinned to one node; ``assign``
returns the ``(job, node)`` pairs to start now, filling the node with the most free room
first; ``finished`` frees the job's slot; ``remove_node`` returns the jobs that were placed on
a dead node (the caller resubmits or cancels them). Cancelling a queued job is O(1) (it is
skipped lazily when it reaches the head of the queue).

It holds no clock, socket or thread, and is shared by JobCluster (one client's jobs) and by
dispy-scheduler (many clients' jobs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

J = TypeVar("J", bound=Hashable)
N = TypeVar("N", bound=Hashable)


@dataclass(slots=True)
class _Node(Generic[J]):
    cpus: int
    extra: int
    running: set[J] = field(default_factory=set)
    pinned: deque[J] = field(default_factory=deque)

    @property
    def capacity(self) -> int:
        return self.cpus + self.extra if self.cpus > 0 else 0

    @property
    def room(self) -> int:
        return self.capacity - len(self.running)


class Scheduler(Generic[J, N]):
    """Assigns jobs to nodes; see the module docstring."""

    def __init__(self) -> None:
        self._nodes: dict[N, _Node[J]] = {}
        self._queue: deque[J] = deque()
        self._queued: set[J] = set()
        self._placed: dict[J, N] = {}
        self._pins: dict[J, N] = {}

    # -- nodes --------------------------------------------------------------------------

    def add_node(self, node: N, cpus: int, extra: int = 0) -> None:
        """Make ``node`` available with ``cpus`` CPUs and ``extra`` queued jobs on top."""
        existing = self._nodes.get(node)
        if existing is None:
            self._nodes[node] = _Node(cpus=cpus, extra=extra)
        else:
            existing.cpus, existing.extra = cpus, extra

    def set_cpus(self, node: N, cpus: int) -> None:
        self._nodes[node].cpus = cpus

    def has_node(self, node: N) -> bool:
        return node in self._nodes

    def nodes(self) -> list[N]:
        return list(self._nodes)

    def remove_node(self, node: N) -> list[J]:
        """Forget ``node``; return the jobs that were placed there or pinned to it."""
        state = self._nodes.pop(node, None)
        if state is None:
            return []
        lost = list(state.running)
        for job in lost:
            del self._placed[job]
        for job in state.pinned:
            if job in self._queued and self._pins.get(job) == node:
                self._queued.discard(job)
                self._pins.pop(job, None)
                lost.append(job)
        return lost

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, job: J, node: N | None = None, *, front: bool = False) -> None:
        """Queue ``job``; with ``node`` it may run only there."""
        if job in self._queued or job in self._placed:
            raise ValueError(f"job {job!r} is already scheduled")
        if node is not None:
            if node not in self._nodes:
                raise KeyError(node)
            self._pins[job] = node
            queue = self._nodes[node].pinned
        else:
            queue = self._queue
        self._queued.add(job)
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)

    def cancel(self, job: J) -> Literal["queued", "placed"] | None:
        """Drop a queued job, or say that it is placed (the caller must stop it)."""
        if job in self._queued:
            self._queued.discard(job)
            self._pins.pop(job, None)
            return "queued"
        if job in self._placed:
            return "placed"
        return None

    def finished(self, job: J) -> N | None:
        """A placed job ended (any way): free its slot; return its node."""
        node = self._placed.pop(job, None)
        if node is not None:
            state = self._nodes.get(node)
            if state is not None:
                state.running.discard(job)
        return node

    def node_of(self, job: J) -> N | None:
        return self._placed.get(job)

    def jobs_on(self, node: N) -> list[J]:
        state = self._nodes.get(node)
        return list(state.running) if state else []

    @property
    def pending(self) -> int:
        return len(self._queued)

    @property
    def placed(self) -> int:
        return len(self._placed)

    def assign(self) -> list[tuple[J, N]]:
        """The jobs to start now and where; the engine considers them placed."""
        out: list[tuple[J, N]] = []
        if not self._queued:
            return out
        for node, state in self._nodes.items():
            while state.pinned and state.room > 0:
                job = state.pinned.popleft()
                # A cancelled job may come back pinned elsewhere: skip stale entries.
                if job in self._queued and self._pins.get(job) == node:
                    self._place(job, node, state)
                    out.append((job, node))
        while self._queue:
            best: tuple[N, _Node[J]] | None = None
            best_free = 0.0
            for node, state in self._nodes.items():
                if state.room <= 0:
                    continue
                free = state.room / state.capacity
                if best is None or free > best_free:
                    best, best_free = (node, state), free
            if best is None:
                break
            job = self._queue.popleft()
            if job not in self._queued or job in self._pins:
                continue
            self._place(job, best[0], best[1])
            out.append((job, best[0]))
        return out

    def _place(self, job: J, node: N, state: _Node[J]) -> None:
        self._queued.discard(job)
        self._pins.pop(job, None)
        self._placed[job] = node
        state.running.add(job)
