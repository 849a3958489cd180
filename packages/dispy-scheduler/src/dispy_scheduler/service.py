"""The running scheduler: its listeners, discovery, timers and shutdown.

Theory of operation
-------------------
:class:`Scheduler` is the shell of :mod:`dispy_scheduler._shell` with its I/O: it listens
for nodes on ``--port`` (role ``scheduler`` toward them, the node secret and node TLS
files) and for clients on ``--scheduler_port`` (the cluster secret and cluster TLS files;
role ``client`` for a SharedJobCluster, ``recover`` for ``recover_jobs``). It finds nodes as
a client does (PROTOCOL.md 6.2): a broadcast on the LAN, unicast pings to ``--nodes`` and
to the hosts clients name, again on core's re-ping schedule, every ``--ping_interval`` (60 s
without it) and whenever a computation opens; nodes started with ``--scheduler_node``
connect by themselves; a listed node (``--nodes`` or a client's) that has not connected back
a second after the start is dialed over TCP (:mod:`dispy_core.aio.dialer`, for TCP-only
forwards). A dispy-relay started with ``--scheduler_node`` announces itself on
UDP ``--scheduler_port`` (PROTOCOL.md 6.6): it is pinged at once and in every round from
then on, like a host in ``--nodes``. A tick every second lets the
engine declare silent nodes dead. Files that jobs send and that clients send to one node
are forwarded with their ``req`` renumbered, so acknowledgements find their way back.

SIGINT and SIGTERM stop it: the jobs of gone clients still queued here go to nodes set up
for them (``Shell.hand_over_queued``), listeners close, clients and nodes are told it is
shutting down, and every task ends. It never reads stdin.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispy_core import netinfo
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import Connection
from dispy_core.aio.dialer import Dialer
from dispy_core.aio.fanout import PingSender, Presence, keep_pinging
from dispy_core.aio.handshake import open_connection
from dispy_core.aio.relays import RelayListener
from dispy_core.aio.signals import stop_on_signals
from dispy_core.aio.tasks import TaskOwner
from dispy_core.engine import CancelRequested, ComputationClosed, Tick
from dispy_core.protocol.discovery import is_pattern
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.fanout import PingSend, Target, plan_pings
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.handshake import WRONG_SECRET
from dispy_core.protocol.messages import FileAck, FilePut, NodeOffer, SharedFilePut
from dispy_core.protocol.relays import KnownRelay
from dispy_core.security import TLSConfig
from dispy_scheduler._clients import ClientLink, serve_client
from dispy_scheduler._nodes import NodeLink, serve_node
from dispy_scheduler._recover import LiveComputation, recover_from_nodes, serve_recover
from dispy_scheduler._shell import Shell
from dispy_scheduler._state import NodeKey, SharedComp, open_store
from dispy_scheduler.store import ComputationStore

log = logging.getLogger("dispy_scheduler")

TICK = 1.0
# Without --ping_interval a scheduler still pings this often: it runs for days, and nodes
# started on the LAN meanwhile must find it (a client runs briefly and needs no such default).
DEFAULT_PING_INTERVAL = 60.0
NO_NODE_WARNING = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``dispy-scheduler serve`` was told (validated by the CLI)."""

    nodes: tuple[str, ...] = ()
    ip_addrs: tuple[str, ...] = ()
    ext_ip_addrs: tuple[str, ...] = ()
    port: int = 51347
    scheduler_port: int = 51349
    node_port: int = 51348
    node_secret: str = ""
    cluster_secret: str = ""
    node_tls: TLSConfig = field(default_factory=lambda: TLSConfig(None))
    cluster_tls: TLSConfig = field(default_factory=lambda: TLSConfig(None))
    httpd: bool = False
    pulse_interval: float | None = None
    ping_interval: float | None = None
    max_file_size: int = 0
    clean: bool = False
    msg_timeout: float = 5.0
    store_root: Path = Path(".")
    name: str = "dispy-scheduler"


@dataclass(frozen=True, slots=True)
class _FileRoute:
    """Where the acknowledgement of a forwarded file goes back to."""

    node: NodeKey | None
    client: ClientLink | None
    comp_id: int  # the comp_id the acknowledgement names there
    req: int  # the req it names there


def _target(spec: str) -> Target:
    """``host`` or ``host:port`` (a --nodes value or a name a client listed)."""
    host, sep, port = spec.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host:
        return Target(host, int(port))
    return Target(spec)


