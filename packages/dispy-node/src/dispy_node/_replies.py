"""The result path of one computation on the node: batching, acknowledgement, the store.

Replies (a job's result, or the node's own reply for a cancelled, crashed or refused job) and
``jobs.started`` notices collect in an outbox and leave as one ``jobs.done`` (and one
``jobs.started``) frame per loop turn, or after :data:`BATCH_DELAY` while more jobs are
queued. A sent reply stays in memory until its peer acknowledges it (``jobs.ack``); past
:data:`~dispy_node._limits.MAX_UNACKED_BYTES` the oldest go to the node's
:class:`~dispy_core.result_store.ResultStore`, where acknowledgements find them too. With no
connection (the session is orphaned) every reply goes to the store, for ``recover_jobs``;
:func:`serve_stored` hands them over when the computation itself is gone.

:class:`ReplyPath` is the half of :class:`~dispy_node._computation_session.ComputationSession`
that owns this state; the other half (files, the runner) fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import (
    MAX_IDS,
    CloseComputation,
    ComputationClosed,
    ComputationSetup,
    JobAck,
    JobProvisional,
    JobStarted,
    RecoverStatus,
)
from dispy_core.result_store import oldest_over_budget
from dispy_core.results import Reply, job_done_messages
from dispy_node._limits import MAX_UNACKED_BYTES

if TYPE_CHECKING:
    from dispy_core.result_store import ResultStore
    from dispy_node._computation_session import Runner
    from dispy_node.node import Node

log = logging.getLogger("dispy_node")

BATCH_DELAY = 0.002
MAX_BATCH = 512


class ReplyPath:
    """Replies of one computation on their way to its peer (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # The peer's connection; None while the computation is orphaned.
        self.conn: Connection | None = None
        self.setup: ComputationSetup | None = None  # None once closed
        self.computation: Runner | None = None
        self._unacked: dict[int, Reply] = {}
        self._unacked_bytes = 0
        self._stored = False  # some results of this computation went to the ResultStore
        self._outbox: list[Reply] = []
        self._started: list[int] = []
        self._flush_scheduled = False
        self._job_files: dict[int, list[str]] = {}  # a job's own files, removed as it ends

    @property
    def comp_id(self) -> int | None:
        return self.setup.comp_id if self.setup is not None else None

    @property
    def unacked(self) -> int:
        return len(self._unacked) + len(self._outbox)

    def _send(self, message: Any, payload: Payload = b"") -> None:
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                self.conn.send_nowait(message, payload)

    # -- replies out --------------------------------------------------------------------

    def _on_reply(self, reply: Reply) -> None:
        files = self._job_files.pop(reply.job_id, None)
        if files:
            for path in files:
                with contextlib.suppress(OSError):
                    os.remove(path)
        self._outbox.append(reply)
        self._schedule_flush()

    def _on_started(self, job_id: int) -> None:
        self._started.append(job_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            comp = self.computation
            if comp is not None and comp.queued > 0 and len(self._outbox) < MAX_BATCH:
                # More results are about to follow: wait a moment to send them in one frame.
                # (The loop only here: get_running_loop() costs a getpid() call each time.)
                asyncio.get_running_loop().call_later(BATCH_DELAY, self._flush)
            else:
                self._flush()
        elif len(self._outbox) >= MAX_BATCH:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.setup is None:
            return
        conn = self.conn
        if self._started:
            started, self._started = self._started, []
            if conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    for at in range(0, len(started), MAX_IDS):
                        part = started[at : at + MAX_IDS]
                        conn.send_nowait(JobStarted(comp_id=self.setup.comp_id, job_ids=part))
        if not self._outbox:
            return
        replies, self._outbox = self._outbox, []
        if conn is None or conn.closed:
            self._stored = True
            self.node.store.save(self.setup.comp_id, replies)
            return
        for reply in replies:
            self._unacked[reply.job_id] = reply
            self._unacked_bytes += len(reply.payload)
        if self._unacked_bytes > MAX_UNACKED_BYTES:
            self._spill(self.setup)
        # On failure the replies stay in _unacked and go to disk when the session is orphaned.
        with contextlib.suppress(ConnectionClosed):
            for message, payloads in job_done_messages(self.setup.comp_id, replies):
                conn.send_nowait(message, payloads)

    def _spill(self, setup: ComputationSetup) -> None:
        """Move the oldest unacknowledged results to disk (the client acknowledges them there
        as usual; recover_jobs finds them too)."""
        spilled = oldest_over_budget(self._unacked, self._unacked_bytes, MAX_UNACKED_BYTES)
        self._unacked_bytes -= sum(len(reply.payload) for reply in spilled)
        store = self.node.store
        store.save_meta(setup.comp_id, {"name": setup.name, "comp_id": setup.comp_id})
        store.save(setup.comp_id, spilled)
        self._stored = True
        log.info(
            "%d unacknowledged result(s) of %s moved to disk (over %d bytes in memory)",
            len(spilled),
            setup.name,
            MAX_UNACKED_BYTES,
        )

    def _on_provisional(self, job_id: int, payload: Payload) -> None:
        if self.setup is None or self.conn is None:
            return
        self._flush()
        with contextlib.suppress(ConnectionClosed):
            message = JobProvisional(comp_id=self.setup.comp_id, job_id=job_id)
            self.conn.send_nowait(message, payload)

    def _acked(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            reply = self._unacked.pop(job_id, None)
            if reply is not None:
                self._unacked_bytes -= len(reply.payload)
        # Results that went through the disk (orphaned, then recovered) are deleted there too.
        if self._stored and self.setup is not None:
            self.node.store.remove(self.setup.comp_id, job_ids)

    # -- without a peer -----------------------------------------------------------------

    def _store_pending(self, setup: ComputationSetup) -> None:
        """The peer is gone: every reply not acknowledged goes to disk, and later ones too."""
        store = self.node.store
        self._stored = True
        store.save_meta(setup.comp_id, {"name": setup.name, "comp_id": setup.comp_id})
        pending = list(self._unacked.values()) + self._outbox
        self._unacked.clear()
        self._unacked_bytes = 0
        self._outbox = []
        if pending:
            store.save(setup.comp_id, pending)

    async def _send_stored(self, conn: Connection, setup: ComputationSetup) -> None:
        """A recover connection: report, then queue every stored reply for it."""
        comp = self.computation
        pending = comp.pending_ids() if comp is not None else []
        stored = self.node.store.load(setup.comp_id)
        self._stored = self._stored or bool(stored)
        await conn.send(
            RecoverStatus(
                comp_id=setup.comp_id, known=True, pending=pending[:MAX_IDS], stored=len(stored)
            )
        )
        self._outbox.extend(stored)


async def serve_stored(store: ResultStore, conn: Connection, comp_id: int) -> None:
    """Recovery of a computation this node no longer runs: hand over what is on disk."""
    replies = store.load(comp_id)
    try:
        await conn.send(
            RecoverStatus(
                comp_id=comp_id, known=store.has(comp_id), pending=[], stored=len(replies)
            )
        )
        for message, payloads in job_done_messages(comp_id, replies):
            await conn.send(message, payloads)
        while True:
            msg, _ = await conn.recv()
            if isinstance(msg, JobAck):
                store.remove(comp_id, msg.job_ids)
            elif isinstance(msg, CloseComputation):
                store.drop(comp_id)
                await conn.send(ComputationClosed(comp_id=comp_id))
                return
    except (ConnectionClosed, ProtocolError) as exc:
        log.info("recovery of %d ended: %s", comp_id, exc)
    finally:
        await conn.close()
