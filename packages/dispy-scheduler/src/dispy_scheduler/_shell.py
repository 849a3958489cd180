"""The scheduler's shell around the engine: events in, commands out as messages.

Theory of operation
-------------------
One :class:`~dispy_core.engine.Engine` holds every client computation (by the scheduler's
own ``sched_id``) and every node. The node links (:mod:`dispy_scheduler._nodes`) and the
client links (:mod:`dispy_scheduler._clients`) turn what arrives into engine events through
:meth:`Shell.handle`; the commands that come back become messages here, in order:

- ``SendJobs``: each job's own files, then one ``jobs.submit`` per node (``notify`` for the
  jobs sent ahead), with the arguments the client sent, held until the job ends;
- ``JobsRunning`` / ``JobRequeued`` / ``JobEnded``: ``sched.running`` / ``sched.requeued`` /
  ``sched.ended`` to the owning client (or, for a client that is gone, an ended job's reply
  into the store);
- ``NodeStatusChanged``: ``sched.node``; ``SendCancel``: ``jobs.cancel`` to the node;
  ``NodeDeclaredDead``: the node's connection is closed;
- ``ComputationWaiting`` / ``ComputationActive``: ``sched.status``.

Results: a node's ``jobs.done`` is handed to the engine; the reports it accepts go to the
client as one ``sched.done`` with the node's replies unchanged, and are acknowledged to the
node only when the client acknowledges them, so the node holds every result until the
client has it. Reports the engine ignores (stale) are acknowledged to the node at once.
While a computation's client is gone its results are written to the store and then
acknowledged. A computation ends (closed on its nodes, dropped from the engine, its record
closed if nothing is left undelivered) once it is closing, or its client is gone, and it
has no job left.

A clean stop (:meth:`Shell.hand_over_queued`, called first by ``Scheduler.stop``) sends the
jobs of gone clients still queued here to nodes set up for them, where they run orphaned
and the next run recovers them; from then on nothing more is sent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from dispy_core.aio.connection import ConnectionClosed
from dispy_core.engine import (
    Command,
    ComputationActive,
    ComputationDropped,
    ComputationWaiting,
    Engine,
    Event,
    JobEnded,
    JobRequeued,
    JobsDone,
    JobsRunning,
    NodeDeclaredDead,
    NodeStatusChanged,
    ResultsAccepted,
    SendCancel,
    SendJobs,
)
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import (
    MAX_IDS,
    CloseComputation,
    ComputationClosed,
    JobAck,
    JobCancel,
    JobDone,
    JobReport,
    JobSubmit,
    SharedDone,
    SharedEnded,
    SharedNode,
    SharedRequeued,
    SharedRunning,
    SharedStatus,
    clip,
)
from dispy_core.results import iter_replies, local_reply
from dispy_scheduler._state import NodeKey, SharedComp, StoreLike

if TYPE_CHECKING:
    from dispy_scheduler._nodes import NodeLink

log = logging.getLogger("dispy_scheduler")

T = TypeVar("T")

MAX_BYTES_PER_FRAME = 8 << 20
_END_NAMES = {
    JobStatus.Cancelled: "cancelled",
    JobStatus.Abandoned: "abandoned",
    JobStatus.Terminated: "terminated",
}
_NODE_NAMES = {
    NodeStatus.Initialized: "initialized",
    NodeStatus.Closed: "closed",
    NodeStatus.AbandonedNode: "abandoned",
    NodeStatus.SetupFailed: "setup_failed",
}


class Shell:
    """The engine and what the scheduler keeps beside it (see the module docstring)."""

    def __init__(self, store: StoreLike) -> None:
        self.engine = Engine()
        self.store = store
        self.nodes: dict[NodeKey, NodeLink] = {}
        self.comps: dict[int, SharedComp] = {}
        # Set by hand_over_queued (a clean stop): the engine's placements are sent no more,
        # so no job handed over is sent a second time when a place frees up meanwhile.
        self.stopping = False

    # -- events in, commands out ----------------------------------------------------------

    def handle(self, event: Event) -> None:
        self.apply(self.engine.handle(event, time.monotonic()))

    def apply(self, commands: list[Command]) -> None:
        ended: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
        requeued: dict[int, list[int]] = defaultdict(list)
        touched: set[int] = set()

        def flush(sched_id: int) -> None:
            # Job ends and requeues go out batched, but never after a later message about
            # the same computation.
            if sched_id in requeued:
                self._requeued(sched_id, requeued.pop(sched_id))
            if sched_id in ended:
                self._jobs_ended(sched_id, ended.pop(sched_id))

        for cmd in commands:
            if isinstance(cmd, SendJobs):
                self._send_jobs(cmd)
            elif isinstance(cmd, JobsRunning):
                # a requeued job placed again: the client hears of the requeue first
                flush(cmd.comp_id)
                comp = self.comps.get(cmd.comp_id)
                if comp is not None and comp.client is not None:
                    comp.client.send(
                        SharedRunning(
                            comp_id=comp.comp_id,
                            ip_addr=cmd.node[0],
                            port=cmd.node[1],
                            job_ids=list(cmd.job_ids),
                        )
                    )
            elif isinstance(cmd, JobEnded):
                name = _END_NAMES.get(cmd.status, "cancelled")
                ended[cmd.comp_id].append((cmd.job_id, name, clip(cmd.reason)))
                touched.add(cmd.comp_id)
            elif isinstance(cmd, JobRequeued):
                requeued[cmd.comp_id].append(cmd.job_id)
            elif isinstance(cmd, SendCancel):
                link = self.nodes.get(cmd.node)
                if link is not None:
                    for chunk in _chunks(cmd.job_ids, MAX_IDS):
                        link.send(JobCancel(comp_id=cmd.comp_id, job_ids=chunk))
            elif isinstance(cmd, NodeStatusChanged):
                flush(cmd.comp_id)  # the node's jobs first, as the engine ordered them
                self._node_status(cmd)
                touched.add(cmd.comp_id)
            elif isinstance(cmd, NodeDeclaredDead):
                link = self.nodes.get(cmd.node)
                log.warning("node %s:%d %s", cmd.node[0], cmd.node[1], cmd.reason)
                if link is not None:
                    link.abort(cmd.reason)
            elif isinstance(cmd, ComputationWaiting | ComputationActive):
                comp = self.comps.get(cmd.comp_id)
                if comp is not None and comp.client is not None:
                    waiting = isinstance(cmd, ComputationWaiting)
                    state: Literal["waiting", "active"] = "waiting" if waiting else "active"
                    comp.client.send(SharedStatus(comp_id=comp.comp_id, state=state))
                    log.info("computation %s: %s", comp.name, state)
            # ResultsAccepted is consumed by results() itself.
        for sched_id, job_ids in requeued.items():
            self._requeued(sched_id, job_ids)
        for sched_id, jobs in ended.items():
            self._jobs_ended(sched_id, jobs)
        for sched_id in touched:
            self.maybe_finish(sched_id)

    def _requeued(self, sched_id: int, job_ids: list[int]) -> None:
        comp = self.comps.get(sched_id)
        if comp is not None and comp.client is not None:
            for chunk in _chunks(job_ids, MAX_IDS):
                comp.client.send(SharedRequeued(comp_id=comp.comp_id, job_ids=chunk))

    # -- jobs out ---------------------------------------------------------------------------

    def _send_jobs(self, cmd: SendJobs) -> None:
        comp = self.comps.get(cmd.comp_id)
        link = self.nodes.get(cmd.node)
        if comp is None or link is None or self.stopping:
            return  # the node's loss or the computation's drop follows as an event
        self._send(comp, link, cmd.job_ids, cmd.ahead)

    def _send(
        self, comp: SharedComp, link: NodeLink, job_ids: Sequence[int], ahead: frozenset[int]
    ) -> None:
        spec: list[tuple[int, int]] = []
        parts: list[Payload] = []
        size = 0
        try:
            for job_id in job_ids:
                for put, data in comp.job_files.get(job_id, ()):
                    link.send(put.model_copy(update={"comp_id": comp.sched_id}), data)
                args = comp.args.get(job_id, b"")
                if spec and (len(spec) >= MAX_IDS or size + len(args) > MAX_BYTES_PER_FRAME):
                    self._submit(link, comp, spec, parts, ahead)
                    spec, parts, size = [], [], 0
                spec.append((job_id, len(args)))
                parts.append(args)
                size += len(args)
            if spec:
                self._submit(link, comp, spec, parts, ahead)
        except ConnectionClosed:
            pass  # the link's end is an event of its own: the engine moves these jobs

    @staticmethod
    def _submit(
        link: NodeLink,
        comp: SharedComp,
        spec: list[tuple[int, int]],
        parts: list[Payload],
        ahead: frozenset[int],
    ) -> None:
        notify = [job_id for job_id, _ in spec if job_id in ahead]
        link.conn.send_nowait(
            JobSubmit(comp_id=comp.sched_id, jobs=spec, notify=notify), list(parts)
        )

    def _node_status(self, cmd: NodeStatusChanged) -> None:
        comp = self.comps.get(cmd.comp_id)
        if comp is None:
            return
        if cmd.status is not NodeStatus.Initialized:
            comp.ready.discard(cmd.node)
            comp.setup.pop(cmd.node, None)
            comp.closing_on.discard(cmd.node)
            # the client may take the node again later (allocate_node): offer it anew
            comp.offered.discard(cmd.node)
        if comp.client is None:
            return
        alloc = self.engine.allocation(comp.sched_id, cmd.node)
        comp.client.send(
            SharedNode(
                comp_id=comp.comp_id,
                ip_addr=cmd.node[0],
                port=cmd.node[1],
                status=_NODE_NAMES.get(cmd.status, "abandoned"),  # type: ignore[arg-type]
                cpus=alloc.cpus if alloc is not None else 0,
                reason=clip(cmd.reason) if cmd.reason else None,
            )
        )

    def _jobs_ended(self, sched_id: int, jobs: list[tuple[int, str, str]]) -> None:
        comp = self.comps.get(sched_id)
        if comp is None:
            return
        for job_id, _, _ in jobs:
            comp.args.pop(job_id, None)
            comp.job_files.pop(job_id, None)
        if comp.client is not None:
            for chunk in _chunks(jobs, MAX_IDS):
                comp.client.send(SharedEnded(comp_id=comp.comp_id, jobs=chunk))  # type: ignore[arg-type]
            return
        # The client is gone: keep each end as a reply in the store, for recover_jobs.
        for job_id, status, reason in jobs:
            reply = local_reply(job_id, status, reason, time.time())  # type: ignore[arg-type]
            report = JobReport(
                job_id=job_id,
                outcome=reply.outcome,
                start=reply.start,
                end=reply.end,
                size=len(reply.payload),
            )
            self._store(comp, [report], bytes(reply.payload))

    # -- results in -------------------------------------------------------------------------

    def results(self, link: NodeLink, msg: JobDone, payload: Payload) -> None:
        """A node's ``jobs.done``: to the client, or the store, or (stale) acked at once."""
        comp = self.comps.get(msg.comp_id)
        # A report of a node that no longer holds the job (or of a computation gone) is
        # not accepted: it is acknowledged below and goes nowhere.
        commands = self.engine.handle(JobsDone(link.key, msg.comp_id, msg.jobs), time.monotonic())
        accepted: set[int] = set()
        for cmd in commands:
            if isinstance(cmd, ResultsAccepted):
                accepted.update(cmd.job_ids)
        stale = [r.job_id for r in msg.jobs if r.job_id not in accepted]
        if stale:
            for chunk in _chunks(stale, MAX_IDS):
                link.send(JobAck(comp_id=msg.comp_id, job_ids=chunk))
        if comp is not None and accepted:
            reports: list[JobReport] = []
            parts: list[Payload] = []
            for report, data in iter_replies(msg, payload):
                if report.job_id in accepted:
                    reports.append(report)
                    parts.append(data)
                    comp.args.pop(report.job_id, None)
                    comp.job_files.pop(report.job_id, None)
            self._deliver(comp, link, reports, parts)
        self.apply(commands)
        if comp is not None:
            self.maybe_finish(comp.sched_id)

    def _deliver(
        self, comp: SharedComp, link: NodeLink, reports: list[JobReport], parts: list[Payload]
    ) -> None:
        client = comp.client
        if client is not None:
            try:
                client.conn.send_nowait(
                    SharedDone(
                        comp_id=comp.comp_id, ip_addr=link.key[0], port=link.key[1], jobs=reports
                    ),
                    parts,
                )
                for report, data in zip(reports, parts, strict=True):
                    comp.unacked[report.job_id] = (link.key, report, data)
                return
            except ConnectionClosed:
                pass  # the client's end comes as its own event; store these now
        if self._store(comp, reports, b"".join(parts)):
            ids = [r.job_id for r in reports]
            for chunk in _chunks(ids, MAX_IDS):
                link.send(JobAck(comp_id=comp.sched_id, job_ids=chunk))

    def _store(self, comp: SharedComp, reports: list[JobReport], payload: bytes) -> bool:
        """Write results to the store; False (logged) if it failed: the node keeps them
        then, unacknowledged, until its own store expires them or they are recovered."""
        try:
            comp.record.store(reports, payload)
            comp.stored = True
            return True
        except OSError as exc:
            log.error(
                "computation %s: cannot store the results of job(s) %s: %s",
                comp.name,
                ", ".join(str(r.job_id) for r in reports),
                exc,
            )
            return False

    def client_acked(self, comp: SharedComp, job_ids: Sequence[int]) -> None:
        """The client has these results: the nodes may forget them."""
        by_node: dict[NodeKey, list[int]] = defaultdict(list)
        for job_id in job_ids:
            held = comp.unacked.pop(job_id, None)
            if held is not None:
                by_node[held[0]].append(job_id)
        for key, ids in by_node.items():
            link = self.nodes.get(key)
            if link is not None:
                for chunk in _chunks(ids, MAX_IDS):
                    link.send(JobAck(comp_id=comp.sched_id, job_ids=chunk))
        self.maybe_finish(comp.sched_id)

    def store_unacked(self, comp: SharedComp) -> None:
        """The client went before acknowledging these results: store them, then the nodes
        may forget them."""
        held, comp.unacked = comp.unacked, {}
        by_node: dict[NodeKey, list[tuple[JobReport, Payload]]] = defaultdict(list)
        for key, report, data in held.values():
            by_node[key].append((report, data))
        for key, items in by_node.items():
            stored = self._store(comp, [r for r, _ in items], b"".join(d for _, d in items))
            link = self.nodes.get(key)
            if link is not None and stored:
                for chunk in _chunks([r.job_id for r, _ in items], MAX_IDS):
                    link.send(JobAck(comp_id=comp.sched_id, job_ids=chunk))

    # -- a clean stop ----------------------------------------------------------------------------

    def hand_over_queued(self) -> None:
        """A clean stop is coming: send every job of a gone client still queued here to a
        node set up for its computation, so that nothing such a client submitted is lost.

        The nodes' connections then close without a goodbye (``Scheduler.stop``): each node
        keeps the computation orphaned, queues these jobs beyond its CPUs, runs them and
        keeps their results, and the next run recovers them from it with those it was
        already running (the store lists the node since the computation got ready there).
        The scheduler's store keeps no job arguments (a ``kill -9`` still loses queued
        jobs, documented): handing them to a node needs nothing new on disk and no resume
        logic after a restart. Jobs of clients still connected are left alone: those
        clients are told their jobs end Abandoned. After this no job is sent any more.
        """
        self.stopping = True
        for comp in list(self.comps.values()):
            if comp.client is not None or comp.dropped or not comp.opened:
                continue
            queued = [
                job_id
                for job_id in comp.args
                if (status := self.engine.job_status(comp.sched_id, job_id)) is not None
                and status[1] is None
            ]
            if queued:
                self._hand_over(comp, queued)

    def _hand_over(self, comp: SharedComp, queued: list[int]) -> None:
        # Each job to the node with the fewest jobs per CPU (those placed there counted),
        # a pinned one only to its own node; only nodes still connected and ready for it.
        load: dict[NodeKey, list[int]] = {}
        for key in self.engine.nodes(comp.sched_id):
            alloc = self.engine.allocation(comp.sched_id, key)
            if alloc is not None and key in comp.ready and key in self.nodes:
                load[key] = [len(alloc.placed), max(alloc.cpus, 1)]
        by_node: dict[NodeKey, list[int]] = defaultdict(list)
        lost: list[int] = []
        for job_id in queued:
            pin = self.engine.job_pin(comp.sched_id, job_id)
            if pin is not None:
                target = pin if pin in load else None
            else:
                target = min(load, key=lambda k: load[k][0] / load[k][1], default=None)
            if target is None:
                lost.append(job_id)
                continue
            by_node[target].append(job_id)
            load[target][0] += 1
        for key, ids in by_node.items():
            self._send(comp, self.nodes[key], ids, frozenset())
            log.info(
                "computation %s (%d): %d job(s) of its gone client queued here sent to "
                "node %s:%d at the stop: they run there, the next run recovers them",
                comp.name,
                comp.sched_id,
                len(ids),
                key[0],
                key[1],
            )
        if lost:
            log.warning(
                "computation %s (%d): %d job(s) of its gone client queued here are lost at "
                "the stop (%s): no node connected is set up for %s",
                comp.name,
                comp.sched_id,
                len(lost),
                ", ".join(str(j) for j in lost),
                "them" if len(lost) > 1 else "it",
            )

    # -- the end of a computation -------------------------------------------------------------

    def maybe_finish(self, sched_id: int) -> None:
        """Close the computation on its nodes, then drop it, once nothing is left to do."""
        comp = self.comps.get(sched_id)
        if comp is None or comp.dropped:
            return
        if not (comp.closing or comp.client is None):
            return
        if comp.opened and self.engine.live(sched_id) > 0:
            return
        if comp.unacked and comp.client is not None:
            return
        for key in list(comp.setup):
            if key in comp.closing_on:
                continue
            link = self.nodes.get(key)
            if link is None:
                comp.setup.pop(key, None)
                continue
            comp.closing_on.add(key)
            link.send(CloseComputation(comp_id=sched_id, terminate=comp.terminate))
        if comp.setup:
            return  # computation.closed from each node brings us back here
        self.drop(comp, "closed")

    def drop(self, comp: SharedComp, reason: str) -> None:
        if comp.dropped:
            return
        comp.dropped = True
        if comp.opened:
            self.handle(ComputationDropped(comp.sched_id, reason))
        self.comps.pop(comp.sched_id, None)
        if comp.client is not None:
            comp.client.forget(comp)
            comp.client.send(ComputationClosed(comp_id=comp.comp_id))
        if not comp.stored or comp.recovered:
            with contextlib.suppress(OSError):
                comp.record.close()
        log.info("computation %s (%d) done", comp.name, comp.sched_id)


def _chunks(items: Sequence[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