class Scheduler(Shell):
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        store = open_store(settings.store_root, clean=settings.clean)
        super().__init__(store)
        self.disk = store  # the store as itself (the shell sees it through StoreLike)
        self.settings = settings
        self.tasks = TaskOwner("scheduler", log=log)
        self.admission = Admission()
        self.closing = False
        self.token = os.urandom(12).hex()
        self.port = settings.port
        self.scheduler_port = settings.scheduler_port
        self._stopped = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._sender: PingSender | None = None
        self._hosts: list[str] = []
        self._sent: list[PingSend] = []
        self.relays = RelayListener(self._relay_heard, logger=log)
        # Listed nodes that did not connect back are dialed (PROTOCOL.md 6.2).
        self.dialer = Dialer(
            tasks=self.tasks,
            logger=log,
            connect=self._dial,
            serve=lambda conn, target, info: serve_node(self, conn, info, target),
            held=lambda key: key in self.nodes,
            held_as=self._held_as,
            timeout=settings.msg_timeout,
        )
        self._routes: dict[int, _FileRoute] = {}
        self._req = 0
        self._clients: set[Connection] = set()
        self._loops: list[asyncio.Task[None]] = []
        # sched_ids of the computations a previous run left in the store: never reused
        self.previous_ids: set[int] = {record.sched_id for record in self.store.found()}
        # Marked as being asked before any listener opens: a recover_jobs that connects at
        # once then waits for the nodes' answers (recover_from_nodes, started by start())
        # instead of finding nothing pending and closing the record under a late result.
        for record in self.disk.found():
            record.asking = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.port = await self._listen(self._accept_node, s.port, s.node_tls)
        self.scheduler_port = await self._listen(
            self._accept_client, s.scheduler_port, s.cluster_tls
        )
        where = ", ".join(s.ip_addrs) or "*"
        log.info(
            "dispy-scheduler serving nodes at %s:%d%s and clients at %s:%d%s",
            where,
            self.port,
            " (TLS)" if s.node_tls.enabled else "",
            where,
            self.scheduler_port,
            " (TLS)" if s.cluster_tls.enabled else "",
        )
        if s.httpd:
            log.warning("--httpd: the web monitor is not available yet; scheduling goes on")
        self._sender = PingSender(s.ip_addrs)
        await self.relays.start(s.ip_addrs, self.scheduler_port)
        self.dialer.start()
        self.ping_all()
        self._loops = [
            self.tasks.start(self._discovery(), name="discovery"),
            self.tasks.start(self.dialer.early_rounds(self._dial_targets), name="dials"),
            self.tasks.start(self._ticks(), name="ticks"),
        ]
        self._recover_found()

    async def _listen(self, accept: Any, port: int, tls: TLSConfig) -> int:
        hosts: list[str | None] = list(self.settings.ip_addrs) or [None]
        for host in hosts:
            server = await start_server(
                accept,
                tasks=self.tasks,
                host=host,
                port=port,
                ssl_context=tls.server,
                handshake_timeout=self.settings.msg_timeout,
            )
            self._servers.append(server)
            # every address listens on the same port, even with port 0
            port = server.sockets[0].getsockname()[1]
        return port

    def _recover_found(self) -> None:
        for record in self.store.found():
            log.info("computation %s (%d) left by a previous run: recovering its results",
                     record.name, record.sched_id)  # fmt: skip
            self.tasks.start(
                recover_from_nodes(
                    record,
                    node_secret=self.settings.node_secret,
                    tls=self.settings.node_tls,
                    timeout=self.settings.msg_timeout,
                ),
                name=f"recover {record.sched_id}",
            )

    async def serve(self) -> None:
        stop_on_signals(self._stopped)
        await self.start()
        await self._stopped.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        log.info("dispy-scheduler shutting down")
        self.closing = True
        # First, while clients still connected are still told apart from gone ones (a
        # refused client is gone too once its connection ends): nothing a gone client
        # submitted stays queued here, to be lost with this process.
        self.hand_over_queued()
        for server in self._servers:
            server.close()
        for task in self._loops:
            task.cancel()
        goodbyes = [c.refuse("scheduler shutting down") for c in list(self._clients)]
        # While jobs remain, nodes get no goodbye: a node ends a session that says goodbye
        # (its jobs killed), but keeps running the jobs of one that is just gone, its
        # results kept for the next run to recover (PROTOCOL.md 13): a clean stop then
        # loses no more than a kill -9. Idle nodes are told, and are free at once.
        busy = any(comp.args for comp in self.comps.values() if not comp.dropped)
        goodbyes += [
            n.conn.close() if busy else n.conn.refuse("scheduler shutting down")
            for n in self.nodes.values()
        ]
        await asyncio.gather(*goodbyes, return_exceptions=True)
        self.relays.close()
        if self._sender is not None:
            self._sender.close()
        await self.tasks.close(grace=self.settings.msg_timeout)

    # -- connections ------------------------------------------------------------------------

    async def _accept_node(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = await self.admission.accept(
            reader,
            writer,
            logger=log,
            refused_level=logging.INFO,
            dropped_level=logging.INFO,
            on_failure=lambda exc: self._refused("node", writer, exc),
            secret=self.settings.node_secret,
            role="scheduler",
            name=self.settings.name,
            timeout=self.settings.msg_timeout,
        )
        if conn is not None:
            await serve_node(self, conn)

    async def _accept_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = await self.admission.accept(
            reader,
            writer,
            logger=log,
            refused_level=logging.INFO,
            dropped_level=logging.INFO,
            on_failure=lambda exc: self._refused("client", writer, exc),
            secret=self.settings.cluster_secret,
            role="scheduler",
            name=self.settings.name,
            timeout=self.settings.msg_timeout,
        )
        if conn is None:
            return
        if self.closing:
            await conn.refuse("scheduler shutting down")
            return
        self._clients.add(conn)
        try:
            if conn.peer_role == "client":
                await serve_client(self, conn)
            elif conn.peer_role == "recover":
                await self._serve_recover(conn)
            else:
                await conn.refuse(
                    f"this is a scheduler's client port; a {conn.peer_role} cannot use it"
                )
        finally:
            self._clients.discard(conn)

    def _refused(self, who: str, writer: asyncio.StreamWriter, exc: BaseException) -> None:
        # One warning per refused peer, naming the option to check (the admission's own
        # line is at info level).
        if not isinstance(exc, ProtocolError):
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        if WRONG_SECRET in str(exc):
            secret = "--cluster_secret" if who == "client" else "--node_secret"
            log.warning("%s at %s:%s refused: it does not use this scheduler's %s",
                        who, peer[0], peer[1], secret)  # fmt: skip
        else:
            log.warning("%s at %s:%s refused: %s", who, peer[0], peer[1], exc)

    async def _serve_recover(self, conn: Connection) -> None:
        await serve_recover(conn, self.disk, self._live, self._ask_again)

    async def _ask_again(self, record: ComputationStore) -> None:
        # Nodes that were down when this run started, asked when their results are wanted.
        await recover_from_nodes(
            record,
            node_secret=self.settings.node_secret,
            tls=self.settings.node_tls,
            timeout=self.settings.msg_timeout,
            nodes=sorted(record.unasked),
        )

    def _live(self, sched_id: int) -> LiveComputation | None:
        comp = self.comps.get(sched_id)
        return None if comp is None or comp.dropped else _Live(self, comp)

    def ping_all(self) -> None:
        if self._sender is None:
            return
        s = self.settings
        targets = [Target("*")] + [_target(n) for n in (*s.nodes, *self._hosts)]
        targets += self.relays.targets(targets, s.node_port)
        self._sent = self._plan(targets)
        self._sender.send_all(self._sent)
        if not self.closing:
            self.dialer.dial_all(self._dial_targets())

    def _dial_targets(self) -> list[NodeKey]:
        # The nodes listed by address (--nodes, and those clients name), for the TCP dial.
        node_port = self.settings.node_port
        targets = [_target(n) for n in (*self.settings.nodes, *self._hosts)]
        return [(t.host, t.port or node_port) for t in targets if not is_pattern(t.host)]

    async def _dial(self, host: str, port: int) -> Connection:
        s = self.settings
        return await open_connection(
            host,
            port,
            secret=s.node_secret,
            role="scheduler",
            name=s.name,
            timeout=s.msg_timeout,
            ssl_context=s.node_tls.client,
        )

    def _held_as(self, name: str) -> NodeKey | None:
        # A dialed node that refused us as already served is the node of that name we hold.
        for key, link in list(self.nodes.items()):
            if link.info.name == name:
                return key
        return None

    def _relay_heard(self, relay: KnownRelay) -> None:
        # A relay announces itself when nobody pinged through it for a while: ping it now.
        if self._sender is not None:
            self._sender.send_all(self._plan([relay.target()]))

    def _plan(self, targets: list[Target]) -> list[PingSend]:
        s = self.settings
        return plan_pings(
            targets,
            cluster=self.token,
            reply_port=self.port,
            node_port=s.node_port,
            ip_addrs=s.ip_addrs,
            ext_ip_addrs=s.ext_ip_addrs,
            interfaces=netinfo.ipv4_interfaces(),
            route=netinfo.route_to,
            role="scheduler",
        )

    def ping_hosts(self, hosts: list[str]) -> None:
        """A computation opens: ping again (nodes started since the last ping join now),
        with the nodes its client listed, from now on."""
        self._hosts.extend(h for h in hosts if h not in self._hosts)
        self.ping_all()

    async def _discovery(self) -> None:
        def warn() -> None:
            pinged = ", ".join(p.describe() for p in self._sent) or "nothing"
            log.warning("no dispy node is connected; pinged %s, listening for nodes on port %d",
                        pinged, self.port)  # fmt: skip

        def presence() -> Presence:
            return Presence(connected=bool(self.nodes), waiting=not self.nodes)

        await keep_pinging(
            ping_interval=self.settings.ping_interval or DEFAULT_PING_INTERVAL,
            ping=self.ping_all,
            warn=warn,
            presence=presence,
        )

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.handle(Tick())

    # -- offers -----------------------------------------------------------------------------

    def _offer(self, comp: SharedComp, link: NodeLink) -> None:
        if link.key in comp.offered or comp.client is None or comp.closing:
            return
        comp.offered.add(link.key)
        info = link.info
        comp.client.send(
            NodeOffer(
                comp_id=comp.comp_id,
                name=info.name,
                ip_addr=link.key[0],
                port=link.key[1],
                cpus=info.cpus,
                platform=info.platform,
                avail=info.avail,
            )
        )

    def offer_node(self, link: NodeLink) -> None:
        for comp in self.comps.values():
            if comp.start is not None:
                self._offer(comp, link)

    def offer_comp(self, comp: SharedComp) -> None:
        for link in self.nodes.values():
            self._offer(comp, link)

    # -- files forwarded ----------------------------------------------------------------------

    def _route(self, route: _FileRoute) -> int:
        self._req += 1
        self._routes[self._req] = route
        return self._req

    def file_from_node(self, link: NodeLink, msg: FilePut, payload: Payload) -> None:
        """A job's ``dispy_send_file``: to its client."""
        comp = self.comps.get(msg.comp_id)
        if comp is None or comp.client is None:
            if msg.req:
                link.send(FileAck(comp_id=msg.comp_id, req=msg.req, error="the client is gone"))
            return
        req = self._route(_FileRoute(link.key, None, msg.comp_id, msg.req)) if msg.req else 0
        comp.client.send(msg.model_copy(update={"comp_id": comp.comp_id, "req": req}), payload)

    def file_acked_by_client(self, msg: FileAck) -> None:
        route = self._routes.pop(msg.req, None)
        if route is None or route.node is None:
            return
        link = self.nodes.get(route.node)
        if link is not None:
            link.send(FileAck(comp_id=route.comp_id, req=route.req, error=msg.error))

    def file_to_node(
        self, client: ClientLink, comp: SharedComp, msg: SharedFilePut, payload: Payload
    ) -> None:
        """``cluster.send_file``: to the node, if it serves the computation."""
        key = (msg.ip_addr, msg.port)
        link = self.nodes.get(key)
        if link is None or key not in comp.ready:
            error = f"node {key[0]}:{key[1]} is not serving this computation"
            client.send(FileAck(comp_id=comp.comp_id, req=msg.req, error=error))
            return
        req = self._route(_FileRoute(None, client, comp.comp_id, msg.req))
        put = FilePut(
            comp_id=comp.sched_id,
            path=msg.path,
            size=msg.size,
            mode=msg.mode,
            mtime=msg.mtime,
            req=req,
        )
        link.send(put, payload)

    def file_acked_by_node(self, msg: FileAck) -> None:
        route = self._routes.pop(msg.req, None)
        if route is None or route.client is None:
            return
        route.client.send(FileAck(comp_id=route.comp_id, req=route.req, error=msg.error))


class _Live:
    """A computation this scheduler still runs, as a recover connection sees it (its client
    gone; see ``_recover.LiveComputation``)."""

    def __init__(self, sched: Scheduler, comp: SharedComp) -> None:
        self._sched = sched
        self._comp = comp

    @property
    def client_connected(self) -> bool:
        return self._comp.client is not None

    def pending(self) -> list[int]:
        return list(self._comp.args)  # arguments are held until the job ends

    def cancel(self, job_ids: Sequence[int]) -> None:
        if not self._comp.dropped:
            self._sched.handle(CancelRequested(self._comp.sched_id, tuple(job_ids)))

    def close(self, terminate: bool) -> None:
        comp = self._comp
        comp.recovered = True
        if comp.dropped:
            comp.record.close()
            return
        if not comp.closing:
            comp.closing = True
            comp.terminate = terminate
            self._sched.handle(ComputationClosed(comp.sched_id, terminate))
        self._sched.maybe_finish(comp.sched_id)


async def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM."""
    await Scheduler(settings).serve()
