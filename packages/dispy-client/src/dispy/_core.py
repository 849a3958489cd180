"""The asyncio side of a cluster: its server, discovery, node connections and jobs.

Theory of operation
-------------------
Everything here runs on the cluster's own event loop thread. The user's thread hands over
jobs through :meth:`ClusterCore.submit_threadsafe` (a deque plus one wake-up per burst, so
submitting thousands of jobs costs one loop wake-up, not thousands). Nodes find the client
through pings and connect to its port; a listed node that has not connected back a second
after the start is dialed over TCP (:mod:`dispy_core.aio.dialer`: TCP-only forwards, SSH
``-L``). Each connection is served by
:mod:`dispy._node_session` (handshake, computation setup, its messages). What to run where
is decided by the scheduling engine (:mod:`dispy_core.engine`), which the shell in
:mod:`dispy._shell` feeds with events and whose commands it carries out: one ``jobs.submit``
frame per node per command, results batched the same way. A node whose connection breaks
(or that the engine declares dead after 5 x pulse_interval of silence) is dropped: the
engine resubmits its jobs when the cluster is reentrant and cancels them otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispy._depends import FileSpec
from dispy._node_session import NodeSession, serve_node
from dispy._pinger import Pinger
from dispy._shell import JobShell
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, NodeAllocate
from dispy.recovery import RecoveryLog, secret_record
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.aio.dialer import Dialer
from dispy_core.aio.fanout import Presence, keep_pinging
from dispy_core.aio.handshake import open_connection
from dispy_core.aio.tasks import TaskOwner
from dispy_core.buffers import BufferPool
from dispy_core.engine import (
    CancelRequested,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    Engine,
    Event,
    NodeCpusChanged,
)
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Outgoing, Payload
from dispy_core.protocol.messages import CloseComputation, FilePut, SetCpus
from dispy_core.secret import SECRET_ENV, no_secret_warning, user_name
from dispy_core.security import TLSConfig

if TYPE_CHECKING:
    from dispy._callbacks import CallbackRunner

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]
RESULT_BUFFERS = 64 << 20  # receive buffers kept for reuse


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
    bundle: dict[str, Any] | None = None  # see Computation.bundle


class ClusterCore(JobShell):
    """See the module docstring. Created and used on the cluster's loop thread only."""

    def __init__(self, opts: ClusterOptions, callbacks: CallbackRunner, owner: Any) -> None:
        self.opts = opts
        self.owner = owner
        self.callbacks = callbacks
        self.comp_id = int.from_bytes(os.urandom(4), "big")
        self.cluster_token = os.urandom(12).hex()
        self.engine = Engine()
        self.jobs: dict[int, DispyJob] = {}
        self.sessions: dict[NodeKey, NodeSession] = {}
        self.known_nodes: dict[NodeKey, DispyNode] = {}
        self.refusals: dict[str, str] = {}
        # setup_args given to resetup_node(), which win over the NodeAllocate's for that node
        self.resetup_args: dict[NodeKey, tuple[Any, ...]] = {}
        # Nodes let go by deallocate_node/close_node, with the CPUs they had: not given
        # jobs (nor taken back if they reconnect) until allocate_node names them again.
        self.released: dict[NodeKey, int] = {}
        self._file_req = 0
        self.port = opts.port
        self._incoming: deque[DispyJob] = deque()
        self._incoming_scheduled = False
        self._deferred: list[Event] = []
        self._housekeeping_scheduled = False
        self._dropped = False
        self._servers: list[asyncio.Server] = []
        self.admission = Admission()
        # Results are unpickled as they arrive, so their buffers come back at once.
        self.buffers = BufferPool(max_bytes=RESULT_BUFFERS)
        self.pinger = Pinger(opts, self.cluster_token)
        self._tasks = TaskOwner("cluster", log=log)
        # Listed nodes that did not connect back are dialed (PROTOCOL.md 6.2).
        self.dialer = Dialer(
            tasks=self._tasks,
            logger=log,
            connect=self._dial,
            serve=lambda conn, target, info: serve_node(self, conn, listed_as=target, info=info),
            held=lambda key: key in self.sessions,
            held_as=self._held_as,
            refused=self.refusals.__setitem__,
            timeout=opts.msg_timeout,
        )
        self._started = time.monotonic()
        self._closing = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        opts = self.opts
        self.engine.handle(
            ComputationOpened(self.comp_id, opts.reentrant, opts.pulse_interval), time.monotonic()
        )
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
        await self.pinger.listen_relays()
        self.pinger.ping_all()
        self._tasks.start(self._watchdog())
        self.dialer.start()
        self._tasks.start(self.dialer.early_rounds(self.pinger.dial_targets))
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
        self._apply(self._handle(ComputationClosed(self.comp_id, terminate)))
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
        self._apply(self._handle(ComputationDropped(self.comp_id, "cluster closed")))
        self._dropped = True
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
            ping=self._ping_round,
            warn=warn,
            presence=presence,
        )

    def _ping_round(self) -> None:
        # UDP pings, then TCP dials of listed nodes that did not connect back (6.2).
        self.pinger.ping_all()
        if not self._closing:
            self.dialer.dial_all(self.pinger.dial_targets())

    async def _dial(self, host: str, port: int) -> Connection:
        opts = self.opts
        return await open_connection(
            host,
            port,
            secret=opts.secret,
            role="client",
            name=opts.name,
            timeout=opts.msg_timeout,
            ssl_context=opts.tls.client,
            allocate=self.buffers.take,
        )

    def _held_as(self, name: str) -> NodeKey | None:
        # A dialed node that refused us as busy is the node of that name we hold, if any.
        for key, session in list(self.sessions.items()):
            if session.node.name == name:
                return key
        return None

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
            await serve_node(self, conn)
        except Exception:
            log.exception("node %s: unexpected error", conn.peer_name)
            await conn.close()

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

    async def _receive_file(self, session: NodeSession, msg: FilePut, payload: Payload) -> None:
        await self._store_file(session.conn, msg, payload, f"node {session.node.name}")

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

    def node_keys(self) -> list[NodeKey]:
        """The nodes connected to this cluster (ready or being set up)."""
        return list(self.sessions)

    def ready_nodes(self) -> list[DispyNode]:
        """The nodes serving this cluster now."""
        return [s.node for s in list(self.sessions.values()) if s.ready]

    def allocate(self, alloc: NodeAllocate) -> None:
        self.opts.nodes.append(alloc)
        for key in [k for k in self.released if alloc._matches(*k, self.opts.node_port)]:
            cpus = self.released.pop(key)
            if key in self.sessions and self.engine.allocation(self.comp_id, key) is not None:
                self._apply(self._handle(NodeCpusChanged(key, self.comp_id, cpus)))
        self._ping_round()

    def release(self, key: NodeKey, close: bool, terminate: bool) -> int:
        """deallocate_node (``close`` False) and close_node of dispy 4.15.

        The node gets no more jobs of this cluster; those it has go on. With ``close`` it
        also closes the computation (ending its jobs with ``terminate``), so the session
        ends as at the cluster's close. Returns 0, or -1 if the node does not serve it.
        """
        session = self.sessions.get(key)
        alloc = self.engine.allocation(self.comp_id, key)
        if session is None or alloc is None:
            return -1
        self.released.setdefault(key, alloc.cpus)
        # 0 CPUs in the engine only: the node's own CPU setting is not this cluster's to
        # change, and the engine then places nothing more there.
        self._apply(self._handle(NodeCpusChanged(key, self.comp_id, 0)))
        if close:
            # Jobs waiting for this node alone would wait for ever: they end now, Cancelled
            # (with their cluster_status events), as 4.15's close_node dropped them.
            waiting = tuple(self.engine.pinned_waiting(self.comp_id, key))
            if waiting:
                reason = f"Cancelled: node {key[0]}:{key[1]} closed (close_node)"
                self._apply(self._handle(CancelRequested(self.comp_id, waiting, reason)))
            with contextlib.suppress(ConnectionClosed):
                session.conn.send_nowait(
                    CloseComputation(comp_id=self.comp_id, terminate=terminate)
                )
        return 0
