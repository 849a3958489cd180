"""Sharing nodes between computations: whose turn it is, the node-wide bound, fair placement.

The engine uses :func:`place_shared` only while more than one computation is active; with one
(a JobCluster, or an exclusive computation having its turn) ``placement.place`` runs alone and
decides exactly as before. The policy, in plain words, is in the package docstring ("Sharing
nodes"); here is how it is carried out.

A pass of :func:`place_shared` costs O(allocations of the computations with queued jobs) to
set up (each one's count of placed jobs) plus O(log computations + log allocations) per job
placed; the free places and CPUs of a node are summed over its allocations once per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush, heapreplace

from dispy_core.engine.commands import Command
from dispy_core.engine.placement import send, take_pinned
from dispy_core.engine.records import Allocation, Computation, Node
from dispy_core.protocol.jobs import JobStatus

__all__ = ["admitted", "node_free", "place_shared"]

_RUNNING = JobStatus.Running
_NONE: frozenset[int] = frozenset()
_UNBOUNDED = 1 << 62  # a node that did not say its CPUs: only its allocations bound it

HeapEntry = tuple[float, int, int, Allocation]
Free = Callable[[Node], list[int]]


def admitted(comps: Iterable[Computation]) -> list[Computation]:
    """The computations whose turn it is, from all open ones in order of opening: the longest
    prefix in which an exclusive computation may only come first, and nothing follows it.

    A computation once admitted stays admitted: only computations ahead of it leave, and new
    ones join at the end."""
    turn: list[Computation] = []
    for comp in comps:
        if comp.exclusive:
            if not turn:
                turn.append(comp)
            break
        turn.append(comp)
    return turn


def node_free(node: Node) -> tuple[int, int]:
    """``(places, cpus)`` the node has free across all its computations.

    The node's CPUs are ``total_cpus`` (its ``node.info``); its depth, the deepest of its
    allocations' (each follows its own computation's job time). So at most CPUs + depth jobs
    are placed there, and the engine starts at most CPUs of them. A node that did not say its
    CPUs (``total_cpus`` 0) is bounded by its allocations alone, as before sharing."""
    total = node.total_cpus
    if total <= 0:
        return _UNBOUNDED, _UNBOUNDED
    depth = placed = busy = 0
    for alloc in node.allocs.values():
        if alloc.depth > depth:
            depth = alloc.depth
        placed += len(alloc.placed)
        busy += alloc.busy
    return total + depth - placed, total - busy


def place_shared(comps: list[Computation], out: list[Command]) -> None:
    """Place queued jobs of several active computations on their nodes within each node's
    bound: pinned jobs first, then one job at a time to the computation with the fewest
    placed jobs (ties: the one opened first); then one SendJobs per allocation."""
    free_of: dict[Node, list[int]] = {}

    def free(node: Node) -> list[int]:
        lim = free_of.get(node)
        if lim is None:
            lim = free_of[node] = list(node_free(node))
        return lim

    by_alloc: dict[Allocation, list[int]] = {}
    for comp in comps:
        if comp.queued and comp.dirty_pins:
            _place_pinned(comp, by_alloc, free)
    turn = [
        (sum(len(a.placed) for a in comp.allocs.values()), comp.order, comp)
        for comp in comps
        if comp.queued and comp.queue
    ]
    heapify(turn)
    parked: list[tuple[Computation, HeapEntry]] = []  # allocations on full nodes, this pass
    while turn:
        count, order, comp = turn[0]
        alloc = _best(comp, free, parked)
        jid = _next_queued(comp) if alloc is not None else None
        if alloc is None or jid is None:
            heappop(turn)
            continue
        comp.jobs[jid].alloc = alloc
        alloc.placed.add(jid)
        comp.queued -= 1
        by_alloc.setdefault(alloc, []).append(jid)
        free(alloc.node)[0] -= 1
        comp.touch(alloc)
        heapreplace(turn, (count + 1, order, comp))
    for comp, entry in parked:
        heappush(comp.heap, entry)  # still valid unless touched since: the version tells
    for alloc, ids in by_alloc.items():
        if ids:
            _send(alloc, ids, free(alloc.node), out)


def _place_pinned(comp: Computation, by_alloc: dict[Allocation, list[int]], free: Free) -> None:
    dirty, comp.dirty_pins = comp.dirty_pins, {}
    for alloc in dirty:
        lim = free(alloc.node)
        lim[0] -= take_pinned(comp, alloc, min(alloc.room, lim[0]), by_alloc.setdefault(alloc, []))
        comp.touch(alloc)  # files it again for its pinned jobs left, if it has room


def _best(
    comp: Computation, free: Free, parked: list[tuple[Computation, HeapEntry]]
) -> Allocation | None:
    """The computation's least-loaded allocation on a node with a free place, or None. Those
    on full nodes are set aside for this pass (``parked``) and filed again after it."""
    heap = comp.heap
    while True:
        alloc = comp.best()
        if alloc is None or free(alloc.node)[0] > 0:
            return alloc
        parked.append((comp, heappop(heap)))


def _next_queued(comp: Computation) -> int | None:
    """The first live job of the unpinned queue, taken off it (cancelled ones are skipped)."""
    queue, jobs = comp.queue, comp.jobs
    while queue:
        jid = queue.popleft()
        job = jobs.get(jid)
        if job is not None and job.alloc is None:
            return jid
    return None


def _send(alloc: Allocation, ids: list[int], lim: list[int], out: list[Command]) -> None:
    """As ``placement.place`` sends, but jobs start now only on CPUs free on the whole node."""
    lim[1] -= send(alloc, ids, min(alloc.cpus - alloc.busy, lim[1]), out)
