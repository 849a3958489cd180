"""Placement: which queued jobs go to which allocation now, and which of them start at once.

Called by the engine after every batch of events while one computation is active (several
share nodes through ``sharing.place_shared``). Per job it costs O(log allocations): the
least-loaded allocation is on top of the computation's heap (``records.Computation.best``).
"""

from __future__ import annotations

from heapq import heappop, heapreplace

from dispy_core.engine.commands import Command, JobsRunning, SendJobs
from dispy_core.engine.records import Allocation, Computation, move
from dispy_core.protocol.jobs import JobStatus

__all__ = ["place", "send", "take_pinned"]

_RUNNING = JobStatus.Running
_NONE: frozenset[int] = frozenset()


def place(comp: Computation, out: list[Command]) -> None:
    """Pinned jobs first (each only on its node), then the queue, each job on the
    allocation with the largest free fraction; then one SendJobs per allocation."""
    jobs = comp.jobs
    by_alloc: dict[Allocation, list[int]] = {}
    if comp.dirty_pins:
        dirty, comp.dirty_pins = comp.dirty_pins, {}
        for alloc in dirty:
            take_pinned(comp, alloc, alloc.room, by_alloc.setdefault(alloc, []))
            comp.touch(alloc)
    queue, heap = comp.queue, comp.heap
    while queue and comp.queued:
        target = comp.best()  # now valid and on top of the heap
        if target is None:
            break
        jid = queue.popleft()
        job = jobs.get(jid)
        if job is None or job.alloc is not None:
            continue  # cancelled while queued (pinned jobs never enter this queue)
        job.alloc = target
        placed = target.placed
        placed.add(jid)
        comp.queued -= 1
        batch = by_alloc.get(target)
        if batch is None:
            by_alloc[target] = [jid]
        else:
            batch.append(jid)
        # What Computation.touch does, with one sift instead of a push and a later pop.
        target.version += 1
        capacity = target.cpus + target.depth
        room = capacity - len(placed)
        if room > 0:
            heapreplace(heap, (-room / capacity, target.seq, target.version, target))
        else:
            heappop(heap)
    if len(heap) > 4 * len(comp.allocs) + 64:
        comp.compact()
    for alloc, ids in by_alloc.items():
        if ids:
            send(alloc, ids, alloc.cpus - alloc.busy, out)


def take_pinned(comp: Computation, alloc: Allocation, room: int, ids: list[int]) -> int:
    """Place up to ``room`` of ``alloc``'s pinned jobs there, appending them to ``ids``;
    return how many."""
    jobs, pinned, placed = comp.jobs, alloc.pinned, alloc.placed
    taken = 0
    while pinned and taken < room:
        jid = pinned.popleft()
        job = jobs.get(jid)
        if job is None or job.alloc is not None:
            continue  # cancelled while queued
        job.alloc = alloc
        placed.add(jid)
        ids.append(jid)
        taken += 1
    comp.queued -= taken
    return taken


def send(alloc: Allocation, ids: list[int], free: int, out: list[Command]) -> int:
    """One SendJobs of ``ids`` to ``alloc``; the first ``free`` run now (JobsRunning).

    Jobs that fill free CPUs run now; the rest wait on the node (so its CPUs never wait for
    the network) and the node says when each of them starts. Returns how many started.
    """
    if free >= len(ids):
        start, ahead = ids, _NONE
    else:
        free = free if free > 0 else 0
        start, ahead = ids[:free], frozenset(ids[free:])
    jobs = alloc.comp.jobs
    for jid in start:
        move(jobs[jid], _RUNNING)
    alloc.busy += len(start)
    key, comp_id = alloc.node.key, alloc.comp.comp_id
    out.append(SendJobs(key, comp_id, tuple(ids), ahead))
    if start:
        out.append(JobsRunning(key, comp_id, tuple(start)))
    return len(start)
