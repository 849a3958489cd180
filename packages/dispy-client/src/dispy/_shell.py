"""The cluster's scheduling shell: jobs and node messages in as engine events, commands out.

Theory of operation
-------------------
Every scheduling decision (where a job goes, how many wait on a node, which start at once,
what a lost node's jobs become, whether a result ends its job) is made by
:class:`dispy_core.engine.Engine`. This mixin of :class:`dispy._core.ClusterCore` only
translates, on the loop thread:

- in: a burst of submitted jobs is one ``JobsSubmitted``; a ``jobs.started``, ``jobs.done``
  or provisional result of the node's *current* connection is one event (a replaced
  connection's are dropped, its results still acknowledged); a node ready, its CPUs changed
  or its connection gone is queued and fed with whatever else comes in the same loop turn
  (``_defer``), so nodes joining or leaving together share the queue in one placement;
- out: ``SendJobs`` becomes recover-file records and ``jobs.submit`` frames (one per node
  per command, split at MAX_JOBS_PER_FRAME / MAX_BYTES_PER_FRAME), ``JobsRunning`` and
  ``NodeStatusChanged`` become statuses and callbacks, ``JobEnded`` / ``JobRequeued`` end
  or reset a job, ``SendCancel`` a ``jobs.cancel``, ``NodeDeclaredDead`` drops a connection.

Results are decoded only for the jobs the engine accepted (``ResultsAccepted``), so a
result ends its job exactly once. The recover file is flushed, then results are
acknowledged, on a short timer (``_housekeeping``): a node never forgets a result before the
recover file says the client has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dispy._ends import JobEnds
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode
from dispy_core.aio.connection import ConnectionClosed
from dispy_core.config import DEFAULT_PULSE, dead_after
from dispy_core.engine import (
    CancelRequested,
    Command,
    Engine,
    Event,
    JobEnded,
    JobRequeued,
    JobsDone,
    JobSpec,
    JobsRunning,
    JobsStarted,
    JobsSubmitted,
    NodeDeclaredDead,
    NodeLost,
    NodeStatusChanged,
    ProvisionalReceived,
    ResultsAccepted,
    SendCancel,
    SendJobs,
    Tick,
)
from dispy_core.protocol.framing import Buffer, Payload, nbytes
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import MAX_IDS, JobAck, JobCancel, JobDone, JobProvisional
from dispy_core.protocol.messages import JobSubmit as JobSubmitMsg

if TYPE_CHECKING:
    from dispy._callbacks import CallbackRunner
    from dispy._core import ClusterOptions
    from dispy._node_session import NodeSession
    from dispy.recovery import RecoveryLog
    from dispy_core.aio.tasks import TaskOwner

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]
HOUSEKEEPING_DELAY = 0.02
MAX_JOBS_PER_FRAME = 1024
MAX_BYTES_PER_FRAME = 8 << 20
_CREATED = JobStatus.Created
_RUNNING = JobStatus.Running


def job_frames(jobs: list[DispyJob]) -> Iterator[tuple[list[tuple[int, int]], list[Buffer]]]:
    """``jobs`` in frames of ``([(id, length), ...], argument buffers)``, each at most
    MAX_JOBS_PER_FRAME jobs and about MAX_BYTES_PER_FRAME bytes (a frame ends after the job
    that crosses it): the jobs part and the payload of ``jobs.submit`` or ``sched.submit``."""
    start = 0
    while start < len(jobs):
        batch: list[tuple[int, int]] = []
        parts: list[Buffer] = []
        size = 0
        for job in jobs[start : start + MAX_JOBS_PER_FRAME]:
            payload = job._payload or b""
            if isinstance(payload, bytes):
                length = len(payload)
                parts.append(payload)
            else:  # arguments with large bytes sent out of band: several buffers
                length = nbytes(payload)
                parts.extend(payload)
            batch.append((job._uid, length))
            size += length
            if size >= MAX_BYTES_PER_FRAME:
                break
        start += len(batch)
        yield batch, parts


class JobShell(JobEnds):
    """The engine's shell (see the module docstring); mixed into ClusterCore, which owns
    the attributes declared here."""

    opts: ClusterOptions
    owner: Any
    callbacks: CallbackRunner
    comp_id: int
    engine: Engine
    jobs: dict[int, DispyJob]
    sessions: dict[NodeKey, NodeSession]
    known_nodes: dict[NodeKey, DispyNode]
    recovery: RecoveryLog
    loop: asyncio.AbstractEventLoop | None
    _tasks: TaskOwner
    _incoming: deque[DispyJob]
    _incoming_scheduled: bool
    _deferred: list[Event]
    _housekeeping_scheduled: bool
    _dropped: bool

    # -- events in, commands out -----------------------------------------------------------

    def _handle(self, event: Event) -> list[Command]:
        """Feed ``event`` (after any deferred ones, in order) and return the commands."""
        if self._dropped:
            return []
        if self._deferred:
            events, self._deferred = self._deferred, []
            events.append(event)
            return self.engine.handle_many(events, time.monotonic())
        return self.engine.handle(event, time.monotonic())

    def _defer(self, event: Event) -> None:
        """Feed ``event`` at the end of this loop turn, with the others that came in it."""
        if not self._deferred:
            assert self.loop is not None
            self.loop.call_soon(self._feed_deferred)
        self._deferred.append(event)

    def _feed_deferred(self) -> None:
        if self._deferred and not self._dropped:
            events, self._deferred = self._deferred, []
            self._apply(self.engine.handle_many(events, time.monotonic()))

    def _apply(self, commands: list[Command]) -> None:
        for command in commands:
            kind = type(command)
            if kind is SendJobs:
                self._on_send_jobs(command)  # type: ignore[arg-type]
            elif kind is JobsRunning:
                self._on_running(command)  # type: ignore[arg-type]
            elif kind is JobEnded:
                self._on_ended(command)  # type: ignore[arg-type]
            elif kind is JobRequeued:
                job = self.jobs[command.job_id]  # type: ignore[union-attr]
                job.status = _CREATED
                job.ip_addr = None
            elif kind is NodeStatusChanged:
                self._on_node_status(command)  # type: ignore[arg-type]
            elif kind is SendCancel:
                self._on_send_cancel(command)  # type: ignore[arg-type]
            elif kind is NodeDeclaredDead:
                self._on_dead(command)  # type: ignore[arg-type]
            # ResultsAccepted is read by _job_replies, which fed the JobsDone.

    def _on_send_jobs(self, command: SendJobs) -> None:
        key = command.node
        session = self.sessions[key]
        jobs = self.jobs
        sent = [jobs[uid] for uid in command.job_ids]
        # Sent first: the rest is bookkeeping, done while the node runs them (the record
        # reaches the file at the next flush either way).
        self._send_jobs(session, sent, command.ahead)
        host = key[0]
        for job in sent:
            job.ip_addr = host
        self.recovery.sent(key, sent)
        self._housekeeping_soon()

    def _on_running(self, command: JobsRunning) -> None:
        node = self.known_nodes[command.node]
        node.busy += len(command.job_ids)
        now = time.time()
        report = self.opts.cluster_status is not None
        jobs = self.jobs
        for uid in command.job_ids:
            job = jobs[uid]
            job.status = _RUNNING
            job.start_time = now
            if report:
                self._status(_RUNNING, node, job)

    def _on_ended(self, command: JobEnded) -> None:
        job = self.jobs.pop(command.job_id, None)
        if job is not None:
            node = self.known_nodes.get(command.node) if command.node is not None else None
            self._finish(job, command.status, exception=command.reason, node=node)

    def _on_node_status(self, command: NodeStatusChanged) -> None:
        node = self.known_nodes[command.node]
        status = command.status
        if status is not NodeStatus.Initialized:
            node.busy = 0
            node.error = command.reason
            if status is NodeStatus.AbandonedNode:
                log.warning("node %s (%s:%d) lost: %s", node.name, *command.node, command.reason)
        self._status(status, node, None)

    def _on_send_cancel(self, command: SendCancel) -> None:
        session = self.sessions.get(command.node)
        if session is None:
            return
        ids = list(command.job_ids)
        with contextlib.suppress(ConnectionClosed):
            for at in range(0, len(ids), MAX_IDS):
                message = JobCancel(comp_id=self.comp_id, job_ids=ids[at : at + MAX_IDS])
                session.conn.send_nowait(message)

    def _on_dead(self, command: NodeDeclaredDead) -> None:
        session = self.sessions.pop(command.node, None)
        if session is not None:
            self._tasks.start(session.conn.refuse(command.reason))

    async def _pulse_monitor(self, interval: float | None) -> None:
        # Without pulse_interval nodes still pulse every DEFAULT_PULSE seconds; the engine
        # declares a node silent for much longer than that dead, so no job waits forever.
        period = min(interval or DEFAULT_PULSE, dead_after(interval) / 5)
        while True:
            await asyncio.sleep(period)
            self._apply(self._handle(Tick()))

    def _node_lost(self, session: NodeSession, reason: str) -> None:
        if self.sessions.get(session.key) is not session:
            return  # replaced or already given up on: the engine heard of it then
        del self.sessions[session.key]
        self._defer(NodeLost(session.key, reason, self.comp_id))

    # -- jobs from the user -----------------------------------------------------------------

    def submit_threadsafe(self, job: DispyJob) -> None:
        """Called from the user's thread."""
        self._incoming.append(job)
        if not self._incoming_scheduled:
            self._incoming_scheduled = True
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        self._incoming_scheduled = False
        incoming, jobs = self._incoming, self.jobs
        created: list[DispyJob] = []
        specs: list[JobSpec] = []
        while incoming:
            job = incoming.popleft()
            if job._done:
                continue
            uid = job._uid
            jobs[uid] = job
            payload = job._payload
            if payload is None:
                size = None
            else:  # most arguments are one bytes object: len() without a call to nbytes()
                size = len(payload) if type(payload) is bytes else nbytes(payload)
            specs.append(JobSpec(uid, size, job._pinned))
            created.append(job)
        if not specs:
            return
        commands = self._handle(JobsSubmitted(self.comp_id, tuple(specs)))
        # Jobs the engine refused at once (pinned to a node not in the cluster) were never
        # Created: they end with the JobEnded below.
        refused = [c.job_id for c in commands if type(c) is JobEnded]
        if refused:
            created = [job for job in created if job._uid not in refused]
        if self.opts.cluster_status is not None:
            for job in created:
                self._status(_CREATED, None, job)
        if created:
            self.recovery.created(created)
            self._housekeeping_soon()
        self._apply(commands)

    def cancel(self, job: DispyJob) -> None:
        if job._uid in self.jobs:
            self._apply(self._handle(CancelRequested(self.comp_id, (job._uid,))))
        elif job in self._incoming:  # not handed to the engine yet
            self._incoming.remove(job)
            self._finish(job, JobStatus.Cancelled, exception="Cancelled")

    def node_jobs(self, key: NodeKey) -> list[DispyJob]:
        """Jobs running on the node now (not those waiting there for a CPU)."""
        jobs = self.jobs
        return [jobs[uid] for uid in self.engine.node_jobs(self.comp_id, key) if uid in jobs]

    def id_changed(self, job: DispyJob) -> None:
        """A job's ``id`` was set (user's thread): record it for recover_jobs.

        Until its first record is written the job's id is read then, so the usual
        ``job.id = n`` right after submit() costs nothing here.
        """
        if job._logged:
            self.recovery.ids([job])

    # -- jobs to and from nodes -------------------------------------------------------------

    def _send_jobs(self, session: NodeSession, jobs: list[DispyJob], ahead: frozenset[int]) -> None:
        for job in jobs:
            if job._files:
                for spec in job._files:
                    with contextlib.suppress(ConnectionClosed):
                        message = self._file_message(spec, job_id=job._uid)
                        session.conn.send_nowait(message, spec.data)
                job._files = None
        node = session.node
        for batch, parts in job_frames(jobs):
            notify = [uid for uid, _ in batch if uid in ahead] if ahead else []
            try:
                submit = JobSubmitMsg(comp_id=self.comp_id, jobs=batch, notify=notify)
                session.conn.send_nowait(submit, parts[0] if len(parts) == 1 else parts)
            except ConnectionClosed:
                return
            node.tx += sum(length for _, length in batch)

    def _jobs_started(self, session: NodeSession, job_ids: list[int]) -> None:
        if self.sessions.get(session.key) is session:
            self._apply(self._handle(JobsStarted(session.key, self.comp_id, tuple(job_ids))))

    def _job_replies(self, session: NodeSession, msg: JobDone, payload: Payload) -> None:
        key = session.key
        reports = msg.jobs
        commands: list[Command] = []
        ended: list[tuple[DispyJob, JobStatus]] = []
        if self.sessions.get(key) is session:
            commands = self._handle(JobsDone(key, self.comp_id, reports))
            for command in commands:
                if type(command) is ResultsAccepted and command.node == key:
                    if command.job_ids:
                        ended = self._read_replies(session.node, msg, payload, command.ignored)
                        alloc = self.engine.allocation(self.comp_id, key)
                        session.node.busy = alloc.busy if alloc is not None else 0
                    break
        # Logged (and flushed) before the ack goes out: a crash in between makes recovery
        # fetch the result again rather than miss it.
        done = [report.job_id for report in reports]
        self.recovery.done(done)
        session.acks.extend(done)
        self._housekeeping_soon()
        # After the bookkeeping: a program waiting for one of these jobs wakes now and needs
        # the GIL, which this thread gives up only when the loop waits again; the less it
        # does after the wake-up, the less often that thread wakes just to wait for the GIL.
        node = session.node
        for job, status in ended:
            self._finish(job, status, node=node)
        if commands:
            self._apply(commands)

    def _provisional(self, session: NodeSession, msg: JobProvisional, payload: Payload) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        ok, result = self._load_provisional(job, payload)
        if not ok:
            return
        if self.sessions.get(session.key) is session:
            event = ProvisionalReceived(session.key, self.comp_id, msg.job_id)
            self._apply(self._handle(event))
        self._take_provisional(job, session.node, result)

    # -- recover file, acks -------------------------------------------------------------

    def _housekeeping_soon(self) -> None:
        if not self._housekeeping_scheduled:
            assert self.loop is not None
            self._housekeeping_scheduled = True
            self.loop.call_later(HOUSEKEEPING_DELAY, self._housekeeping)

    def _housekeeping(self) -> None:
        """Flush the recover file, then acknowledge results.

        Acks wait for the flush so a result is never forgotten by the node before the
        recover file says the client has it. Batching both on a short timer keeps syscalls
        off the per-job path.
        """
        self._housekeeping_scheduled = False
        self.recovery.flush()
        for session in self.sessions.values():
            if session.acks:
                acks, session.acks = session.acks, []
                with contextlib.suppress(ConnectionClosed):
                    for at in range(0, len(acks), MAX_IDS):
                        part = acks[at : at + MAX_IDS]
                        session.conn.send_nowait(JobAck(comp_id=self.comp_id, job_ids=part))

    if TYPE_CHECKING:  # defined by ClusterCore, which also sends files on its own

        def _file_message(self, spec: Any, job_id: int | None = None, req: int = 0) -> Any: ...
