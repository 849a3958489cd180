"""One peer's session on a node: its connection, routed by computation.

Theory of operation
-------------------
A :class:`Session` is made for each authenticated peer the node serves. It reads the peer's
messages in order, so a file sent before a job is on disk before that job runs, and routes
each one by its ``comp_id`` to that computation's
:class:`~dispy_node._computation_session.ComputationSession` (one dict lookup). What is the
peer's rather than one computation's lives here: when the peer was last heard from (the lease
on queued jobs and the zombie timer), the pulses, and what ends the session.

``computation`` opens a computation session; a peer may hold ``max_computations`` of them at
once. A JobCluster client holds one (a second ``computation`` gets ``computation.failed``
"this node already runs a computation", as before). A scheduler (``role="scheduler"``) holds
several at once, each in its own process with its own setup, files and ``dest_path``; their
jobs are interleaved on the node's CPUs as the scheduler sends them (each computation gets
``min(setup.cpus, node CPUs)`` workers: the scheduler decides how many jobs it sends, the
node runs what it is sent). Over the bound a ``computation`` gets ``computation.failed``
"too many computations on this node". ``computation.close`` closes one; for a
one-computation peer it also ends the session, while a scheduler's connection stays open.
Pulses, the lease on queued jobs and the zombie timer are the peer's (one per connection);
orphaning and recovery are per computation.
Messages naming a computation the session does not hold get the answer they always had:
``notice`` "jobs for an unknown computation" for ``jobs.submit``, ``computation.failed`` for
``computation.start``, a refused ``file.ack`` for ``file.put``; acks, cancels and
``computation.set_cpus`` for it are ignored.

A session outlives its connection. If the connection breaks while a computation has jobs (or
unacknowledged results), that computation is *orphaned*: its jobs keep running and every
result goes to the node's :class:`~dispy_core.result_store.ResultStore`; the others close.
``recover_jobs`` can then attach a new connection (:meth:`Session.recover`) to collect stored
and later results and release the node. An orphaned session ends by itself as soon as its
jobs are done (the node is free for others then); stored results stay on disk until
recovered or ``--clean``, and recovery serves them from there.

Outcomes of :meth:`Session.serve`: ``closed`` (the client closed the computation),
``declined`` (the client did not want this node), ``refused`` (the client ended the session,
e.g. it declared this node dead, or sent a message this node refuses), ``lost`` (the
connection broke), ``failed`` (an error of this node while serving: logged once with its
traceback; the session ends and the node is free, never left "busy").

Every task a session starts is owned by it or by one of its computation sessions (a
:class:`dispy_core.aio.tasks.TaskOwner`): if one fails, the failure ends the session the same
way, so no error is lost and nothing it started (a computation process still in setup, say)
is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from dispy_core import availability
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.aio.tasks import TaskOwner
from dispy_core.config import DEFAULT_PULSE, dead_after
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import (
    NOT_WANTED,
    CloseComputation,
    ComputationClosed,
    ComputationFailed,
    ComputationSetup,
    ComputationStart,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    JobSubmit,
    Message,
    Notice,
    Pulse,
    SetCpus,
    clip,
)
from dispy_node._computation_session import (
    NO_COMPUTATION,
    UNKNOWN_COMPUTATION,
    ComputationSession,
)

if TYPE_CHECKING:
    from dispy_node.node import Node

__all__ = ["Session"]

log = logging.getLogger("dispy_node")
# How often an orphaned session looks whether its last job ended (it then frees the node).
ORPHAN_POLL = 0.5


class Session:
    """The messages of one peer connection, routed by computation (see the module docstring).

    Args:
        node: The node serving the peer.
        max_computations: How many computations the peer may hold at once.
    """

    def __init__(self, node: Node, *, max_computations: int = 1, role: str = "client") -> None:
        self.node = node
        self.role = role
        self.conn: Connection | None = None
        self.ended = False
        self.sessions: dict[int, ComputationSession] = {}
        self.max_computations = max_computations
        self.last_heard = time.monotonic()
        self._held = False  # some runner holds queued jobs until the peer is heard from
        self._pulse_task: asyncio.Task[None] | None = None
        self._tasks = TaskOwner("session", log=log, on_error=self._own_task_failed)
        self._orphaned = asyncio.Event()  # wakes the zombie watcher when the peer is gone

    def runs(self, comp_id: int) -> bool:
        return comp_id in self.sessions

    def has_work(self) -> bool:
        return any(cs.has_work() for cs in self.sessions.values())

    def _attach(self, conn: Connection | None, only: ComputationSession | None = None) -> None:
        # ``only``: a recover connection is for one computation; the others stay orphaned
        # (their results go on to the store, never to another computation's peer).
        self.conn = conn
        for cs in self.sessions.values():
            if only is None or cs is only or conn is None:
                cs.conn = conn

    def _send(self, message: Any) -> None:
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                self.conn.send_nowait(message)

    # -- serving ------------------------------------------------------------------------

    async def serve(self, conn: Connection, only: ComputationSession | None = None) -> str:
        """Serve ``conn`` until the computation closes or the connection ends."""
        self._attach(conn, only)
        if self.node.config.max_file_size:
            conn.screen_payloads(self._oversized_file)
        if not self._tasks:
            self._tasks.start(self._watch_zombie())
        try:
            return await self._serve(conn)
        except ConnectionClosed as exc:
            log.warning("client %s: connection lost (%s)", conn.peer_name, exc)
            return "lost"
        except PeerRefused as exc:
            if exc.reason == NOT_WANTED:
                log.info("client %s did not take this node", conn.peer_name)
                return "declined"
            log.warning("client %s ended the session: %s", conn.peer_name, exc.reason)
            return "refused"
        except ProtocolError as exc:
            log.warning("client %s: %s", conn.peer_name, exc)
            await conn.refuse(clip(str(exc), 1000))
            return "refused"
        except Exception as exc:
            # A bug here, not the client's fault: one record with the traceback, the client
            # told why, and the caller frees the node.
            log.exception("session of client %s failed", conn.peer_name)
            await conn.refuse(clip(f"node error: {type(exc).__name__}: {exc}", 1000))
            return "failed"
        finally:
            if self.conn is conn:
                self._attach(None)

    def _oversized_file(self, header: bytes, size: int) -> bool:
        """A file.put over max_file_size: its contents are dropped unread (refused below)."""
        if size <= self.node.config.max_file_size:
            return False
        with contextlib.suppress(ValueError, AttributeError):
            return bool(json.loads(header).get("type") == FilePut.model_fields["type"].default)
        return False

    async def _serve(self, conn: Connection) -> str:
        sessions = self.sessions

        def handle(msg: Message, payload: Payload) -> Awaitable[None] | None:
            # Runs inside the connection's protocol callback; an awaitable returned here
            # holds back later messages until it is done, so order is kept.
            self.last_heard = time.monotonic()
            if self._held:
                self._release_held()
            if isinstance(msg, JobSubmit):
                cs = sessions.get(msg.comp_id)
                if cs is None:
                    self._send(Notice(level="error", text=UNKNOWN_COMPUTATION))
                else:
                    cs._submit(msg, payload)
            elif isinstance(msg, JobAck):
                self._acked(msg)
            elif isinstance(msg, FilePut):
                cs = sessions.get(msg.comp_id)
                if cs is not None:
                    return cs.file_put(msg, payload)
                self._file_refused(msg)
            elif isinstance(msg, JobCancel):
                if (cs := sessions.get(msg.comp_id)) is not None:
                    cs.cancel(msg.job_ids)
            elif isinstance(msg, ComputationSetup):
                self._open(msg)
            elif isinstance(msg, ComputationStart):
                self._start_later(conn, msg, payload)
            elif isinstance(msg, SetCpus):
                if (cs := sessions.get(msg.comp_id)) is not None:
                    cs.set_cpus(msg)
            elif isinstance(msg, FileAck):
                if (cs := sessions.get(msg.comp_id)) is not None:
                    cs.file_acked(msg)
            elif isinstance(msg, CloseComputation):
                return self._close_and_finish(conn, msg)
            elif not isinstance(msg, Pulse):
                log.debug("ignoring %s from %s", msg.type, conn.peer_name)
            return None

        outcome: str = await conn.serve(handle)
        return outcome

    def _acked(self, msg: JobAck) -> None:
        cs = self.sessions.get(msg.comp_id)
        if cs is not None:
            cs._acked(msg.job_ids)

    def _file_refused(self, msg: FilePut) -> None:
        log.warning("file %r refused: %s", msg.path, NO_COMPUTATION)
        if msg.req:
            self._send(FileAck(comp_id=msg.comp_id, req=msg.req, error=NO_COMPUTATION))

    # -- computations -------------------------------------------------------------------

    def _open(self, msg: ComputationSetup) -> None:
        if msg.comp_id in self.sessions or len(self.sessions) >= self.max_computations:
            if self.max_computations == 1 or msg.comp_id in self.sessions:
                reason = "this node already runs a computation"
            else:
                reason = "too many computations on this node"
            self._send(ComputationFailed(comp_id=msg.comp_id, reason=reason))
            return
        cs = ComputationSession(self.node, msg, self)
        cs.conn = self.conn
        self.sessions[msg.comp_id] = cs

    def _start_later(self, conn: Connection, msg: ComputationStart, payload: Payload) -> None:
        cs = self.sessions.get(msg.comp_id)
        if cs is None:
            self._tasks.start(self._start(msg, payload))
        elif cs.start_seen:
            # One start per computation: a second would leave the first one's processes
            # running with nothing to close them.
            log.warning("client %s sent computation.start twice", conn.peer_name)
            self._send(Notice(level="error", text="computation already started"))
        else:
            cs.start_seen = True
            cs.tasks.start(self._start(msg, payload))

    async def _start(self, msg: ComputationStart, payload: Payload) -> None:
        cs = self.sessions.get(msg.comp_id)
        if cs is None:
            reason = "computation.start without computation"
            self._send(ComputationFailed(comp_id=msg.comp_id, reason=reason))
            return
        await cs.start(msg, payload)
        if cs.setup is None and self.sessions.get(msg.comp_id) is cs:
            del self.sessions[msg.comp_id]  # it failed: the peer may open another

    def computation_ready(self, session: ComputationSession) -> None:
        if self._pulse_task is None and session.setup is not None:
            interval = session.setup.pulse_interval or DEFAULT_PULSE
            self._pulse_task = self._tasks.start(self._pulse(interval))

    async def _close_and_finish(self, conn: Connection, msg: CloseComputation) -> None:
        cs = self.sessions.pop(msg.comp_id, None)
        if cs is not None:
            await cs.close(terminate=msg.terminate)
        if not self.sessions and self._pulse_task is not None:
            self._pulse_task.cancel()  # no pulse after the last computation.closed
            self._pulse_task = None
        await conn.send(ComputationClosed(comp_id=msg.comp_id))
        if self.max_computations == 1:
            conn.finish("closed")

    # -- liveness -----------------------------------------------------------------------

    def may_start(self, pulse_interval: float | None) -> bool:
        """Whether queued jobs may start now (the lease on them).

        While the peer is connected, only if it was heard from within dead_after(): a
        client that took this node for dead (it was stopped, say) runs those jobs elsewhere,
        so starting them here on waking up would run them twice. Without a peer (it
        crashed) the jobs run, for recover_jobs.
        """
        if self.conn is None or time.monotonic() - self.last_heard < dead_after(pulse_interval):
            return True
        self._held = True
        return False

    def _release_held(self) -> None:
        self._held = False
        for cs in self.sessions.values():
            comp = cs.computation
            if comp is not None and comp.held:
                comp.held = False
                comp.kick()

    async def _pulse(self, interval: float) -> None:
        prefix = self.node.config.dest_path_prefix
        while True:
            await asyncio.sleep(interval)
            running = sum(cs.computation.running for cs in self.sessions.values() if cs.computation)
            avail = await asyncio.to_thread(availability.measure, prefix)
            self._send(Pulse(avail=avail, running=running))

    async def _watch_zombie(self) -> None:
        limit = self.node.config.zombie_interval
        while True:
            # Orphaned (no connection): looked at often, since the node is free as soon as
            # its last job ends (the results are on disk, where recovery finds them).
            wait = ORPHAN_POLL if self.conn is None else min(limit / 4, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._orphaned.wait(), wait)
            self._orphaned.clear()
            if self.conn is None and not self.ended:
                if self.has_work():
                    continue
                log.info("orphaned computation(s) have no job left (results kept): freeing")
                await self.finish()
                self.node.session_ended(self)
                return
            silent = time.monotonic() - self.last_heard
            if silent <= limit or self.has_work():
                continue
            if self.conn is not None:
                log.warning(
                    "client %s silent for %.0f s with no job left: dropping it",
                    self.conn.peer_name,
                    silent,
                )
                await self.conn.close()
                continue
            log.warning("no word from the client for %.0f s and no job left: freeing", silent)
            await self.finish()
            self.node.session_ended(self)
            return

    # -- failures -----------------------------------------------------------------------

    def task_failed(self, session: ComputationSession | None, exc: BaseException) -> None:
        """A task of this session or of one of its computations raised."""
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.fail(exc)  # serve() logs it once and ends the session
            return
        # No peer to tell (orphaned): log it and close what failed; the node is free once
        # nothing is left.
        log.error("session task failed: %s", exc, exc_info=exc)
        if not self.ended:
            self.node.tasks.start(self._end_after_failure(session))

    def _own_task_failed(self, exc: BaseException) -> None:
        self.task_failed(None, exc)

    async def _end_after_failure(self, session: ComputationSession | None) -> None:
        if session is not None:
            for comp_id, cs in list(self.sessions.items()):
                if cs is session:
                    del self.sessions[comp_id]
                    await session.close(terminate=True)
            if self.sessions:
                return
        if self.ended:
            return
        try:
            await self.finish()
        finally:
            self.node.session_ended(self)

    # -- recovery and the end -----------------------------------------------------------

    async def recover(self, conn: Connection, comp_id: int) -> str:
        """Attach a recover connection: send what is stored, then serve it like a client."""
        cs = self.sessions[comp_id]
        await cs.recover(conn)
        self._attach(conn, cs)
        cs._flush()
        return await self.serve(conn, cs)

    async def end(self, outcome: str) -> bool:
        """The connection is over: orphan what is worth keeping, close the rest.

        Only a computation that is still there (not closed) and has jobs or unacknowledged
        results is worth keeping for its peer. Returns whether any is kept (the session
        then lives on without a connection).
        """
        if outcome == "lost" and not self.ended:
            for comp_id, cs in list(self.sessions.items()):
                if cs.computation is not None and (cs.has_work() or cs.unacked):
                    cs.orphan()
                else:
                    del self.sessions[comp_id]
                    await cs.close(terminate=True)
            if self.sessions:
                self._orphaned.set()
                return True
        await self.finish()
        return False

    async def finish(self) -> None:
        if self.ended:
            return  # ended already (by the zombie watcher, say): never closed twice
        self.ended = True
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for cs in sessions:
            await cs.close(terminate=True)
        self._pulse_task = None
        await self._tasks.close()  # all but the caller, if it is one of them
