"""The asyncio side of a SharedJobCluster: one connection to dispy-scheduler, its jobs.

Theory of operation
-------------------
The scheduler decides where and when jobs run (its engine shares the nodes between its
clients), so this core makes no scheduling decision: it speaks PROTOCOL.md section 13 and
keeps the user's view (jobs, nodes, statuses, callbacks) up to date. On the cluster's loop
thread, in the order messages arrive:

    connecting --(handshake, sched.computation, files, computation.start)-->
    starting   --sched.status accepted (sched_id: the recover file is created)-->
    open       --close(): computation.close ... computation.closed-->  closed
       |
       +--connection broken, refused or silent for dead_after()-->  lost

Before ``accepted`` a failure raises :class:`SchedulerError` out of :meth:`SharedCore.start`
(the constructor), naming the address, port, secret and TLS. Once open:

- ``sched.offer`` asks the cluster's ``nodes`` patterns and NodeAllocate objects, as a
  JobCluster asks them for a node that connects (:func:`dispy.nodes.cpus_for`); the answer
  is ``sched.allocate`` (0: not used). Offers are remembered for ``allocate_node()``.
- ``sched.node`` makes a node Initialized, Closed, Abandoned or SetupFailed (statuses);
  ``sched.running`` makes jobs Running on a node; ``sched.requeued`` Created again.
- ``sched.done`` ends jobs with their replies (:class:`dispy._ends.JobEnds`, as
  ``jobs.done`` for a JobCluster); ``sched.ended`` ends them with the scheduler's status
  and reason. Each ends a job at most once: ended jobs leave ``jobs`` at once.
- Results are recorded as done in the recover file, which is flushed before they are
  acknowledged (``jobs.ack``, batched on a short timer): the scheduler keeps a result
  (the node, in fact) until the client has it on record.
- Submitted jobs go out in the loop turn after ``submit()`` as ``sched.submit`` frames (a
  job's own files first, as ``file.put``), split as ``jobs.submit`` is.

The recover file is JobCluster's (:mod:`dispy.recovery`, same default name and rules),
created once the scheduler has accepted the computation; its header adds ``scheduler``
(``[host, port]``) and ``sched_id`` (from ``sched.status accepted``), and its ``s``
records name the scheduler as the peer the jobs were sent to (there are no ``n`` records:
the client never talks to a node).

*Lost*: one error log names the scheduler; every job not ended (and every one submitted
later) ends Abandoned with "scheduler H:P lost: <why>"; the recover file stays, for
``recover_jobs``. Nothing waits for the scheduler after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispy._shared_jobs import SharedJobs
from dispy._shell import HOUSEKEEPING_DELAY
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode
from dispy.recovery import RecoveryLog, secret_record
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.aio.handshake import open_connection
from dispy_core.aio.tasks import TaskOwner
from dispy_core.config import dead_after
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.fanout import (
    NO_NODE_RECHECK,
    NO_NODE_WARNING_DELAY,
    NO_NODE_WARNING_REPEAT,
)
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import (
    MAX_IDS,
    CloseComputation,
    ComputationClosed,
    ComputationStart,
    FileAck,
    FilePut,
    JobAck,
    JobProvisional,
    Message,
    NodeOffer,
    Notice,
    Pulse,
    SharedComputation,
    SharedDone,
    SharedEnded,
    SharedNode,
    SharedRequeued,
    SharedRunning,
    SharedStatus,
    clip,
)
from dispy_core.secret import SECRET_ENV, no_secret_warning, user_name

if TYPE_CHECKING:
    from dispy._callbacks import CallbackRunner
    from dispy._core import ClusterOptions

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]
# The scheduler pulses at least every 10 s (PROTOCOL.md 13): silence this long means it is
# gone even if no socket error says so (a host switched off, a cable pulled).
SILENCE_LIMIT = dead_after(None)
KEEPALIVE = 10.0  # the client's pulse, at least this often


class SchedulerError(ConnectionError):
    """A SharedJobCluster cannot start: its scheduler cannot be reached, refused it, or
    does not share its secret or TLS setting (the message names which were tried)."""


@dataclass
class SharedOptions:
    """What a SharedJobCluster adds to a cluster's options."""

    scheduler: NodeKey  # the scheduler's address (resolved) and port
    scheduler_name: str  # as the user gave it, for messages
    exclusive: bool
    hosts: list[str]  # names in ``nodes`` that are no pattern (the scheduler pings them)


