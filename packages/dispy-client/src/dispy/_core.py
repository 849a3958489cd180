"""The asyncio side of a cluster: discovery, one connection per node, dispatch, results.

Theory of operation
-------------------
Everything here runs on the cluster's own event loop thread. The user's thread hands over
jobs through :meth:`ClusterCore.submit_threadsafe` (a deque plus one wake-up per burst, so
submitting thousands of jobs costs one loop wake-up, not thousands). Nodes find the client
through pings and connect to its port; after the handshake a node introduces itself, the
cluster's :class:`NodeAllocate` objects decide how many CPUs to use, the computation is sent
once, and when the node reports it ready its CPUs join the scheduling engine. ``_pump``
asks the engine for assignments and sends them as one ``jobs.submit`` frame per node per
loop turn; results come back batched the same way. A node whose connection breaks (or that
stays silent for 5 x pulse_interval) is dropped: its jobs are resubmitted when the cluster
is reentrant and cancelled otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispy._depends import FileSpec
from dispy._files import safe_local_path
from dispy._pinger import Pinger
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy.recovery import RecoveryLog, secret_record
from dispy_core import serialize
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import (
    Connection,
    ConnectionClosed,
    PeerRefused,
)
from dispy_core.aio.fanout import Presence, keep_pinging
from dispy_core.aio.tasks import TaskOwner
from dispy_core.buffers import BufferPool
from dispy_core.config import DEFAULT_PULSE, dead_after
from dispy_core.files import store_file
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Buffer, Outgoing, Payload, nbytes
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import (
    MAX_IDS,
    NOT_WANTED,
    CloseComputation,
    ComputationClosed,
    ComputationFailed,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    CpusSet,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    JobDone,
    JobProvisional,
    JobStarted,
    JobSubmit,
    Message,
    NodeInfo,
    Notice,
    Pulse,
    SetCpus,
    clip,
)
from dispy_core.results import iter_replies, read_reply
from dispy_core.scheduling import Scheduler
from dispy_core.secret import SECRET_ENV, no_secret_warning, user_name
from dispy_core.security import TLSConfig

if TYPE_CHECKING:
    from dispy._callbacks import CallbackRunner

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]
HOUSEKEEPING_DELAY = 0.02
QUEUE_SECONDS = 0.02  # work to keep queued on a node, per CPU
MAX_DEPTH = 32
RESULT_BUFFERS = 64 << 20  # receive buffers kept for reuse
QUEUE_BYTES = 8 << 20  # arguments to keep queued on a node, per CPU, beyond one job
MAX_JOBS_PER_FRAME = 1024
MAX_BYTES_PER_FRAME = 8 << 20


@dataclass
class ClusterOptions:
    name: str
    kind: str
    start_payload: Outgoing
    files: list[FileSpec]
    nodes: list[NodeAllocate]
    ip_addrs: list[str]
    ext_ip_addrs: list[str]
    port: int
    node_port: int
    secret: str
    secret_origin: str  # where the secret came from: "secret=", "DISPY_SECRET" or ""
    tls: TLSConfig
    dest_path: str | None
    cleanup: bool
    pulse_interval: float | None
    ping_interval: float | None
    reentrant: bool
    msg_timeout: float
    callback: Callable[[DispyJob], Any] | None
    recover_file: str
    cluster_status: Callable[[int, DispyNode | None, DispyJob | None], Any] | None
    pick_recover_file: bool = False  # recover_file is a default name: take the next free one


@dataclass(eq=False)
class _NodeSession:
    key: NodeKey
    conn: Connection
    node: DispyNode
    ready: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    last_heard: float = field(default_factory=time.monotonic)
    total_cpus: int = 0
    zombie_interval: float = 3600.0
    cpus_waiter: asyncio.Future[int] | None = None
    acks: list[int] = field(default_factory=list)
    waiting: set[int] = field(default_factory=set)  # sent ahead, not started yet
    job_time: float = 0.0  # moving average of job run time on this node
    file_waiters: dict[int, asyncio.Future[str | None]] = field(default_factory=dict)


class ClusterCore:
    """See the module docstring. Created and used on the cluster's loop thread only."""

    def __init__(self, opts: ClusterOptions, callbacks: CallbackRunner, owner: Any) -> None:
        self.opts = opts
        self.owner = owner
        self.callbacks = callbacks
        self.comp_id = int.from_bytes(os.urandom(4), "big")
        self.cluster_token = os.urandom(12).hex()
        self.engine: Scheduler[int, NodeKey] = Scheduler()
        self.jobs: dict[int, DispyJob] = {}
        self.sessions: dict[NodeKey, _NodeSession] = {}
        self.known_nodes: dict[NodeKey, DispyNode] = {}
        self.refusals: dict[str, str] = {}
        self._file_req = 0
        self.port = opts.port
        self._incoming: deque[DispyJob] = deque()
        self._incoming_scheduled = False
        self._pump_scheduled = False
        self._housekeeping_scheduled = False
        # Moving size of jobs' arguments: up at once, down slowly. Queue depths on nodes
        # were last set for _depth_bytes.
        self._job_bytes = 0.0
        self._depth_bytes = 0.0
        self._servers: list[asyncio.Server] = []
        self.admission = Admission()
        # Results are unpickled as they arrive, so their buffers come back at once.
        self.buffers = BufferPool(max_bytes=RESULT_BUFFERS)
        self.pinger = Pinger(opts, self.cluster_token)
        self._tasks = TaskOwner("cluster", log=log)
        self._started = time.monotonic()
        self._closing = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        opts = self.opts
        # Every address listens on the same port (the one nodes are told), even with port=0.
        hosts: list[str | None] = list(opts.ip_addrs) or [None]
        first, *others = hosts
        servers: list[asyncio.Server] = [
            await start_server(
                self._accept,
                tasks=self._tasks,
                host=first,
                port=opts.port,
                ssl_context=opts.tls.server,
                handshake_timeout=opts.msg_timeout,
            )
        ]
        self.port = servers[0].sockets[0].getsockname()[1]
        try:
            for host in others:
                servers.append(
                    await start_server(
                        self._accept,
                        tasks=self._tasks,
                        host=host,
                        port=self.port,
                        ssl_context=opts.tls.server,
                        handshake_timeout=opts.msg_timeout,
                    )
                )
        except OSError:
            for server in servers:
                server.close()
            raise
        self._servers = servers
        header = {
            "comp_id": self.comp_id,
            "name": opts.name,
            **secret_record(opts.secret, opts.secret_origin),
            "certfile": opts.tls.certfile,
            "keyfile": opts.tls.keyfile,
            "node_port": opts.node_port,
            "msg_timeout": opts.msg_timeout,
            "started": time.time(),
        }
        try:
            self.recovery = RecoveryLog(opts.recover_file, header, opts.pick_recover_file)
        except OSError:
            for server in servers:
                server.close()
            raise
        opts.recover_file = self.recovery.path
        if not opts.secret:
            log.warning(self._no_secret_warning())
        self.pinger.start(self.port)
        self.pinger.ping_all()
        self._tasks.start(self._watchdog())
        self._tasks.start(self._pulse_monitor(opts.pulse_interval))

    def _no_secret_warning(self) -> str:
        hosts = ", ".join(self.opts.ip_addrs) or "any address of this host"
        return no_secret_warning(
            f"dispy cluster {self.opts.name!r}",
            f"{hosts} port {self.port}",
            "pose as a node: receive this computation and its arguments, and send back "
            f"results this program unpickles (running their code as user {user_name()!r} here)",
            f"the {SECRET_ENV} environment variable or JobCluster(secret=...)",
        )

    async def close(self, terminate: bool) -> None:
        """Close the computation on every node and stop serving."""
        self._closing = True
        if terminate:
            for uid in list(self.jobs):
                self.cancel(self.jobs[uid])
        sessions = list(self.sessions.values())
        for session in sessions:
            with contextlib.suppress(Exception):
                session.conn.send_nowait(
                    CloseComputation(comp_id=self.comp_id, terminate=terminate)
                )
        # All nodes at once, and a hung node costs msg_timeout, not more.
        if sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.closed.wait() for s in sessions)), self.opts.msg_timeout
                )
        await asyncio.gather(*(s.conn.close() for s in sessions))
        for server in self._servers:
            server.close()
        self.pinger.close()
        await self._tasks.close()
        left = list(self.jobs.items())
        for uid, job in left:
            self._finish(job, JobStatus.Abandoned, exception="cluster closed")
            self.jobs.pop(uid, None)
        self.recovery.close(remove=True)
        self.buffers.clear()

    # -- discovery ----------------------------------------------------------------------

    async def _watchdog(self) -> None:
        # Re-pings and the no-node warning, on core's schedule (PROTOCOL.md 6.2).
        def warn() -> None:
            log.warning(self.no_node_message())

        def presence() -> Presence:
            ready = any(s.ready for s in self.sessions.values())
            return Presence(connected=bool(self.sessions), waiting=not ready and not self._closing)

        await keep_pinging(
            ping_interval=self.opts.ping_interval,
            ping=self.pinger.ping_all,
            warn=warn,
            presence=presence,
        )

    def no_node_message(self) -> str:
        return self.pinger.no_node_message(
            waited=time.monotonic() - self._started,
            waiting=len(self.jobs),
            refusals=self.refusals,
        )

    # -- node sessions ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)

        def refused(exc: BaseException) -> None:
            # kept for the no-node warning: why a node that reached us was not used
            if isinstance(exc, ProtocolError):
                self.refusals[str(peer[0])] = str(exc)

        conn = await self.admission.accept(
            reader,
            writer,
            logger=log,
            dropped_level=logging.INFO,
            on_failure=refused,
            secret=self.opts.secret,
            role="client",
            name=self.opts.name,
            timeout=self.opts.msg_timeout,
            allocate=self.buffers.take,
        )
        if conn is None:
            return
        try:
            await self._serve_node(conn)
        except Exception:
            log.exception("node %s: unexpected error", conn.peer_name)
            await conn.close()

    def _find_allocation(self, info: NodeInfo) -> NodeAllocate | None:
        for alloc in self.opts.nodes:
            if alloc._matches(info.ip_addr, info.port, self.opts.node_port):
                return alloc
        return None

    async def _serve_node(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(self.opts.msg_timeout):
                msg, _ = await conn.recv()
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            log.warning("node %s did not introduce itself: %r", conn.peer_name, exc)
            await conn.close()
            return
        if not isinstance(msg, NodeInfo):
            await conn.refuse(f"expected node.info, got {msg.type}")
            return
        info = msg
        key: NodeKey = (info.ip_addr, info.port)
        if self._closing:
            await conn.refuse("cluster is closing")
            return
        if key in self.sessions:
            await conn.refuse("this cluster already has a connection to the node")
            return
        alloc = self._find_allocation(info)
        avail = DispyNodeAvailInfo._from_wire(info.avail)
        cpus = 0
        if alloc is not None:
            try:
                cpus = int(
                    alloc.allocate(
                        self.owner, info.ip_addr, info.name, info.cpus, avail, info.platform
                    )
                )
            except Exception:
                log.exception("allocate() of %r raised for node %s", alloc, info.name)
                cpus = 0
        if cpus <= 0:
            log.info("node %s (%s:%d) not used by this cluster", info.name, *key)
            await conn.refuse(NOT_WANTED)
            return
        cpus = min(cpus, info.cpus)
        node = self.known_nodes.get(key)
        if node is None:
            node = DispyNode(info.ip_addr, info.port, info.name, cpus, info.platform)
            self.known_nodes[key] = node
        node.cpus = cpus
        node.avail_info = avail
        node.update_time = time.time()
        session = _NodeSession(
            key, conn, node, total_cpus=info.cpus, zombie_interval=info.zombie_interval
        )
        self.sessions[key] = session
        opts = self.opts
        try:
            conn.send_nowait(
                ComputationSetup(
                    comp_id=self.comp_id,
                    name=opts.name,
                    kind=opts.kind,  # type: ignore[arg-type]
                    cpus=cpus,
                    dest_path=opts.dest_path,
                    cleanup=opts.cleanup,
                    pulse_interval=opts.pulse_interval,
                )
            )
            for spec in opts.files:
                conn.send_nowait(self._file_message(spec), spec.data)
                await conn.drain()
            await conn.send(ComputationStart(comp_id=self.comp_id), opts.start_payload)
            keepalive = self._tasks.start(self._keepalive(session))
            try:
                await self._read_node(session)
            finally:
                keepalive.cancel()
        except ConnectionClosed as exc:
            self._node_lost(session, f"connection lost: {exc}")
        except PeerRefused as exc:
            self._node_lost(session, exc.reason)
        except ProtocolError as exc:
            await conn.refuse(clip(str(exc), 1000))
            self._node_lost(session, str(exc))
        except Exception as exc:
            # A bug on this side while handling the node's messages: this node's connection
            # ends (its jobs are resubmitted or cancelled), the cluster goes on.
            log.exception("node %s: error while handling its messages", session.node.name)
            reason = f"client error: {type(exc).__name__}: {exc}"
            await conn.refuse(clip(reason, 1000))
            self._node_lost(session, reason)
        finally:
            session.closed.set()
            if self.sessions.get(key) is session:
                self._node_lost(session, "connection closed")

    async def _read_node(self, session: _NodeSession) -> None:
        conn = session.conn

        def handle(msg: Message, payload: Payload) -> Awaitable[None] | None:
            # Runs inside the connection's protocol callback: results are handled in the
            # same loop turn they arrive in.
            session.last_heard = time.monotonic()
            if isinstance(msg, JobDone):
                self._job_replies(session, msg, payload)
            elif isinstance(msg, Pulse):
                session.node.avail_info = DispyNodeAvailInfo._from_wire(msg.avail)
                session.node.update_time = time.time()
                self._status(NodeStatus.AvailInfo, session.node, None)
            elif isinstance(msg, ComputationReady):
                session.ready = True
                self.recovery.node(session.key)
                session.node.cpus = msg.cpus
                self.engine.add_node(session.key, msg.cpus, extra=msg.cpus)
                log.info(
                    "node %s (%s:%d) ready with %d CPU(s)",
                    session.node.name,
                    *session.key,
                    msg.cpus,
                )
                self._status(NodeStatus.Initialized, session.node, None)
                self._pump()
            elif isinstance(msg, JobStarted):
                self._jobs_started(session, msg.job_ids)
            elif isinstance(msg, JobProvisional):
                self._provisional(session, msg, payload)
            elif isinstance(msg, FilePut):
                self._tasks.start(self._receive_file(session, msg, payload))
            elif isinstance(msg, FileAck):
                waiter = session.file_waiters.pop(msg.req, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg.error)
            elif isinstance(msg, CpusSet):
                self._cpus_set(session, msg.cpus)
            elif isinstance(msg, ComputationFailed):
                log.warning(
                    "node %s (%s:%d) cannot run %s: %s",
                    session.node.name,
                    *session.key,
                    self.opts.name,
                    msg.reason,
                )
                self.refusals[f"{session.key[0]}:{session.key[1]}"] = msg.reason
                session.node.error = msg.reason
                self._status(NodeStatus.SetupFailed, session.node, None)
                self._node_lost(session, msg.reason)
                conn.finish()
            elif isinstance(msg, ComputationClosed):
                session.closed.set()
                self._node_lost(session, "closed")
                conn.finish()
            elif isinstance(msg, Notice):
                level = logging.ERROR if msg.level == "error" else logging.WARNING
                log.log(level, "node %s: %s", session.node.name, msg.text)
            return None

        await conn.serve(handle)
        await conn.close()

    def _node_lost(self, session: _NodeSession, reason: str, *, dead: bool = False) -> None:
        if self.sessions.get(session.key) is not session:
            return
        del self.sessions[session.key]
        lost = self.engine.remove_node(session.key)
        session.node.busy = 0
        if session.ready and reason != "closed":
            log.warning("node %s (%s:%d) lost: %s", session.node.name, *session.key, reason)
        for uid in lost:
            job = self.jobs.get(uid)
            if job is None:
                continue
            # Even a job the client saw only as queued there may have started just before the
            # node stopped (its jobs.started not yet sent): without `reentrant` it is not run
            # again, as the reference says of jobs scheduled on a dead node.
            if self.opts.reentrant and job._pinned is None and not self._closing:
                job.status = JobStatus.Created
                job.ip_addr = None
                self.engine.submit(uid, front=True)
            else:
                self._finish(
                    job,
                    JobStatus.Cancelled,
                    exception=f"Cancelled: node {session.key[0]}:{session.key[1]} {reason}",
                )
                self.jobs.pop(uid, None)
        if session.ready:
            abandoned = dead or reason != "closed"
            session.node.error = reason if abandoned else None
            status = NodeStatus.AbandonedNode if abandoned else NodeStatus.Closed
            self._status(status, session.node, None)
        self._pump()

    async def _pulse_monitor(self, interval: float | None) -> None:
        # Without pulse_interval nodes still pulse every DEFAULT_PULSE seconds, and a node
        # silent for much longer than that is taken for dead, so no job waits forever on a
        # hung node.
        limit = dead_after(interval)
        while True:
            await asyncio.sleep(min(interval or DEFAULT_PULSE, limit / 5))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                silent = now - session.last_heard
                if session.ready and silent > limit:
                    reason = f"declared dead: no pulse for {silent:.0f} s"
                    self._node_lost(session, reason, dead=True)
                    self._tasks.start(session.conn.refuse(reason))

    # -- jobs ---------------------------------------------------------------------------

    def submit_threadsafe(self, job: DispyJob) -> None:
        """Called from the user's thread."""
        self._incoming.append(job)
        if not self._incoming_scheduled:
            self._incoming_scheduled = True
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        self._incoming_scheduled = False
        incoming = self._incoming
        created: list[DispyJob] = []
        while incoming:
            job = incoming.popleft()
            if job._done:
                continue
            self.jobs[job._uid] = job
            pin = job._pinned
            if pin is not None and not self.engine.has_node(pin):
                self._finish(
                    job,
                    JobStatus.Cancelled,
                    exception=f"node {pin[0]}:{pin[1]} is not in this cluster",
                )
                self.jobs.pop(job._uid, None)
                continue
            self.engine.submit(job._uid, pin)
            payload = job._payload
            if payload is not None:
                size = len(payload) if isinstance(payload, bytes) else nbytes(payload)
                self._job_bytes = max(size, 0.9 * self._job_bytes + 0.1 * size)
            created.append(job)
            if self.opts.cluster_status is not None:
                self._status(JobStatus.Created, None, job)
        if self._job_bytes > 2 * self._depth_bytes + QUEUE_BYTES // MAX_DEPTH:
            # Larger jobs than the queues on nodes were sized for: shorten them before
            # these jobs are handed out.
            for session in self.sessions.values():
                self._set_depth(session)
        if created:
            self.recovery.created(created)
            self._housekeeping_soon()
        self._do_pump()

    def _pump(self) -> None:
        if self._pump_scheduled:
            return
        self._pump_scheduled = True
        assert self.loop is not None
        self.loop.call_soon(self._do_pump)

    def _housekeeping_soon(self) -> None:
        if not self._housekeeping_scheduled:
            assert self.loop is not None
            self._housekeeping_scheduled = True
            self.loop.call_later(HOUSEKEEPING_DELAY, self._housekeeping)

    def id_changed(self, job: DispyJob) -> None:
        """A job's ``id`` was set (user's thread): record it for recover_jobs.

        Until its first record is written the job's id is read then, so the usual
        ``job.id = n`` right after submit() costs nothing here.
        """
        if job._logged:
            self.recovery.ids([job])

    def _housekeeping(self) -> None:
        """Flush the recover file, then acknowledge results no jobs.submit carried.

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

    def _do_pump(self) -> None:
        self._pump_scheduled = False
        assignments = self.engine.assign()
        if not assignments:
            return
        now = time.time()
        by_node: dict[NodeKey, list[DispyJob]] = {}
        for uid, key in assignments:
            job = self.jobs[uid]
            job.ip_addr = key[0]
            by_node.setdefault(key, []).append(job)
        report = self.opts.cluster_status is not None
        for key, jobs in by_node.items():
            self.recovery.sent(key, jobs)
        self._housekeeping_soon()
        for key, jobs in by_node.items():
            session = self.sessions[key]
            node = session.node
            # Jobs that fill free CPUs run now; the rest wait on the node (so its CPUs never
            # wait for the network) and the node says when each of them starts.
            free = max(0, node.cpus - node.busy)
            running, ahead = jobs[:free], jobs[free:]
            for job in running:
                job.status = JobStatus.Running
                job.start_time = now
            node.busy += len(running)
            for job in ahead:
                session.waiting.add(job._uid)
            self._send_jobs(session, jobs, [job._uid for job in ahead])
            if report:
                for job in running:
                    self._status(JobStatus.Running, node, job)

    def _jobs_started(self, session: _NodeSession, job_ids: list[int]) -> None:
        now = time.time()
        for uid in job_ids:
            if uid not in session.waiting:
                continue
            session.waiting.discard(uid)
            job = self.jobs.get(uid)
            if job is None or job._done:
                continue
            job.status = JobStatus.Running
            job.start_time = now
            session.node.busy += 1
            if self.opts.cluster_status is not None:
                self._status(JobStatus.Running, session.node, job)

    def _send_jobs(self, session: _NodeSession, jobs: list[DispyJob], ahead: list[int]) -> None:
        for job in jobs:
            if job._files:
                for spec in job._files:
                    with contextlib.suppress(ConnectionClosed):
                        message = self._file_message(spec, job_id=job._uid)
                        session.conn.send_nowait(message, spec.data)
                job._files = None
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
            notify = [uid for uid, _ in batch if uid in session.waiting] if ahead else []
            try:
                submit = JobSubmit(comp_id=self.comp_id, jobs=batch, notify=notify)
                session.conn.send_nowait(submit, parts)
            except ConnectionClosed:
                return

    def _job_replies(self, session: _NodeSession, msg: JobDone, payload: Payload) -> None:
        node = session.node
        current = self.sessions.get(session.key) is session
        done: list[int] = []
        for report, data in iter_replies(msg, payload):
            done.append(report.job_id)
            # A result from a node this cluster gave up on (the job was resubmitted or
            # cancelled since) must not end the job a second time.
            if not current or self.engine.node_of(report.job_id) != session.key:
                continue
            job = self.jobs.pop(report.job_id, None)
            self.engine.finished(report.job_id)
            if job is None:
                continue
            if report.job_id in session.waiting:
                session.waiting.discard(report.job_id)
            else:
                node.busy = max(0, node.busy - 1)
            status, job.result, job.stdout, job.stderr, job.exception = read_reply(
                report.outcome, data
            )
            job.start_time = report.start
            job.end_time = report.end
            job.ip_addr = session.key[0]
            node.jobs_done += 1
            node.cpu_time += max(0.0, report.end - report.start)
            self._finish(job, status, node=node)
        # Logged (and flushed) before the ack goes out with the next frame: a crash in
        # between makes recovery fetch the result again rather than miss it.
        self.recovery.done(done)
        session.acks.extend(done)
        self._adapt_depth(session, msg)
        self._housekeeping_soon()
        self._do_pump()

    def _adapt_depth(self, session: _NodeSession, msg: JobDone) -> None:
        for report in msg.jobs:
            took = max(0.0, report.end - report.start)
            session.job_time = took if not session.job_time else 0.8 * session.job_time + 0.2 * took
        self._set_depth(session)

    def _set_depth(self, session: _NodeSession) -> None:
        """Keep enough jobs queued on a node that its CPUs never wait for the network.

        Short jobs get a deeper queue (up to MAX_DEPTH per CPU: bigger batches, fewer
        frames); long jobs, and jobs with large arguments, keep one extra per CPU so load
        stays balanced across nodes and a node does not hold many large jobs in memory.
        """
        self._depth_bytes = self._job_bytes
        if not self.engine.has_node(session.key) or not session.job_time:
            return
        per_cpu = 1 + min(
            MAX_DEPTH - 1,
            int(QUEUE_SECONDS / max(session.job_time, 1e-6)),
            int(QUEUE_BYTES / max(self._job_bytes, 1.0)),
        )
        cpus = session.node.cpus
        self.engine.add_node(session.key, cpus, extra=cpus * per_cpu)

    def _finish(
        self,
        job: DispyJob,
        status: JobStatus,
        *,
        exception: str | None = None,
        node: DispyNode | None = None,
    ) -> None:
        if job._done:
            return
        job._on_id = None
        job.status = status
        if exception is not None:
            job.exception = exception
        if job.end_time is None:
            job.end_time = time.time()
        job._payload = None
        job._mark_done()
        opts = self.opts
        if opts.cluster_status is not None:
            self.callbacks.post(opts.cluster_status, status, node, job)
        if opts.callback is not None:
            self.callbacks.post(opts.callback, job)
        self.owner._job_ended()

    def _status(self, status: int, node: DispyNode | None, job: DispyJob | None) -> None:
        if self.opts.cluster_status is not None:
            self.callbacks.post(self.opts.cluster_status, status, node, job)

    def cancel(self, job: DispyJob) -> None:
        where = self.engine.cancel(job._uid)
        if where == "queued":
            self.jobs.pop(job._uid, None)
            self._finish(job, JobStatus.Cancelled, exception="Cancelled")
        elif where == "placed":
            key = self.engine.node_of(job._uid)
            session = self.sessions.get(key) if key else None
            if session is not None:
                with contextlib.suppress(ConnectionClosed):
                    session.conn.send_nowait(JobCancel(comp_id=self.comp_id, job_ids=[job._uid]))
        elif job in self._incoming:
            self._incoming.remove(job)
            self._finish(job, JobStatus.Cancelled, exception="Cancelled")

    # -- files, provisional results, CPUs ---------------------------------------------

    def _file_message(self, spec: FileSpec, job_id: int | None = None, req: int = 0) -> FilePut:
        return FilePut(
            comp_id=self.comp_id,
            path=spec.path,
            size=len(spec.data),
            mode=spec.mode,
            mtime=spec.mtime,
            job_id=job_id,
            req=req,
        )

    def _provisional(self, session: _NodeSession, msg: JobProvisional, payload: Payload) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        try:
            result = serialize.loads(payload)
        except serialize.SerializationError as exc:
            log.warning("provisional result of job %s cannot be read here: %s", job.id, exc)
            return
        job.status = JobStatus.ProvisionalResult
        job.result = result
        # The callback gets a snapshot: the final result may overwrite the job before the
        # callback thread runs.
        snapshot = copy.copy(job)
        if self.opts.cluster_status is not None:
            self.callbacks.post(
                self.opts.cluster_status, JobStatus.ProvisionalResult, session.node, snapshot
            )
        if self.opts.callback is not None:
            self.callbacks.post(self.opts.callback, snapshot)

    async def _receive_file(self, session: _NodeSession, msg: FilePut, payload: Payload) -> None:
        error: str | None = None
        try:
            target = safe_local_path(os.getcwd(), msg.path)
            await asyncio.to_thread(store_file, target, payload, msg.mode, msg.mtime)
        except (ValueError, OSError) as exc:
            error = clip(f"client refused {msg.path!r}: {exc}")
            log.warning("file from node %s: %s", session.node.name, error)
        if msg.req:
            with contextlib.suppress(ConnectionClosed):
                session.conn.send_nowait(FileAck(comp_id=self.comp_id, req=msg.req, error=error))

    async def send_file(self, key: NodeKey, spec: FileSpec) -> str | None:
        """Copy a file into the computation's directory on one node; None on success."""
        session = self.sessions.get(key)
        if session is None or not session.ready:
            return f"node {key[0]}:{key[1]} is not serving this cluster"
        assert self.loop is not None
        self._file_req += 1
        req = self._file_req
        waiter: asyncio.Future[str | None] = self.loop.create_future()
        session.file_waiters[req] = waiter
        try:
            await session.conn.send(self._file_message(spec, req=req), spec.data)
            async with asyncio.timeout(max(self.opts.msg_timeout * 6, 30)):
                return await waiter
        except (ConnectionClosed, TimeoutError) as exc:
            return f"file not confirmed by the node: {str(exc) or type(exc).__name__}"
        finally:
            session.file_waiters.pop(req, None)

    async def set_cpus(self, key: NodeKey, cpus: int) -> int:
        session = self.sessions.get(key)
        if session is None or not session.ready:
            return -1
        wanted = cpus if cpus > 0 else session.total_cpus + cpus
        if wanted < 1 or wanted > session.total_cpus:
            return -1
        assert self.loop is not None
        session.cpus_waiter = self.loop.create_future()
        try:
            await session.conn.send(SetCpus(comp_id=self.comp_id, cpus=wanted))
            async with asyncio.timeout(self.opts.msg_timeout):
                return await session.cpus_waiter
        except (ConnectionClosed, TimeoutError):
            return -1
        finally:
            session.cpus_waiter = None

    def _cpus_set(self, session: _NodeSession, cpus: int) -> None:
        session.node.cpus = cpus
        if self.engine.has_node(session.key):
            self.engine.add_node(session.key, cpus, extra=cpus)
        if session.cpus_waiter is not None and not session.cpus_waiter.done():
            session.cpus_waiter.set_result(cpus)
        self._pump()

    def node_jobs(self, key: NodeKey) -> list[DispyJob]:
        """Jobs running on the node now (not those waiting there for a CPU)."""
        session = self.sessions.get(key)
        waiting = session.waiting if session is not None else set()
        return [
            self.jobs[uid]
            for uid in self.engine.jobs_on(key)
            if uid in self.jobs and uid not in waiting
        ]

    def allocate(self, alloc: NodeAllocate) -> None:
        self.opts.nodes.append(alloc)
        self.pinger.ping_all()

    async def _keepalive(self, session: _NodeSession) -> None:
        # Often enough for the node's zombie_interval and for its lease on queued jobs
        # (it starts them only while it hears from us within dead_after()).
        pulse = self.opts.pulse_interval or DEFAULT_PULSE
        interval = max(min(session.zombie_interval / 3, pulse), 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionClosed):
                session.conn.send_nowait(Pulse())
