"""What a SharedJobCluster hears about its nodes and jobs, and what it sends about them.

The handlers of :class:`dispy._shared_core.SharedCore` for the scheduler's messages about
nodes (``sched.offer``, ``sched.node``) and jobs (``sched.running``, ``sched.requeued``,
``sched.done``, ``sched.ended``, provisional results), and its requests (``sched.submit``,
``jobs.cancel``, ``sched.allocate``, ``sched.file``). The core's docstring gives the theory
of operation; this mixin only keeps the user's view (jobs, nodes, statuses) in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from dispy._depends import own_setup
from dispy._ends import JobEnds
from dispy._shell import job_frames
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate, cpus_for, find_allocation
from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.protocol.framing import Payload, nbytes
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import (
    FilePut,
    JobCancel,
    JobDone,
    JobProvisional,
    NodeAllocation,
    NodeOffer,
    SharedDone,
    SharedEnded,
    SharedFilePut,
    SharedNode,
    SharedRequeued,
    SharedRunning,
    SharedSubmit,
)

if TYPE_CHECKING:
    from dispy._depends import FileSpec
    from dispy._shared_core import SharedOptions
    from dispy.recovery import RecoveryLog

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]

_END_STATUS = {
    "cancelled": JobStatus.Cancelled,
    "abandoned": JobStatus.Abandoned,
    "terminated": JobStatus.Terminated,
}
_NODE_STATUS = {
    "initialized": NodeStatus.Initialized,
    "closed": NodeStatus.Closed,
    "abandoned": NodeStatus.AbandonedNode,
    "setup_failed": NodeStatus.SetupFailed,
}


class SharedJobs(JobEnds):
    """Mixed into SharedCore, which owns the attributes declared here."""

    shared: SharedOptions
    known_nodes: dict[NodeKey, DispyNode]
    offers: dict[NodeKey, NodeOffer]
    allocated: dict[NodeKey, int]  # nodes given CPUs (sched.allocate > 0)
    ready: set[NodeKey]  # nodes that set the computation up
    running: dict[NodeKey, set[int]]
    where: dict[int, NodeKey]  # job -> the node it runs on
    conn: Connection | None
    recovery: RecoveryLog | None
    loop: asyncio.AbstractEventLoop | None
    lost: str | None
    _closing: bool
    _incoming: deque[DispyJob]
    _incoming_scheduled: bool
    _acks: list[int]
    _file_req: int
    _file_waiters: dict[int, asyncio.Future[str | None]]

    if TYPE_CHECKING:  # defined by SharedCore

        def _housekeeping_soon(self) -> None: ...

    def _node(self, key: NodeKey, name: str = "", cpus: int = 0, platform: str = "") -> DispyNode:
        node = self.known_nodes.get(key)
        if node is None:
            offer = self.offers.get(key)
            if offer is not None:
                name, platform = name or offer.name, platform or offer.platform
            node = DispyNode(key[0], key[1], name or key[0], cpus, platform)
            self.known_nodes[key] = node
        return node

    def _on_offer(self, msg: NodeOffer) -> None:
        key = (msg.ip_addr, msg.port)
        self.offers[key] = msg
        avail = DispyNodeAvailInfo._from_wire(msg.avail)
        self._allocate_offer(msg, self.opts.nodes, avail, answer_zero=True)

    def _allocate_offer(
        self,
        offer: NodeOffer,
        nodes: list[NodeAllocate],
        avail: DispyNodeAvailInfo | None,
        *,
        answer_zero: bool,
    ) -> bool:
        key = (offer.ip_addr, offer.port)
        opts = self.opts
        cpus = cpus_for(
            nodes,
            opts.node_port,
            self.owner,
            ip_addr=offer.ip_addr,
            port=offer.port,
            name=offer.name,
            cpus=offer.cpus,
            avail=avail,
            platform=offer.platform,
        )
        cpus = min(cpus, offer.cpus)
        alloc = find_allocation(nodes, offer.ip_addr, offer.port, opts.node_port)
        own: tuple[list[FileSpec], bytes | None] | None = None
        if cpus > 0 and alloc is not None and (alloc.depends or alloc.setup_args):
            # The node's own set-up (set in its constructor, or by allocate() just now) goes
            # with this answer; the scheduler uses it for that node only (PROTOCOL.md 13).
            try:
                own = own_setup(opts.bundle, list(alloc.depends), tuple(alloc.setup_args))
            except ValueError as exc:  # DependencyError, SerializationError
                log.error("node %s (%s:%d) not used: per-node setup: %s", offer.name, *key, exc)
                cpus = 0
        if cpus <= 0 and not answer_zero:
            return False
        if cpus > 0:
            self.allocated[key] = cpus
            node = self._node(key, offer.name, cpus, offer.platform)
            node.cpus = cpus
            node.avail_info = avail
            node.update_time = time.time()
            log.debug("node %s (%s:%d) offered: using %d CPU(s)", offer.name, *key, cpus)
        else:
            log.info("node %s (%s:%d) offered: not used by this cluster", offer.name, *key)
        if self.conn is not None and self.lost is None:
            message, payload = allocation(self.comp_id, key, cpus, own)
            with contextlib.suppress(ConnectionClosed):
                self.conn.send_nowait(message, payload)
        return cpus > 0

    def _on_node(self, msg: SharedNode) -> None:
        key = (msg.ip_addr, msg.port)
        node = self._node(key)
        status = _NODE_STATUS[msg.status]
        if msg.avail is not None:
            node.avail_info = DispyNodeAvailInfo._from_wire(msg.avail)
        node.update_time = time.time()
        if status is NodeStatus.Initialized:
            if msg.cpus:
                node.cpus = msg.cpus
            node.error = None
            self.ready.add(key)
            log.info("node %s (%s:%d) ready with %d CPU(s)", node.name, *key, node.cpus)
        else:
            self.ready.discard(key)
            self.allocated.pop(key, None)
            node.busy = 0
            node.error = msg.reason
            if status is NodeStatus.AbandonedNode:
                log.warning("node %s (%s:%d) lost: %s", node.name, *key, msg.reason)
            elif status is NodeStatus.SetupFailed:
                log.warning(
                    "node %s (%s:%d) cannot run %s: %s", node.name, *key, self.opts.name, msg.reason
                )
        self._status(status, node, None)

    def _on_running(self, msg: SharedRunning) -> None:
        key = (msg.ip_addr, msg.port)
        node = self._node(key)
        now = time.time()
        jobs, on_node = self.jobs, self.running.setdefault(key, set())
        for uid in msg.job_ids:
            job = jobs.get(uid)
            if job is None:
                continue
            self._leave_node(uid)
            job.status = JobStatus.Running
            job.ip_addr = key[0]
            job.start_time = now
            on_node.add(uid)
            self.where[uid] = key
            node.busy += 1
            if job._payload is not None:
                node.tx += nbytes(job._payload)
            self._status(JobStatus.Running, node, job)

    def _leave_node(self, uid: int) -> None:
        key = self.where.pop(uid, None)
        if key is None:
            return
        on_node = self.running.get(key)
        if on_node is not None:
            on_node.discard(uid)
        node = self.known_nodes.get(key)
        if node is not None and node.busy > 0:
            node.busy -= 1

    def _on_requeued(self, msg: SharedRequeued) -> None:
        for uid in msg.job_ids:
            job = self.jobs.get(uid)
            if job is not None:
                self._leave_node(uid)
                job.status = JobStatus.Created
                job.ip_addr = None

    def _on_ended(self, msg: SharedEnded) -> None:
        ended = []
        for uid, status, reason in msg.jobs:
            job = self.jobs.pop(uid, None)
            if job is None:
                continue
            key = self.where.get(uid)
            self._leave_node(uid)
            node = self.known_nodes.get(key) if key is not None else None
            ended.append(uid)
            self._finish(job, _END_STATUS[status], exception=reason, node=node)
        if ended and self.recovery is not None:
            self.recovery.done(ended)
            self._housekeeping_soon()

    def _on_done(self, msg: SharedDone, payload: Payload) -> None:
        key = (msg.ip_addr, msg.port)
        node = self._node(key)
        for report in msg.jobs:
            self._leave_node(report.job_id)
        # The replies are read as a JobCluster reads a node's jobs.done.
        replies = JobDone.model_construct(comp_id=msg.comp_id, jobs=msg.jobs)
        self._end_replies(node, replies, payload)
        done = [report.job_id for report in msg.jobs]
        # On record (flushed) before the ack: a crash in between makes recovery fetch the
        # result again rather than miss it.
        if self.recovery is not None:
            self.recovery.done(done)
        self._acks.extend(done)
        self._housekeeping_soon()

    def _on_provisional(self, msg: JobProvisional, payload: Payload) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        ok, result = self._load_provisional(job, payload)
        if ok:
            key = self.where.get(msg.job_id)
            self._take_provisional(job, self.known_nodes.get(key) if key else None, result)

    # -- jobs from the user -------------------------------------------------------------

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
        while incoming:
            job = incoming.popleft()
            if job._done:
                continue
            if self.lost is not None or self._closing:
                self._finish(job, JobStatus.Abandoned, exception=self.lost or "cluster closed")
                continue
            jobs[job._uid] = job
            created.append(job)
        if not created:
            return
        for job in created:
            self._status(JobStatus.Created, None, job)
        assert self.recovery is not None
        assert self.conn is not None
        self.recovery.created(created)
        self.recovery.sent(self.shared.scheduler, created)
        self._housekeeping_soon()
        conn = self.conn
        try:
            for job in created:
                for spec in job._files or ():
                    conn.send_nowait(self._file_message(spec, job_id=job._uid), spec.data)
                job._files = None
            for batch, parts in job_frames(created):
                pinned = [
                    (uid, *jobs[uid]._pinned)  # type: ignore[misc]
                    for uid, _ in batch
                    if jobs[uid]._pinned is not None
                ]
                message = SharedSubmit(comp_id=self.comp_id, jobs=batch, pinned=pinned)
                conn.send_nowait(message, parts)
        except ConnectionClosed:
            pass  # the serving task reports the scheduler lost and ends the jobs

    def cancel(self, job: DispyJob) -> None:
        if job._uid in self.jobs:
            if self.conn is not None and self.lost is None:
                with contextlib.suppress(ConnectionClosed):
                    self.conn.send_nowait(JobCancel(comp_id=self.comp_id, job_ids=[job._uid]))
        elif job in self._incoming:  # not sent yet
            self._incoming.remove(job)
            self._finish(job, JobStatus.Cancelled, exception="Cancelled")

    def id_changed(self, job: DispyJob) -> None:
        """A job's ``id`` was set (user's thread): record it for recover_jobs."""
        if job._logged and self.recovery is not None:
            self.recovery.ids([job])

    # -- nodes, files -------------------------------------------------------------------

    def no_node_message(self, waited: float) -> str:
        """The warning given while no node serves the computation: what was offered."""
        host, port = self.shared.scheduler
        offered = [
            f"{o.name} ({key[0]}:{key[1]}, {o.cpus} CPUs{self._why_not_used(key)})"
            for key, o in self.offers.items()
        ]
        return "\n".join(
            [
                f"no node serves cluster {self.opts.name!r} on dispy-scheduler {host}:{port} "
                f"after {waited:.0f} s ({len(self.jobs)} job(s) waiting).",
                f"  offered: {', '.join(offered) or 'nothing (the scheduler has no node)'}",
                "  usual causes: no dispy-node runs for the scheduler (or with another "
                "--node_secret, or TLS on one side only); this cluster's nodes= entries or "
                "NodeAllocate objects match none of its nodes; the computation's setup failed "
                "on them (see the warnings above).",
            ]
        )

    def _why_not_used(self, key: NodeKey) -> str:
        # A node given CPUs that then failed (setup, lost) was not declined: say what
        # happened to it instead.
        node = self.known_nodes.get(key)
        if node is not None and node.error:
            return f", {node.error}"
        if key not in self.allocated:
            return ", declined by this cluster's nodes"
        return ""

    def node_keys(self) -> list[NodeKey]:
        """Nodes given to this computation (set up or being set up)."""
        return list(self.ready | set(self.allocated))

    def ready_nodes(self) -> list[DispyNode]:
        return [self.known_nodes[key] for key in list(self.ready) if key in self.known_nodes]

    def node_jobs(self, key: NodeKey) -> list[DispyJob]:
        jobs = self.jobs
        return [jobs[uid] for uid in self.running.get(key, ()) if uid in jobs]

    def allocate(self, alloc: NodeAllocate) -> int:
        """Add ``alloc`` to the cluster's nodes and offer it the nodes offered before that
        this cluster does not use yet; returns how many it took."""
        self.opts.nodes.append(alloc)
        taken = 0
        for key, offer in list(self.offers.items()):
            if key in self.allocated or key in self.ready:
                continue
            if self._allocate_offer(offer, [alloc], None, answer_zero=False):
                taken += 1
        return taken

    def _file_message(self, spec: FileSpec, job_id: int | None = None) -> FilePut:
        return FilePut(
            comp_id=self.comp_id,
            path=spec.path,
            size=len(spec.data),
            mode=spec.mode,
            mtime=spec.mtime,
            job_id=job_id,
        )

    async def send_file(self, key: NodeKey, spec: FileSpec) -> str | None:
        """Copy a file into the computation's directory on one node; None on success."""
        if self.lost is not None:
            return self.lost
        if key not in self.ready or self.conn is None:
            return f"node {key[0]}:{key[1]} is not serving this cluster"
        assert self.loop is not None
        self._file_req += 1
        req = self._file_req
        waiter: asyncio.Future[str | None] = self.loop.create_future()
        self._file_waiters[req] = waiter
        message = SharedFilePut(
            comp_id=self.comp_id,
            ip_addr=key[0],
            port=key[1],
            path=spec.path,
            size=len(spec.data),
            mode=spec.mode,
            mtime=spec.mtime,
            req=req,
        )
        try:
            await self.conn.send(message, spec.data)
            async with asyncio.timeout(max(self.opts.msg_timeout * 6, 30)):
                return await waiter
        except (ConnectionClosed, TimeoutError) as exc:
            return f"file not confirmed: {str(exc) or type(exc).__name__}"
        finally:
            self._file_waiters.pop(req, None)


def allocation(
    comp_id: int, key: NodeKey, cpus: int, own: tuple[list[FileSpec], bytes | None] | None
) -> tuple[NodeAllocation, bytes | list[bytes]]:
    """``sched.allocate`` for the node known as ``key``, with its own set-up (``own``: its
    files and start payload, None for the common ones) and the payload that carries it."""
    if own is None:
        return NodeAllocation(comp_id=comp_id, ip_addr=key[0], port=key[1], cpus=cpus), b""
    files, start = own
    message = NodeAllocation(
        comp_id=comp_id,
        ip_addr=key[0],
        port=key[1],
        cpus=cpus,
        start=None if start is None else len(start),
        files=[(f.path, len(f.data), f.mode, float(f.mtime)) for f in files],
    )
    parts = [] if start is None else [start]
    return message, parts + [f.data for f in files]
