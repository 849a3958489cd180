"""The engine's state: computations, nodes, allocations and jobs, and the checked job move.

These records are mutated only by :class:`~dispy_core.engine.machine.Engine` (the shell may
read them through the engine's queries). Jobs are kept small (slots, four fields) because a
cluster may hold millions of them queued.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from dispy_core.protocol.jobs import TRANSITIONS, JobStatus

NodeKey = tuple[str, int]

__all__ = ["Allocation", "Computation", "EngineError", "Job", "Node", "move"]

_ALLOWED = {old: frozenset(new) for old, new in TRANSITIONS.items()}
_NONE: frozenset[JobStatus] = frozenset()


class EngineError(RuntimeError):
    """The engine was driven against its rules (an illegal job transition, an unknown
    computation, a job id used twice): a bug in the shell or in the engine, never the
    peer's doing (a peer's stale or unknown reports are ignored, not raised)."""


@dataclass(slots=True, eq=False)
class Job:
    """A job of one computation. ``alloc`` is None while queued; while placed, ``status``
    Created means sent ahead (waiting in the node's queue) and Running means started."""

    job_id: int
    status: JobStatus = JobStatus.Created
    alloc: Allocation | None = None
    pinned: NodeKey | None = None


def move(job: Job, new: JobStatus) -> None:
    """Move ``job`` to ``new`` as protocol/jobs.py's TRANSITIONS allow, else raise."""
    if new not in _ALLOWED.get(job.status, _NONE):
        raise EngineError(f"job {job.job_id}: {job.status.name} -> {new.name} is not allowed")
    job.status = new


@dataclass(slots=True, eq=False)
class Allocation:
    """The CPUs one node gives one computation, and the jobs placed there.

    ``capacity`` = ``cpus`` + ``depth`` is how many jobs may be placed (sent) at once; ``busy``
    of them are Running, the rest wait in the node's queue. ``version`` changes whenever the
    free fraction may have changed, which invalidates older heap entries.
    """

    node: Node
    comp: Computation
    cpus: int
    depth: int
    seq: int
    placed: set[int] = field(default_factory=set)
    busy: int = 0
    job_time: float = 0.0  # moving average of job run time here
    pinned: deque[int] = field(default_factory=deque)
    version: int = 0

    @property
    def capacity(self) -> int:
        return self.cpus + self.depth if self.cpus > 0 else 0

    @property
    def room(self) -> int:
        return self.capacity - len(self.placed)


@dataclass(slots=True, eq=False)
class Node:
    """A node as the engine knows it: when it was last heard, its CPUs (0: not said) and
    what it gives to whom (its CPUs bound them all together: ``sharing.node_free``)."""

    key: NodeKey
    last_heard: float
    total_cpus: int = 0
    allocs: dict[int, Allocation] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Computation:
    """One computation's jobs, its queue, and the allocations of nodes serving it.

    ``heap`` holds ``(-free fraction, seq, version, allocation)``: the least-loaded
    allocation is on top (ties go to the one that joined first, as a scan in join order
    would pick); entries whose version is old are dropped when they surface.
    """

    comp_id: int
    reentrant: bool
    dead_after: float
    closing: bool = False
    jobs: dict[int, Job] = field(default_factory=dict)
    queue: deque[int] = field(default_factory=deque)  # unpinned, lazily skips stale ids
    queued: int = 0  # jobs queued, pinned or not
    allocs: dict[NodeKey, Allocation] = field(default_factory=dict)
    heap: list[tuple[float, int, int, Allocation]] = field(default_factory=list)
    # allocations with room and maybe pinned jobs (a dict: ordered, so runs repeat)
    dirty_pins: dict[Allocation, None] = field(default_factory=dict)
    job_bytes: float = 0.0  # moving size of arguments: up at once, down slowly
    depth_bytes: float = 0.0  # job_bytes when depths were last set
    exclusive: bool = False  # wants the nodes alone (see sharing.py)
    active: bool = True  # False while it waits for its turn: nothing is placed for it
    order: int = 0  # when it was opened: ties in fair placement go to the older one

    def touch(self, alloc: Allocation) -> None:
        """``alloc``'s room changed: file it again in the heap (and for its pinned jobs)."""
        alloc.version += 1
        capacity = alloc.capacity
        if capacity > 0:
            room = capacity - len(alloc.placed)
            if room > 0:
                heapq.heappush(self.heap, (-room / capacity, alloc.seq, alloc.version, alloc))
                if alloc.pinned:
                    self.dirty_pins[alloc] = None
        # Results keep coming while nothing is queued: bound the heap (compact, inlined).
        if len(self.heap) > 4 * len(self.allocs) + 64:
            self.compact()

    def best(self) -> Allocation | None:
        """The allocation with the largest free fraction (room left), or None."""
        heap = self.heap
        while heap:
            _free, _seq, version, alloc = heap[0]
            # alloc.room > 0, inlined (once per placed job)
            if (
                version == alloc.version
                and alloc.cpus > 0
                and (alloc.cpus + alloc.depth > len(alloc.placed))
            ):
                return alloc
            heapq.heappop(heap)
        return None

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones (amortised O(1))."""
        heap = self.heap
        if len(heap) > 4 * len(self.allocs) + 64:
            heap[:] = [entry for entry in heap if entry[2] == entry[3].version]
            heapq.heapify(heap)
