"""The engine: one object that takes events and returns commands (see the package docstring).

Each ``_on_*`` method applies one event; :meth:`Engine._pump` then places queued jobs
(``placement.py``), so a batch of events (:meth:`Engine.handle_many`) places once. Nothing
here reads a clock, logs or does I/O; every job move goes through
:func:`~dispy_core.engine.records.move`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dispy_core.config import dead_after
from dispy_core.engine import policy
from dispy_core.engine.commands import (
    Command,
    ComputationActive,
    ComputationWaiting,
    JobEnded,
    JobRequeued,
    JobsRunning,
    NodeDeclaredDead,
    NodeStatusChanged,
    ResultsAccepted,
    SendCancel,
)
from dispy_core.engine.events import (
    CancelRequested,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    Event,
    JobsDone,
    JobsStarted,
    JobsSubmitted,
    NodeCpusChanged,
    NodeHeard,
    NodeKey,
    NodeLost,
    NodeReady,
    ProvisionalReceived,
    Tick,
)
from dispy_core.engine.placement import place, place_lone
from dispy_core.engine.records import Allocation, Computation, EngineError, Job, Node, move
from dispy_core.engine.sharing import admitted, place_shared
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.results import OUTCOME_STATUS  # the one map from wire outcomes to statuses

__all__ = ["OUTCOME_STATUS", "Engine"]

_CREATED = JobStatus.Created
_RUNNING = JobStatus.Running
_NONE: frozenset[int] = frozenset()


class Engine:
    """Computations, nodes and jobs; see the package docstring. Not thread-safe: one shell
    drives it from one thread."""

    def __init__(self) -> None:
        self._comps: dict[int, Computation] = {}
        self._nodes: dict[NodeKey, Node] = {}
        self._seq = 0
        self._opened = 0
        # Computations whose turn it is, in order of opening (sharing.admitted); while more
        # than one is, placement shares nodes between them (sharing.place_shared).
        self._active: list[Computation] = []
        self._shared = False
        self._out: list[Command] = []
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            ComputationOpened: self._on_opened,
            ComputationClosed: self._on_closed,
            ComputationDropped: self._on_dropped,
            NodeReady: self._on_ready,
            NodeCpusChanged: self._on_cpus,
            NodeHeard: self._on_heard,
            NodeLost: self._on_lost,
            JobsSubmitted: self._on_submitted,
            JobsStarted: self._on_started,
            JobsDone: self._on_done,
            ProvisionalReceived: self._on_provisional,
            CancelRequested: self._on_cancel,
            Tick: self._on_tick,
        }

    # -- entry points -------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        """Apply ``event`` (observed at ``now``, a monotonic clock) and place queued jobs."""
        self._handlers[type(event)](event, now)
        if self._shared:
            place_shared(self._active, self._out)
        else:
            for comp in self._active:  # _pump, inlined: once per message
                if comp.queued:
                    place(comp, self._out)
        out, self._out = self._out, []
        return out

    def handle_many(self, events: Iterable[Event], now: float) -> list[Command]:
        """Apply several events, then place queued jobs once (fewer, larger sends)."""
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event, now)
        self._pump()
        out, self._out = self._out, []
        return out

    # -- queries (read-only; for shells and monitors) -------------------------------------

    def computations(self) -> list[int]:
        return list(self._comps)

    def has_allocation(self, comp_id: int, node: NodeKey) -> bool:
        comp = self._comps.get(comp_id)
        return comp is not None and node in comp.allocs

    def nodes(self, comp_id: int) -> list[NodeKey]:
        comp = self._comps.get(comp_id)
        return list(comp.allocs) if comp is not None else []

    def node_jobs(self, comp_id: int, node: NodeKey) -> list[int]:
        """Jobs running on the node now (not those waiting there for a CPU)."""
        comp = self._comps.get(comp_id)
        alloc = comp.allocs.get(node) if comp is not None else None
        if alloc is None:
            return []
        jobs = alloc.comp.jobs
        return [jid for jid in alloc.placed if jobs[jid].status is not _CREATED]

    def pinned_waiting(self, comp_id: int, node: NodeKey) -> list[int]:
        """Jobs submitted to the node alone that have not started: waiting for it, or sent
        ahead and waiting there for a CPU."""
        comp = self._comps.get(comp_id)
        alloc = comp.allocs.get(node) if comp is not None else None
        if alloc is None:
            return []
        jobs = alloc.comp.jobs
        ahead = [j for j in alloc.placed if jobs[j].status is _CREATED and jobs[j].pinned == node]
        return [j for j in alloc.pinned if j in jobs] + ahead

    def job_pin(self, comp_id: int, job_id: int) -> NodeKey | None:
        """The node a live job was submitted to alone (``submit_node``), if any."""
        comp = self._comps.get(comp_id)
        job = comp.jobs.get(job_id) if comp is not None else None
        return job.pinned if job is not None else None

    def job_status(self, comp_id: int, job_id: int) -> tuple[JobStatus, NodeKey | None] | None:
        """A live job's status and node (None: queued), or None once it has ended."""
        comp = self._comps.get(comp_id)
        job = comp.jobs.get(job_id) if comp is not None else None
        if job is None:
            return None
        return job.status, job.alloc.node.key if job.alloc is not None else None

    def pending(self, comp_id: int) -> int:
        """Jobs queued (not placed on any node yet)."""
        comp = self._comps.get(comp_id)
        return comp.queued if comp is not None else 0

    def live(self, comp_id: int) -> int:
        """Jobs not ended yet, queued or placed."""
        comp = self._comps.get(comp_id)
        return len(comp.jobs) if comp is not None else 0

    def allocation(self, comp_id: int, node: NodeKey) -> Allocation | None:
        """The allocation record itself (read it, do not change it)."""
        comp = self._comps.get(comp_id)
        return comp.allocs.get(node) if comp is not None else None

    # -- computations -------------------------------------------------------------------

    def _comp(self, comp_id: int) -> Computation:
        comp = self._comps.get(comp_id)
        if comp is None:
            raise EngineError(f"computation {comp_id} is not open")
        return comp

    def _on_opened(self, ev: ComputationOpened, now: float) -> None:
        if ev.comp_id in self._comps:
            raise EngineError(f"computation {ev.comp_id} is already open")
        self._opened += 1
        comp = self._comps[ev.comp_id] = Computation(
            ev.comp_id,
            ev.reentrant,
            dead_after(ev.pulse_interval),
            exclusive=ev.exclusive,
            active=False,
            order=self._opened,
        )
        self._admit(comp)

    def _on_closed(self, ev: ComputationClosed, now: float) -> None:
        comp = self._comp(ev.comp_id)
        comp.closing = True
        if ev.terminate:
            self._cancel(comp, list(comp.jobs))

    def _on_dropped(self, ev: ComputationDropped, now: float) -> None:
        comp = self._comps.pop(ev.comp_id, None)
        if comp is None:
            return
        for key, alloc in comp.allocs.items():
            alloc.version += 1
            node = self._nodes[key]
            del node.allocs[comp.comp_id]
            if not node.allocs:
                del self._nodes[key]
        out = self._out
        for job in comp.jobs.values():
            move(job, JobStatus.Abandoned)
            out.append(JobEnded(comp.comp_id, job.job_id, JobStatus.Abandoned, ev.reason))
        comp.jobs.clear()
        self._admit(None)

    def _admit(self, opened: Computation | None) -> None:
        """Whose turn it is, after ``opened`` joined or a computation was dropped: those
        whose turn came are told (ComputationActive), ``opened`` is told if it must wait."""
        turn = admitted(self._comps.values())
        for comp in turn:
            if not comp.active:
                comp.active = True
                if comp is not opened:
                    self._out.append(ComputationActive(comp.comp_id))
        if opened is not None and not opened.active:
            self._out.append(ComputationWaiting(opened.comp_id))
        self._active = turn
        self._shared = len(turn) > 1

    # -- nodes --------------------------------------------------------------------------

    def _on_ready(self, ev: NodeReady, now: float) -> None:
        comp = self._comps.get(ev.comp_id)
        if comp is None:  # the computation ended while the node set it up
            return
        node = self._nodes.get(ev.node)
        if node is None:
            node = self._nodes[ev.node] = Node(ev.node, now)
        node.last_heard = now
        node.total_cpus = ev.total_cpus or node.total_cpus
        alloc = comp.allocs.get(ev.node)
        if alloc is None:
            self._seq += 1
            alloc = Allocation(node, comp, ev.cpus, ev.cpus, self._seq)
            comp.allocs[ev.node] = node.allocs[comp.comp_id] = alloc
        else:
            alloc.cpus = alloc.depth = ev.cpus
        comp.touch(alloc)
        self._out.append(NodeStatusChanged(ev.node, comp.comp_id, NodeStatus.Initialized))

    def _alloc(self, key: NodeKey, comp_id: int, now: float) -> Allocation | None:
        node = self._nodes.get(key)
        if node is None:
            return None
        node.last_heard = now
        return node.allocs.get(comp_id)

    def _on_cpus(self, ev: NodeCpusChanged, now: float) -> None:
        alloc = self._alloc(ev.node, ev.comp_id, now)
        if alloc is not None:
            # As after a restart: one job ahead per CPU until the next results re-measure.
            alloc.cpus = alloc.depth = ev.cpus
            alloc.comp.touch(alloc)

    def _on_heard(self, ev: NodeHeard, now: float) -> None:
        node = self._nodes.get(ev.node)
        if node is not None:
            node.last_heard = now

    def _on_lost(self, ev: NodeLost, now: float) -> None:
        node = self._nodes.get(ev.node)
        if node is None:
            return
        if ev.comp_id is None:
            allocs = list(node.allocs.values())
        else:
            one = node.allocs.get(ev.comp_id)
            allocs = [one] if one is not None else []
        for alloc in allocs:
            self._lose(alloc, ev.reason, dead=False)

    def _on_tick(self, ev: Tick, now: float) -> None:
        for node in list(self._nodes.values()):
            silent = now - node.last_heard
            dead = [a for a in node.allocs.values() if silent > a.comp.dead_after]
            if not dead:
                continue
            reason = f"declared dead: no pulse for {silent:.0f} s"
            for alloc in dead:
                self._lose(alloc, reason, dead=True)
            self._out.append(NodeDeclaredDead(node.key, reason))

    def _lose(self, alloc: Allocation, reason: str, *, dead: bool) -> None:
        """The allocation ends: its jobs move to the queue front (reentrant, not pinned,
        not closing) or end Cancelled; the node's status follows."""
        comp, node = alloc.comp, alloc.node
        key = node.key
        del comp.allocs[key]
        del node.allocs[comp.comp_id]
        if not node.allocs:
            del self._nodes[key]
        alloc.version += 1
        comp.dirty_pins.pop(alloc, None)
        jobs = comp.jobs
        lost = [jobs[jid] for jid in alloc.placed]
        for jid in alloc.pinned:
            job = jobs.get(jid)
            if job is not None and job.alloc is None and job.pinned == key:
                lost.append(job)
                comp.queued -= 1
        alloc.placed.clear()
        alloc.pinned.clear()
        out = self._out
        # Even a job only sent ahead may have started just before the node went (its
        # jobs.started not sent yet): without `reentrant` it is not run again.
        ended = f"Cancelled: node {key[0]}:{key[1]} {reason}"
        requeue = comp.reentrant and not comp.closing
        for job in lost:
            job.alloc = None
            if requeue and job.pinned is None:
                if job.status is not _CREATED:
                    move(job, _CREATED)
                comp.queue.appendleft(job.job_id)
                comp.queued += 1
                out.append(JobRequeued(comp.comp_id, job.job_id))
            else:
                move(job, JobStatus.Cancelled)
                del jobs[job.job_id]
                out.append(JobEnded(comp.comp_id, job.job_id, JobStatus.Cancelled, ended, key))
        abandoned = dead or reason != "closed"
        status = NodeStatus.AbandonedNode if abandoned else NodeStatus.Closed
        out.append(NodeStatusChanged(key, comp.comp_id, status, reason if abandoned else None))

    def _set_depth(self, alloc: Allocation) -> None:
        comp = alloc.comp
        comp.depth_bytes = comp.job_bytes
        if alloc.job_time:
            per_cpu = policy.depth_per_cpu(alloc.job_time, comp.job_bytes)
            alloc.depth = alloc.cpus * per_cpu

    # -- jobs ---------------------------------------------------------------------------

    def _on_submitted(self, ev: JobsSubmitted, now: float) -> None:
        comp = self._comp(ev.comp_id)
        jobs, queue, allocs = comp.jobs, comp.queue, comp.allocs
        if (
            len(ev.jobs) == 1
            and not queue
            and not comp.dirty_pins
            and comp.active
            and not self._shared
            and place_lone(comp, ev.jobs[0], self._out)
        ):
            return
        average = comp.job_bytes
        for spec in ev.jobs:
            jid = spec.job_id
            if jid in jobs:
                raise EngineError(f"job {jid} of computation {comp.comp_id} submitted twice")
            pin = spec.pinned
            if pin is None:
                jobs[jid] = Job(jid)
                queue.append(jid)
            else:
                alloc = allocs.get(pin)
                if alloc is None:
                    move(Job(jid), JobStatus.Cancelled)
                    reason = f"node {pin[0]}:{pin[1]} is not in this cluster"
                    self._out.append(JobEnded(comp.comp_id, jid, JobStatus.Cancelled, reason))
                    continue
                jobs[jid] = Job(jid, pinned=pin)
                alloc.pinned.append(jid)
                if alloc.room > 0:
                    comp.dirty_pins[alloc] = None
            comp.queued += 1
            if spec.size is not None:
                average = policy.job_bytes(average, spec.size)
        comp.job_bytes = average
        if policy.outgrown(average, comp.depth_bytes):
            comp.depth_bytes = average
            for alloc in allocs.values():
                self._set_depth(alloc)
                comp.touch(alloc)

    def _on_started(self, ev: JobsStarted, now: float) -> None:
        alloc = self._alloc(ev.node, ev.comp_id, now)
        if alloc is None:
            return
        jobs = alloc.comp.jobs
        started = []
        for jid in ev.job_ids:
            job = jobs.get(jid)
            if job is None or job.alloc is not alloc or job.status is not _CREATED:
                continue
            move(job, _RUNNING)
            started.append(jid)
        if started:
            alloc.busy += len(started)
            self._out.append(JobsRunning(ev.node, ev.comp_id, tuple(started)))

    def _on_done(self, ev: JobsDone, now: float) -> None:
        alloc = self._alloc(ev.node, ev.comp_id, now)
        if alloc is None:
            return
        comp = alloc.comp
        jobs, placed = comp.jobs, alloc.placed
        accepted: list[int] = []
        ignored: set[int] | None = None
        job_time = alloc.job_time
        for report in ev.reports:
            jid = report.job_id
            took = report.end - report.start  # policy.job_time, inlined: once per job
            took = took if took > 0.0 else 0.0
            job_time = 0.8 * job_time + 0.2 * took if job_time else took
            job = jobs.get(jid)
            if job is None or job.alloc is not alloc:
                # a node this job is no longer on: it ended or moved
                if ignored is None:
                    ignored = set()
                ignored.add(jid)
                continue
            if job.status is _CREATED:  # started and ended before its jobs.started came
                move(job, _RUNNING)
            else:
                alloc.busy -= 1
            move(job, OUTCOME_STATUS[report.outcome])
            placed.discard(jid)
            del jobs[jid]
            accepted.append(jid)
        alloc.job_time = job_time
        # _set_depth, inlined (once per jobs.done, often one job's)
        comp.depth_bytes = comp.job_bytes
        if job_time:
            alloc.depth = alloc.cpus * policy.depth_per_cpu(job_time, comp.job_bytes)
        comp.touch(alloc)
        stale = frozenset(ignored) if ignored else _NONE
        self._out.append(ResultsAccepted(ev.node, ev.comp_id, tuple(accepted), stale))

    def _on_provisional(self, ev: ProvisionalReceived, now: float) -> None:
        alloc = self._alloc(ev.node, ev.comp_id, now)
        job = alloc.comp.jobs.get(ev.job_id) if alloc is not None else None
        if job is None or job.alloc is not alloc:
            return
        if job.status is _CREATED:
            self._on_started(JobsStarted(ev.node, ev.comp_id, (ev.job_id,)), now)
        move(job, JobStatus.ProvisionalResult)

    def _on_cancel(self, ev: CancelRequested, now: float) -> None:
        self._cancel(self._comp(ev.comp_id), ev.job_ids, ev.reason)

    def _cancel(self, comp: Computation, job_ids: Iterable[int], reason: str = "Cancelled") -> None:
        jobs, out = comp.jobs, self._out
        on_nodes: dict[NodeKey, list[int]] = {}
        for jid in job_ids:
            job = jobs.get(jid)
            if job is None:
                continue
            if job.alloc is None:
                move(job, JobStatus.Cancelled)
                del jobs[jid]
                comp.queued -= 1  # its queue entry is skipped when it surfaces
                out.append(JobEnded(comp.comp_id, jid, JobStatus.Cancelled, reason, job.pinned))
            else:
                on_nodes.setdefault(job.alloc.node.key, []).append(jid)
        for key, ids in on_nodes.items():
            out.append(SendCancel(key, comp.comp_id, tuple(ids)))

    # -- placement ----------------------------------------------------------------------

    def _pump(self) -> None:
        if self._shared:
            place_shared(self._active, self._out)
            return
        for comp in self._active:
            if comp.queued:
                place(comp, self._out)
