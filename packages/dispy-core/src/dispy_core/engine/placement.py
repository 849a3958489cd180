"""Placement: which queued jobs go to which allocation now, and which of them start at once.

Called by the engine after every batch of events while one computation is active (several
share nodes through ``sharing.place_shared``). Per job it costs O(log allocations): the
least-loaded allocation is on top of the computation's heap (``records.Computation.best``).
"""

from __future__ import annotations

from heapq import heappop, heapreplace

from dispy_core.engine import policy
from dispy_core.engine.commands import Command, JobsRunning, SendJobs
from dispy_core.engine.events import JobSpec
from dispy_core.engine.records import Allocation, Computation, Job, move
from dispy_core.protocol.jobs import JobStatus

__all__ = ["place", "place_lone", "send", "take_pinned"]

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


def place_lone(comp: Computation, spec: JobSpec, out: list[Command]) -> bool:
    """One unpinned job submitted while nothing else waits (no queue, no pinned job ready
    to place): place it as :func:`place` would, without the queue and the batching, or
    return False (nothing changed) for the general path to take it.

    A job at a time (a program that waits for each result) is the common case that needs
    latency; the general path's per-batch work is most of the engine's cost then.
    """
    jid = spec.job_id
    jobs = comp.jobs
    if spec.pinned is not None or jid in jobs:
        return False
    average = comp.job_bytes
    if spec.size is not None:
        average = policy.job_bytes(average, spec.size)
        if policy.outgrown(average, comp.depth_bytes):
            return False  # the general path sizes the nodes' queues again first
    target = comp.best()  # only drops stale heap entries, as place() would
    if target is None:
        return False
    comp.job_bytes = average
    job = jobs[jid] = Job(jid)
    job.alloc = target
    placed = target.placed
    placed.add(jid)
    heap = comp.heap
    # As in place(): the target is on top of the heap; one sift files it again.
    target.version += 1
    capacity = target.cpus + target.depth
    room = capacity - len(placed)
    if room > 0:
        heapreplace(heap, (-room / capacity, target.seq, target.version, target))
    else:
        heappop(heap)
    if len(heap) > 4 * len(comp.allocs) + 64:
        comp.compact()
    # send(), for one job: it starts now if a CPU is free, else waits on the node.
    key, comp_id, ids = target.node.key, comp.comp_id, (jid,)
    if target.cpus > target.busy:
        move(job, _RUNNING)
        target.busy += 1
        out.append(SendJobs(key, comp_id, ids, _NONE))
        out.append(JobsRunning(key, comp_id, ids))
    else:
        out.append(SendJobs(key, comp_id, ids, frozenset(ids)))
    return True


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