class SharedCore(SharedJobs):
    """See the module docstring. Created and used on the cluster's loop thread only."""

    def __init__(
        self,
        opts: ClusterOptions,
        shared: SharedOptions,
        callbacks: CallbackRunner,
        owner: Any,
    ) -> None:
        self.opts = opts
        self.shared = shared
        self.owner = owner
        self.callbacks = callbacks
        self.comp_id = int.from_bytes(os.urandom(4), "big")
        self.jobs: dict[int, DispyJob] = {}
        self.known_nodes: dict[NodeKey, DispyNode] = {}
        self.offers: dict[NodeKey, NodeOffer] = {}
        self.allocated: dict[NodeKey, int] = {}  # nodes given CPUs (sched.allocate > 0)
        self.ready: set[NodeKey] = set()  # nodes that set the computation up
        self.running: dict[NodeKey, set[int]] = {}
        self.where: dict[int, NodeKey] = {}  # job -> the node it runs on
        self.sched_id = 0
        self.pulse_interval: float | None = None
        self.port = 0
        self.conn: Connection | None = None
        self.recovery: RecoveryLog | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lost: str | None = None  # "scheduler H:P lost: ..." once it is
        self._closing = False
        self._incoming: deque[DispyJob] = deque()
        self._incoming_scheduled = False
        self._acks: list[int] = []
        self._housekeeping_scheduled = False
        self._file_req = 0
        self._file_waiters: dict[int, asyncio.Future[str | None]] = {}
        self._accepted: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._heard = self._started = time.monotonic()
        self._tasks = TaskOwner("shared cluster", log=log)

    @property
    def where_text(self) -> str:
        host, port = self.shared.scheduler
        return f"{host}:{port}"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, open the computation and wait until the scheduler accepts it.

        Raises:
            SchedulerError: naming the scheduler, the secret and TLS.
        """
        self.loop = loop = asyncio.get_running_loop()
        self._accepted = loop.create_future()
        self._closed = loop.create_future()
        conn = await self._connect()
        self.conn = conn
        local = conn.local_address
        self.port = local[1] if local else 0
        opts, shared = self.opts, self.shared
        try:
            conn.send_nowait(
                SharedComputation(
                    comp_id=self.comp_id,
                    name=opts.name,
                    kind=opts.kind,  # type: ignore[arg-type]
                    dest_path=opts.dest_path,
                    cleanup=opts.cleanup,
                    reentrant=opts.reentrant,
                    exclusive=shared.exclusive,
                    hosts=shared.hosts,
                )
            )
            for spec in opts.files:
                conn.send_nowait(self._file_message(spec), spec.data)
                await conn.drain()
            await conn.send(ComputationStart(comp_id=self.comp_id), opts.start_payload)
        except ConnectionClosed as exc:
            await conn.close()
            raise self._start_error(f"the connection broke: {exc}") from None
        self._tasks.start(self._serve(conn), name="scheduler connection")
        try:
            async with asyncio.timeout(max(2 * opts.msg_timeout, 10.0)):
                await asyncio.shield(self._accepted)
        except TimeoutError:
            await self._abort_start()
            raise self._start_error(
                f"it did not accept the computation within {max(2 * opts.msg_timeout, 10.0):.0f} s"
            ) from None
        except SchedulerError:
            await self._abort_start()
            raise
        header = {
            "comp_id": self.comp_id,
            "name": opts.name,
            **secret_record(opts.secret, opts.secret_origin),
            "certfile": opts.tls.certfile,
            "keyfile": opts.tls.keyfile,
            "node_port": opts.node_port,
            "msg_timeout": opts.msg_timeout,
            "started": time.time(),
            "scheduler": list(shared.scheduler),
            "sched_id": self.sched_id,
        }
        try:
            self.recovery = RecoveryLog(opts.recover_file, header, opts.pick_recover_file)
        except OSError:
            await self._abort_start()
            raise
        opts.recover_file = self.recovery.path
        if not opts.secret:
            log.warning(self._no_secret_warning())
        self._tasks.start(self._keepalive(), name="keepalive")
        self._started = time.monotonic()
        self._tasks.start(self._watch_nodes(), name="no-node warning")

    async def _abort_start(self) -> None:
        self._closing = True
        if self.conn is not None:
            await self.conn.close()
        await self._tasks.close()

    async def _connect(self) -> Connection:
        """The authenticated connection, from the local port asked for when it is free."""
        opts = self.opts
        host, port = self.shared.scheduler
        local_addr = opts.ip_addrs[0] if opts.ip_addrs else None
        local_port = opts.port
        name = opts.name[:200]
        if opts.ext_ip_addrs:
            name = f"{name[:180]}@{opts.ext_ip_addrs[0][:60]}"
        while True:
            try:
                return await open_connection(
                    host,
                    port,
                    secret=opts.secret,
                    role="client",
                    name=name,
                    timeout=opts.msg_timeout,
                    ssl_context=opts.tls.client,
                    local_addr=local_addr,
                    local_port=local_port,
                )
            except TimeoutError:
                # Before OSError, of which it is a subclass: it says nothing by itself.
                why = f"no answer within msg_timeout ({opts.msg_timeout:g} s)"
            except OSError as exc:
                if local_port and exc.errno == errno.EADDRINUSE:
                    # Another client (or a JobCluster) has the port: any port does as well.
                    log.debug("port %d is in use; connecting from any port", local_port)
                    local_port = 0
                    continue
                if isinstance(exc, ConnectionRefusedError):
                    why = "nothing accepts connections there (connection refused)"
                else:
                    why = str(exc) or type(exc).__name__
            except PeerRefused as exc:
                why = f"it refused this client: {exc.reason}"
            except (ProtocolError, ConnectionClosed) as exc:
                why = str(exc) or type(exc).__name__
            raise self._start_error(why)

    def _start_error(self, why: str) -> SchedulerError:
        opts = self.opts
        host, port = self.shared.scheduler
        given = self.shared.scheduler_name
        where = f"{host}:{port}" + (f" ({given})" if given and given != host else "")
        if opts.secret_origin:
            secret = f"a secret (from {opts.secret_origin})"
        else:
            secret = f"no secret (none given, {SECRET_ENV} not set)"
        tls = (
            f"TLS with certfile {opts.tls.certfile!r}"
            + (f" and keyfile {opts.tls.keyfile!r}" if opts.tls.keyfile else "")
            if opts.tls.enabled
            else "no TLS"
        )
        return SchedulerError(
            f"SharedJobCluster {opts.name!r} cannot use dispy-scheduler at {where}: {why}.\n"
            f"  this client: {secret}, {tls}\n"
            "  usual causes: dispy-scheduler is not running there, or serves clients on "
            f"another port (this client connects to port {port}: give scheduler_node= and "
            f"scheduler_port=); a firewall blocks TCP port {port}; the scheduler's "
            "--cluster_secret is not this client's secret; TLS on one side only, or "
            "other certificates (certfile/keyfile must be the scheduler's "
            "--cluster_certfile/--cluster_keyfile)."
        )

    def _no_secret_warning(self) -> str:
        return no_secret_warning(
            f"dispy cluster {self.opts.name!r}",
            f"the connection to dispy-scheduler at {self.where_text}",
            "pose as the scheduler: receive this computation and its arguments, and send "
            "back results this program unpickles (running their code as user "
            f"{user_name()!r} here)",
            f"the {SECRET_ENV} environment variable or SharedJobCluster(secret=...), the same "
            "as the scheduler's --cluster_secret",
        )

    async def close(self, terminate: bool) -> None:
        """Close the computation on the scheduler (it closes it on every node)."""
        self._closing = True
        self._take_incoming()
        conn, closed = self.conn, self._closed
        if conn is not None and closed is not None and self.lost is None:
            with contextlib.suppress(ConnectionClosed):
                self._housekeeping()
                conn.send_nowait(CloseComputation(comp_id=self.comp_id, terminate=terminate))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2 * self.opts.msg_timeout + 5):
                        await asyncio.shield(closed)
            self._housekeeping()
            await conn.close()
        await self._tasks.close()
        for job in list(self.jobs.values()):
            self._finish(job, JobStatus.Abandoned, exception="cluster closed")
        self.jobs.clear()
        for waiter in self._file_waiters.values():
            if not waiter.done():
                waiter.set_result("cluster closed")
        if self.recovery is not None:
            # After a lost scheduler the file is what recover_jobs needs: it stays.
            self.recovery.close(remove=self.lost is None)

    # -- the connection -----------------------------------------------------------------

    async def _serve(self, conn: Connection) -> None:
        reason = "connection closed"
        try:
            await conn.serve(self._on_message)
            return
        except PeerRefused as exc:
            reason = f"it ended the session: {exc.reason}"
        except (ConnectionClosed, ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, ProtocolError):
                await conn.refuse(clip(reason, 1000))
        except Exception as exc:
            # A bug on this side while handling a message: the session cannot be trusted
            # to be in step any more, so it ends as a lost scheduler would.
            log.exception("error while handling a message of dispy-scheduler")
            reason = f"client error: {type(exc).__name__}: {exc}"
            await conn.refuse(clip(reason, 1000))
        finally:
            closed = self._closed
            if closed is not None and not closed.done():
                closed.set_result(None)
        accepted = self._accepted
        if accepted is not None and not accepted.done():
            accepted.set_exception(self._start_error(reason))
        elif not self._closing:
            self._scheduler_lost(reason)

    def _scheduler_lost(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = f"scheduler {self.where_text} lost: {reason}"
        self._take_incoming()
        unfinished = list(self.jobs.values())
        path = self.recovery.path if self.recovery is not None else self.opts.recover_file
        log.error(
            "%s; %d unfinished job(s) end Abandoned (their results may be recovered later "
            "with dispy.recover_jobs(%r))",
            self.lost,
            len(unfinished),
            path,
        )
        if self.recovery is not None:
            self.recovery.flush()
        self.jobs.clear()
        self.running.clear()
        self.ready.clear()
        for job in unfinished:
            self._finish(job, JobStatus.Abandoned, exception=self.lost)
        for waiter in self._file_waiters.values():
            if not waiter.done():
                waiter.set_result(self.lost)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(min(KEEPALIVE, SILENCE_LIMIT / 6))
            conn = self.conn
            if conn is None or self.lost is not None:
                return
            silent = time.monotonic() - self._heard
            if silent > SILENCE_LIMIT:
                conn.fail(ConnectionClosed(f"nothing heard from it for {silent:.0f} s"))
                await conn.close()
                return
            with contextlib.suppress(ConnectionClosed):
                conn.send_nowait(Pulse())

    async def _watch_nodes(self) -> None:
        # The twin of JobCluster's no-node warning: the scheduler is there, but no node
        # serves this computation (none offered, none wanted, or setup failed on each).
        await asyncio.sleep(NO_NODE_WARNING_DELAY)
        while self.lost is None and not self._closing:
            if self.ready:
                await asyncio.sleep(NO_NODE_RECHECK)
                continue
            log.warning(self.no_node_message(time.monotonic() - self._started))
            await asyncio.sleep(NO_NODE_WARNING_REPEAT)

    def _on_message(self, msg: Message, payload: Payload) -> None:
        self._heard = time.monotonic()
        if isinstance(msg, SharedDone):
            self._on_done(msg, payload)
        elif isinstance(msg, SharedRunning):
            self._on_running(msg)
        elif isinstance(msg, SharedEnded):
            self._on_ended(msg)
        elif isinstance(msg, SharedRequeued):
            self._on_requeued(msg)
        elif isinstance(msg, NodeOffer):
            self._on_offer(msg)
        elif isinstance(msg, SharedNode):
            self._on_node(msg)
        elif isinstance(msg, JobProvisional):
            self._on_provisional(msg, payload)
        elif isinstance(msg, SharedStatus):
            self._on_status(msg)
        elif isinstance(msg, FilePut):
            assert self.conn is not None
            self._tasks.start(self._store_file(self.conn, msg, payload, "a job via the scheduler"))
        elif isinstance(msg, FileAck):
            waiter = self._file_waiters.pop(msg.req, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.error)
        elif isinstance(msg, ComputationClosed):
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
        elif isinstance(msg, Notice):
            level = logging.ERROR if msg.level == "error" else logging.WARNING
            log.log(level, "dispy-scheduler %s: %s", self.where_text, msg.text)
        elif not isinstance(msg, Pulse):
            log.warning("dispy-scheduler %s sent an unexpected %s", self.where_text, msg.type)

    # -- messages -----------------------------------------------------------------------

    def _on_status(self, msg: SharedStatus) -> None:
        if msg.state == "accepted":
            self.sched_id = msg.sched_id
            self.pulse_interval = msg.pulse_interval
            if self._accepted is not None and not self._accepted.done():
                self._accepted.set_result(None)
        elif msg.state == "waiting":
            log.info(
                "computation %s waits for its turn on dispy-scheduler %s (an exclusive "
                "computation runs or waits before it)",
                self.opts.name,
                self.where_text,
            )
        else:
            log.info("computation %s active on scheduler %s", self.opts.name, self.where_text)

    # -- recover file, acks -------------------------------------------------------------

    def _housekeeping_soon(self) -> None:
        if not self._housekeeping_scheduled and self.loop is not None:
            self._housekeeping_scheduled = True
            self.loop.call_later(HOUSEKEEPING_DELAY, self._housekeeping)

    def _housekeeping(self) -> None:
        """Flush the recover file, then acknowledge results (see the module docstring)."""
        self._housekeeping_scheduled = False
        if self.recovery is not None:
            self.recovery.flush()
        if not self._acks or self.conn is None or self.lost is not None:
            return
        acks, self._acks = self._acks, []
        with contextlib.suppress(ConnectionClosed):
            for at in range(0, len(acks), MAX_IDS):
                part = acks[at : at + MAX_IDS]
                self.conn.send_nowait(JobAck(comp_id=self.comp_id, job_ids=part))
