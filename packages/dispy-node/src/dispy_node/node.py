"""The node daemon: discovery listener, client sessions, computations.

Theory of operation
-------------------
The node listens for discovery pings on UDP (its address and, for broadcasts, its
interface's broadcast address) and for connections on TCP, both on ``node_port``. It serves
one peer at a time: a client (a JobCluster) or a scheduler (``dispy-scheduler``, which
shares the node between its clients' computations). A ping while the node is free makes the
node connect back and authenticate; a peer may also connect to the node's TCP port directly.
After the handshake the node sends :class:`NodeInfo`; the peer answers with a computation (or
closes if it does not want the node). Jobs, cancels, results and pulses then share that one
connection. A :class:`~dispy_node.session.Session` serves it and holds one computation
session per ``comp_id``: a client holds one, and its session ends when it closes it; a
scheduler holds up to ``SCHEDULER_COMPUTATIONS`` at once (each its own process, its jobs
interleaved with the others' on the node's CPUs) and its connection stays open between
computations. The node is free again when the session ends.

The two kinds of peer exclude each other: while serving a scheduler the node refuses a
client with ``SERVING_SCHEDULER`` (a client that pinged is connected back to once, refused,
and its pings then ignored until the scheduler is gone, so that its no-node warning says
why), and while serving a client it refuses a scheduler's direct connection as busy. Other
pings heard while busy are remembered, and the node offers itself to those peers when it is
free. What a ping may make the node do (rate limits, which reply addresses it connects to,
how many pings it remembers) is decided by :mod:`dispy_node._pings`.

A node its peers cannot reach (behind a NAT gateway with no port forwarded) is never pinged;
it reaches them instead. With ``--scheduler_node H --scheduler_port P`` it *announces*
itself: while free it acts as if it had heard a ping from ``H:P`` (so the same rules, rate
limits and declines apply), at start and again after ``ANNOUNCE_FIRST`` seconds, doubling up
to ``ANNOUNCE_MAX`` while nobody takes it, and at once when a session ends (a scheduler that
restarted, or the next client at that port, gets the node back soon). A failed dial is
logged once per address and ``UNREACHABLE_LOG`` seconds, naming the address and the likely
cause, never once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time

from dispy_core import availability, netinfo
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import (
    Connection,
    ConnectionClosed,
    open_connection,
)
from dispy_core.aio.discovery import listen_pings, udp_socket
from dispy_core.aio.signals import stop_on_signals
from dispy_core.aio.tasks import TaskOwner
from dispy_core.buffers import BufferPool
from dispy_core.protocol.discovery import Ping
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.handshake import LoopGuard
from dispy_core.protocol.messages import (
    BUSY,
    MAX_INTERVAL,
    SERVING_SCHEDULER,
    NodeInfo,
    RecoverRequest,
)
from dispy_core.ratelimit import Once
from dispy_core.result_store import ResultStore
from dispy_core.secret import no_secret_warning, user_name
from dispy_core.security import TLSConfig
from dispy_node import __version__
from dispy_node._paths import PrefixError, prepare_prefix
from dispy_node._pings import PingPolicy, Verdict
from dispy_node._replies import serve_stored
from dispy_node.config import NodeConfig, resolve_cpus
from dispy_node.session import Session

log = logging.getLogger("dispy_node")

BUFFER_KEEP = 30.0  # seconds receive buffers outlive the session that used them
BUFFER_KEEP_BYTES = 64 << 20  # and how many bytes of them
STORE_EXPIRY_INTERVAL = 3600.0
SCHEDULER_COMPUTATIONS = 256  # computations a scheduler may hold on a node at once
MAX_REFUSED = 1024  # clusters refused while serving a scheduler, remembered to be let in after
ANNOUNCE_FIRST = 1.0  # seconds between a free node's first announcements to --scheduler_node
ANNOUNCE_MAX = 60.0  # and at most, backing off while nobody there takes the node
UNREACHABLE_LOG = 60.0  # seconds between two warnings that one address cannot be reached


class NodeStartError(Exception):
    """The node cannot start (its port is taken, an address is not local, ...)."""


class Node:
    """A running dispy node; ``await node.serve()`` until :meth:`stop`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.cpus = resolve_cpus(config.cpus, availability.cpu_count())
        self.tls = TLSConfig(config.certfile, config.keyfile)
        self.port = config.node_port
        # Receive buffers for large jobs and results, reused while a cluster is served.
        self.buffers = BufferPool()
        self._trim: asyncio.TimerHandle | None = None
        self.store = ResultStore(
            config.dest_path_prefix,
            max_bytes=config.max_stored_results,
            max_age=config.stored_results_age,
        )
        self._server: asyncio.AbstractServer | None = None
        self._admission = Admission()
        self._udp: list[asyncio.DatagramTransport] = []
        self._connecting = False
        # Shared by all the node's handshakes: its own connect-back looped to its port fails.
        self._handshakes = LoopGuard()
        self._pings = PingPolicy(now=time.monotonic())
        self._retry: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        # Every task of the node (connect-backs, housekeeping); its sessions own theirs.
        self.tasks = TaskOwner("node", log=log)
        self._active: Session | None = None
        self._serving: str | None = None  # the cluster (ping id) of the session, if known
        self._refused: set[str] = set()  # clients' clusters refused while serving a scheduler
        self._announce_to: Ping | None = None  # --scheduler_node as a ping, if given
        self._freed = asyncio.Event()  # a session ended: announce again now
        self._unreachable = Once(UNREACHABLE_LOG, 256)

    # -- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        try:
            relays = [netinfo.resolve(relay) for relay in cfg.relays]
        except OSError as exc:
            raise NodeStartError(f"cannot resolve a --relay address: {exc}") from None
        self._pings = PingPolicy(relays, now=time.monotonic())
        await asyncio.to_thread(_prepare_prefix, cfg.dest_path_prefix, cfg.clean)
        self.tasks.start(self._expire_stored())
        host = cfg.ip_addr or ""
        where = f"{host or '*'}:{self.port}"
        try:
            self._server = await start_server(
                self._accept,
                tasks=self.tasks,
                host=host or None,
                port=self.port,
                ssl_context=self.tls.server,
                handshake_timeout=cfg.msg_timeout,
            )
            self.port = self._server.sockets[0].getsockname()[1]
            where = f"{host or '*'}:{self.port}"
            unicast = udp_socket(host, self.port)
        except OSError as exc:
            raise NodeStartError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self._udp.append(await listen_pings(unicast, self._on_ping))
        iface = netinfo.interface_of(cfg.ip_addr) if cfg.ip_addr else None
        if iface is not None and iface.broadcast:
            try:
                bsock = udp_socket(iface.broadcast, self.port, broadcast=True)
            except OSError as exc:
                log.warning("cannot listen for broadcasts on %s: %s", iface.broadcast, exc)
            else:
                self._udp.append(await listen_pings(bsock, self._on_ping))
        log.info(
            "dispy-node %s serving %d CPU(s) at %s:%d%s",
            cfg.name,
            self.cpus,
            cfg.ip_addr or "*",
            self.port,
            " (TLS)" if self.tls.enabled else "",
        )
        if not cfg.secret:
            log.warning(self._no_secret_warning())
        if cfg.scheduler_node:
            try:
                target = netinfo.resolve(cfg.scheduler_node)
            except OSError as exc:
                raise NodeStartError(f"cannot resolve --scheduler_node: {exc}") from None
            # Offer this node to a client or scheduler running elsewhere, as if it had pinged.
            self._announce_to = Ping(
                cluster=f"hint-{cfg.scheduler_node}-{cfg.scheduler_port}"[:64],
                reply_addr=target,
                reply_port=cfg.scheduler_port,
                role="scheduler",
            )
            log.info("announcing this node to %s:%d while it is free", target, cfg.scheduler_port)
            self.tasks.start(self._announce(self._announce_to))

    async def serve(self) -> None:
        stop_on_signals(self._stopped)
        await self.start()
        await self._stopped.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        log.info("dispy-node %s shutting down", self.config.name)
        for transport in self._udp:
            transport.close()
        if self._server is not None:
            self._server.close()
        active = self._active
        if active is not None:
            # The client must see this as the node going away (its jobs are resubmitted or
            # cancelled there), not as jobs that ended here.
            if active.conn is not None:
                await active.conn.refuse("node shutting down")
            await active.finish()
        if self._retry is not None:
            self._retry.cancel()
        await self.tasks.close()

    async def _announce(self, hint: Ping) -> None:
        """Offer the node to ``hint``'s address while it is free, backing off (module doc)."""
        delay = ANNOUNCE_FIRST
        while True:
            if not self._busy:
                self._on_ping(hint, (hint.reply_addr, hint.reply_port))
            try:
                await asyncio.wait_for(self._freed.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, ANNOUNCE_MAX)
            else:
                self._freed.clear()
                delay = ANNOUNCE_FIRST

    async def _expire_stored(self) -> None:
        """Apply the stored results' age limit and quota now and every hour."""
        while True:
            try:
                await asyncio.to_thread(self.store.expire)
            except OSError as exc:
                log.warning("cannot clean up stored results: %s", exc)
            await asyncio.sleep(STORE_EXPIRY_INTERVAL)

    def _no_secret_warning(self) -> str:
        where = f"{self.config.ip_addr or 'any address of this host'} port {self.port}"
        exposure = f"run any code as user {user_name()!r} on this node"
        if self.tls.enabled:
            exposure += " (with TLS: anyone who holds the certificate and its key)"
        return no_secret_warning("dispy-node", f"{where} (TCP, or a UDP discovery ping)", exposure)

    # -- discovery ----------------------------------------------------------------------

    def _on_ping(self, ping: Ping, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        decision = self._pings.on_ping(ping, addr[0], now, busy=self._busy, serving=self._serving)
        if decision.verdict is Verdict.CONNECT:
            self._connect_to(ping)
        elif decision.verdict is Verdict.REMEMBER and self._for_scheduler and ping.role == "client":
            # Not an offer for later (a scheduler keeps its nodes): tell the client once why,
            # then ignore its pings until the scheduler is gone.
            self._pings.decline(ping.cluster, now)
            if len(self._refused) < MAX_REFUSED:
                self._refused.add(ping.cluster)
            if self._pings.take_connect(now):
                self.tasks.start(self._refuse_back(ping, SERVING_SCHEDULER))
        elif decision.verdict is Verdict.REMEMBER:
            log.debug(
                "%s: remembering ping from %s:%d",
                "busy" if self._busy else "connect-back rate reached",
                ping.reply_addr,
                ping.reply_port,
            )
            self._retry_later()
        elif decision.reason:
            log.log(logging.WARNING if decision.warn else logging.DEBUG, "%s", decision.reason)

    async def _refuse_back(self, ping: Ping, reason: str) -> None:
        where = f"{ping.reply_addr}:{ping.reply_port}"
        try:
            conn = await self._open_back(ping)
        except (ProtocolError, OSError, TimeoutError, ConnectionClosed) as exc:
            log.debug("cannot tell client at %s why it is refused: %s", where, exc)
            return
        log.info("client %s at %s refused: %s", conn.peer_name, where, reason)
        await conn.refuse(reason)

    async def _open_back(self, ping: Ping) -> Connection:
        return await open_connection(
            ping.reply_addr,
            ping.reply_port,
            secret=self.config.secret,
            role="node",
            name=self.config.name,
            timeout=self.config.msg_timeout,
            ssl_context=self.tls.client,
            local_addr=self.config.ip_addr,
            allocate=self.buffers.take,
            guard=self._handshakes,
        )

    def _connect_to(self, ping: Ping) -> None:
        self._connecting = True
        self.tasks.start(self._connect_back(ping))

    async def _connect_back(self, ping: Ping) -> None:
        where = f"{ping.reply_addr}:{ping.reply_port}"
        conn: Connection | None = None
        try:
            conn = await self._open_back(ping)
        except ProtocolError as exc:
            log.warning("client at %s: %s", where, exc)
            self._pings.decline(ping.cluster, time.monotonic())
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, ConnectionClosed | ConnectionResetError) and not self.tls.enabled:
                reason += " (does the client use TLS? both sides need the same certfile)"
            self._log_unreachable(ping, reason)
        except Exception:
            # A bug reached by a peer's bytes must cost that peer its connection, never
            # leave the node believing it is still connecting (and so busy for good).
            log.exception("client at %s: unexpected error in the handshake", where)
            self._pings.decline(ping.cluster, time.monotonic())
        finally:
            self._connecting = False
        if conn is None:
            self._offer_to_waiting()
            return
        if self._active is not None or conn.peer_role not in ("client", "scheduler"):
            await conn.refuse(self._refusal(conn))
            return
        await self._serve_client(conn, ping.cluster)

    def _log_unreachable(self, ping: Ping, reason: str) -> None:
        where = f"{ping.reply_addr}:{ping.reply_port}"
        if not self._unreachable(where, time.monotonic()):
            log.debug("cannot reach client at %s: %s", where, reason)
        elif ping is self._announce_to:
            log.warning(
                "cannot reach %s (--scheduler_node/--scheduler_port): %s; is a client or "
                "dispy-scheduler listening there? retrying while free (this is logged once "
                "a minute)",
                where,
                reason,
            )
        else:
            log.warning(
                "cannot reach client at %s: %s; this is the address its ping announced, and a "
                "client behind NAT must announce one this node can reach (its ext_ip_addr: "
                "the gateway's address, with that port forwarded), or this node can announce "
                "itself to it (--scheduler_node) (this is logged once a minute per address)",
                where,
                reason,
            )

    def _offer_to_waiting(self) -> None:
        if self._busy:
            return
        ping = self._pings.next_waiting(time.monotonic())
        if ping is not None:
            self._connect_to(ping)
        else:
            self._retry_later()

    def _retry_later(self) -> None:
        # Remembered pings wait for the node to be free and for the connect-back rate.
        if self._busy or self._retry is not None or self._stopped.is_set():
            return
        delay = self._pings.ready_in(time.monotonic())
        if delay is not None:
            self._retry = asyncio.get_running_loop().call_later(delay + 0.01, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._offer_to_waiting()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = await self._admission.accept(
            reader,
            writer,
            logger=log,
            secret=self.config.secret,
            role="node",
            name=self.config.name,
            timeout=self.config.msg_timeout,
            allocate=self.buffers.take,
            guard=self._handshakes,
        )
        if conn is None:
            return
        try:
            if conn.peer_role == "recover":
                await self._serve_recovery(conn)
                return
            if conn.peer_role not in ("client", "scheduler") or self._busy:
                await conn.refuse(self._refusal(conn))
                return
            await self._serve_client(conn, None)
        except Exception as exc:
            # asyncio would only print it; log it once and hang up.
            log.exception("connection from %s failed", conn.peer_name)
            await conn.refuse(f"node error: {type(exc).__name__}")

    # -- one client -----------------------------------------------------------------------

    def _node_info(self, conn: Connection) -> NodeInfo:
        cfg = self.config
        local = conn.local_address or (cfg.ip_addr or "127.0.0.1", 0)
        return NodeInfo(
            name=cfg.name,
            ip_addr=cfg.ext_ip_addr or cfg.ip_addr or str(local[0]),
            port=self.port,
            cpus=self.cpus,
            platform=platform.platform(),
            avail=availability.measure(cfg.dest_path_prefix),
            version=__version__,
            zombie_interval=min(cfg.zombie_interval, MAX_INTERVAL),
        )

    @property
    def _busy(self) -> bool:
        return self._active is not None or self._connecting

    @property
    def _for_scheduler(self) -> bool:
        return self._active is not None and self._active.role == "scheduler"

    def _refusal(self, conn: Connection) -> str:
        """Why ``conn`` (authenticated) is not served."""
        if conn.peer_role not in ("client", "scheduler"):
            return f"a node does not serve a {conn.peer_role}"
        if self._for_scheduler:
            return SERVING_SCHEDULER
        return BUSY

    async def _serve_client(self, conn: Connection, cluster: str | None) -> None:
        role = conn.peer_role
        log.info("serving %s %s at %s:%d", role, conn.peer_name, *conn.peer)
        if role == "scheduler":
            session = Session(self, max_computations=SCHEDULER_COMPUTATIONS, role=role)
        else:
            session = Session(self)
        self._active = session
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        self._serving = cluster
        outcome = "failed"
        try:
            await conn.send(self._node_info(conn))
            outcome = await session.serve(conn)
        except ConnectionClosed:
            outcome = "lost"
        except Exception as exc:
            log.exception("serving client %s failed", conn.peer_name)
            await conn.refuse(f"node error: {type(exc).__name__}")
        finally:
            # Whatever happened (even cancellation), the node must not stay "busy".
            await asyncio.shield(self._end_client(session, conn, cluster, outcome))

    async def _end_client(
        self, session: Session, conn: Connection, cluster: str | None, outcome: str
    ) -> None:
        try:
            await conn.close()
            if outcome == "declined" and cluster is not None:
                self._pings.decline(cluster, time.monotonic())
            await self._after_session(session, outcome)
        except Exception:
            log.exception("ending the session of client %s failed", conn.peer_name)
            self.session_ended(session)

    async def _after_session(self, session: Session, outcome: str) -> None:
        # A computation with jobs or unacknowledged results left is kept (orphaned) for its
        # client; anything else frees the node now.
        if not await session.end(outcome):
            self.session_ended(session)

    def session_ended(self, session: Session) -> None:
        """``session`` is over: the node is free for the next client."""
        if self._active is not session:
            return
        self._active = None
        # A client often starts another cluster right away (with jobs of the same sizes):
        # keep a few buffers a while rather than fault fresh memory in again.
        self.buffers.trim(BUFFER_KEEP_BYTES)
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(BUFFER_KEEP, self.buffers.clear)
        if self._serving is not None:
            self._pings.forget(self._serving)
        self._serving = None
        if session.role == "scheduler":
            # The clients refused meanwhile may have the node now.
            for cluster in self._refused:
                self._pings.undecline(cluster)
            self._refused.clear()
        log.info("free again")
        self._freed.set()
        self._offer_to_waiting()

    async def _serve_recovery(self, conn: Connection) -> None:
        msg = await conn.expect(RecoverRequest, self.config.msg_timeout, log, "recovery request")
        if msg is None:
            return
        active = self._active
        if active is not None and active.runs(msg.comp_id):
            if active.conn is not None:
                await conn.refuse("the computation's client is still connected")
                return
            log.info("recovering computation %d for %s", msg.comp_id, conn.peer_name)
            outcome = "failed"  # an unexpected error (logged by _accept) frees the node
            try:
                outcome = await active.recover(conn, msg.comp_id)
            except ConnectionClosed:
                outcome = "lost"
            finally:
                await asyncio.shield(self._end_client(active, conn, None, outcome))
            return
        await serve_stored(self.store, conn, msg.comp_id)


def _prepare_prefix(prefix: str, clean: bool) -> None:
    try:
        warning = prepare_prefix(prefix, clean)
    except PrefixError as exc:
        raise NodeStartError(str(exc)) from None
    if warning:
        log.warning(warning)
