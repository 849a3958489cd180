"""One client's session on a node: its computation, files, jobs, results and pulses.

Theory of operation
-------------------
The session reads messages from the client's connection in order, so a file sent before a
job is on disk before that job runs. ``computation`` makes the directory; ``file.put``
messages fill it (or, with a ``job_id``, add a job's own files, removed when the job ends);
``computation.start`` starts the computation process and answers ``computation.ready`` or
``computation.failed``. Results are collected as jobs end and sent as one ``jobs.done``
frame per loop turn, and kept until the client acknowledges them (``jobs.ack``).

A session outlives its connection. If the connection breaks while jobs remain (or results
are unacknowledged), the session is *orphaned*: jobs keep running and every result goes to
the node's :class:`ResultStore` on disk. ``recover_jobs`` can then attach a new connection
(:meth:`Session.recover`) to collect stored and later results and release the node. An
orphaned session ends by itself ``zombie_interval`` after the client's last word, once its
jobs are done; stored results stay on disk until recovered or ``--clean``.

Outcomes of :meth:`Session.serve`: ``closed`` (the client closed the computation),
``declined`` (the client did not want this node), ``refused`` (the client ended the session,
e.g. it declared this node dead, or sent a message this node refuses), ``lost`` (the
connection broke), ``failed`` (an error of this node while serving: logged once with its
traceback; the session ends and the node is free, never left "busy").

Every task a session starts is owned by it (a :class:`dispy_core.aio.tasks.TaskOwner`): if
one fails, the failure ends the session the same way, so no error is lost and nothing it started
(a computation process still in setup, say) is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from dispy_core import availability
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.aio.tasks import TaskOwner
from dispy_core.config import DEFAULT_PULSE, dead_after
from dispy_core.files import store_file
from dispy_core.paths import UnsafePathError, safe_join
from dispy_core.protocol.errors import ProtocolError, RemoteProtocolError
from dispy_core.protocol.framing import DIRECT_PAYLOAD, Payload
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
    JobProvisional,
    JobStarted,
    JobSubmit,
    Message,
    Notice,
    Pulse,
    RecoverStatus,
    SetCpus,
    clip,
)
from dispy_core.result_store import oldest_over_budget
from dispy_core.results import Reply, job_done_messages, local_reply
from dispy_node._limits import MAX_UNACKED_BYTES, queue_full
from dispy_node._paths import computation_dir
from dispy_node.executor import Computation, ComputationStartError
from dispy_node.programs import ProgramComputation

if TYPE_CHECKING:
    from dispy_core.result_store import ResultStore
    from dispy_node.node import Node

log = logging.getLogger("dispy_node")

BATCH_DELAY = 0.002
MAX_BATCH = 512


class _Runner(Protocol):
    comp_id: int
    name: str
    cpus: int
    dest_path: str
    cleanup_files: bool

    @property
    def running(self) -> int: ...

    @property
    def queued(self) -> int: ...

    async def start(self) -> None: ...

    held: bool
    queued_bytes: int

    def submit(self, job_id: int, payload: Payload, notify: bool = False) -> None: ...
    def kick(self) -> None: ...
    def cancel(self, job_id: int) -> bool: ...
    def pending_ids(self) -> list[int]: ...
    def set_cpus(self, cpus: int) -> None: ...
    def close(self, *, terminate: bool = True) -> Awaitable[str | None]: ...


class Session:
    """The messages of one client connection (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conn: Connection | None = None
        self.ended = False
        self._unacked: dict[int, Reply] = {}
        self._unacked_bytes = 0
        self._stored = False  # some results of this session went to the ResultStore
        self.setup: ComputationSetup | None = None
        self.dest: str | None = None
        self.setup_error: str | None = None
        self.computation: _Runner | None = None
        self._starting: _Runner | None = None  # between computation.start and ready
        self._start_seen = False
        self.last_heard = time.monotonic()
        self._job_files: dict[int, list[str]] = {}
        self._failed_job_files: dict[int, str] = {}
        self._outbox: list[Reply] = []
        self._started: list[int] = []
        self._flush_scheduled = False
        self._tasks = TaskOwner("session", log=log, on_error=self._task_failed)
        self._send_file_req = 0
        self._send_file_waiters: dict[int, asyncio.Future[str | None]] = {}

    def _task_failed(self, exc: BaseException) -> None:
        """A task of this session raised: end the session with that error."""
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.fail(exc)  # serve() logs it once and ends the session
            return
        # No client to tell (orphaned session): log it and free the node.
        log.error("session task failed: %s", exc, exc_info=exc)
        if not self.ended:
            self.ended = True
            self.node.tasks.start(self._end_after_failure())

    async def _end_after_failure(self) -> None:
        try:
            await self._close(terminate=True)
        finally:
            self.node.session_ended(self)

    @property
    def comp_id(self) -> int | None:
        return self.setup.comp_id if self.setup is not None else None

    @property
    def unacked(self) -> int:
        return len(self._unacked) + len(self._outbox)

    def has_work(self) -> bool:
        comp = self.computation
        return comp is not None and (comp.running > 0 or comp.queued > 0)

    async def serve(self, conn: Connection) -> str:
        """Serve ``conn`` until the computation closes or the connection ends."""
        self.conn = conn
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
                self.conn = None

    def _oversized_file(self, header: bytes, size: int) -> bool:
        """A file.put over max_file_size: its contents are dropped unread (refused below)."""
        if size <= self.node.config.max_file_size:
            return False
        with contextlib.suppress(ValueError, AttributeError):
            return bool(json.loads(header).get("type") == FilePut.model_fields["type"].default)
        return False

    def may_start(self) -> bool:
        """Whether queued jobs may start now.

        While the client is connected, only if it was heard from within dead_after(): a
        client that took this node for dead (it was stopped, say) runs those jobs elsewhere,
        so starting them here on waking up would run them twice. Without a client (it
        crashed) the jobs run, for recover_jobs.
        """
        if self.conn is None or self.setup is None:
            return True
        return time.monotonic() - self.last_heard < dead_after(self.setup.pulse_interval)

    def orphan(self) -> None:
        """The client is gone but jobs remain: keep every result on disk from now on."""
        setup = self.setup
        if setup is None:
            return
        if self.computation is not None:
            self.computation.held = False
            self.computation.kick()
        store = self.node.store
        self._stored = True
        store.save_meta(setup.comp_id, {"name": setup.name, "comp_id": setup.comp_id})
        pending = list(self._unacked.values()) + self._outbox
        self._unacked.clear()
        self._unacked_bytes = 0
        self._outbox = []
        if pending:
            store.save(setup.comp_id, pending)
        log.warning(
            "client of %s is gone: %d job(s) still running or queued; results are kept in %s",
            setup.name,
            (self.computation.running + self.computation.queued) if self.computation else 0,
            store.root,
        )

    async def recover(self, conn: Connection) -> str:
        """Attach a recover connection: send what is stored, then serve it like a client."""
        setup = self.setup
        assert setup is not None
        comp = self.computation
        pending = comp.pending_ids() if comp is not None else []
        stored = self.node.store.load(setup.comp_id)
        self._stored = self._stored or bool(stored)
        await conn.send(
            RecoverStatus(
                comp_id=setup.comp_id, known=True, pending=pending[:MAX_IDS], stored=len(stored)
            )
        )
        self.conn = conn
        for reply in stored:
            self._outbox.append(reply)
        self._flush()
        return await self.serve(conn)

    async def _serve(self, conn: Connection) -> str:
        def handle(msg: Message, payload: Payload) -> Awaitable[None] | None:
            # Runs inside the connection's protocol callback; an awaitable returned here
            # holds back later messages until it is done, so order is kept.
            self.last_heard = time.monotonic()
            comp = self.computation
            if comp is not None and comp.held:
                comp.held = False
                comp.kick()
            if isinstance(msg, JobSubmit):
                self._submit(msg, payload)
            elif isinstance(msg, JobAck):
                self._acked(msg.job_ids)
            elif isinstance(msg, FilePut):
                return self._file_put(msg, payload)
            elif isinstance(msg, JobCancel):
                if self.computation is not None:
                    for job_id in msg.job_ids:
                        self.computation.cancel(job_id)
            elif isinstance(msg, ComputationSetup):
                self._begin(msg)
            elif isinstance(msg, ComputationStart):
                if self._start_seen:
                    # One computation per session: a second start would leave the first
                    # one's processes running with nothing to close them.
                    log.warning("client %s sent computation.start twice", conn.peer_name)
                    self._send(Notice(level="error", text="computation already started"))
                else:
                    self._start_seen = True
                    self._tasks.start(self._start(msg, payload))
            elif isinstance(msg, SetCpus):
                self._set_cpus(msg)
            elif isinstance(msg, FileAck):
                waiter = self._send_file_waiters.pop(msg.req, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg.error)
            elif isinstance(msg, CloseComputation):
                return self._close_and_finish(conn, msg)
            elif not isinstance(msg, Pulse):
                log.debug("ignoring %s from %s", msg.type, conn.peer_name)
            return None

        outcome: str = await conn.serve(handle)
        return outcome

    async def _close_and_finish(self, conn: Connection, msg: CloseComputation) -> None:
        await self._close(terminate=msg.terminate)
        await conn.send(ComputationClosed(comp_id=msg.comp_id))
        conn.finish("closed")

    def _acked(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            reply = self._unacked.pop(job_id, None)
            if reply is not None:
                self._unacked_bytes -= len(reply.payload)
        # Results that went through the disk (orphaned, then recovered) are deleted there too.
        if self._stored and self.setup is not None:
            self.node.store.remove(self.setup.comp_id, job_ids)

    # -- setup --------------------------------------------------------------------------

    def _send(self, message: Any, payload: Payload = b"") -> None:
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                self.conn.send_nowait(message, payload)

    def _begin(self, msg: ComputationSetup) -> None:
        if self.setup is not None:
            self._send(
                ComputationFailed(
                    comp_id=msg.comp_id, reason="this node already runs a computation"
                )
            )
            return
        self.setup = msg
        try:
            self.dest = computation_dir(
                self.node.config.dest_path_prefix, msg.dest_path, msg.name, msg.comp_id
            )
        except (UnsafePathError, OSError) as exc:
            self.setup_error = f"dest_path {msg.dest_path!r} refused: {exc}"

    async def _file_put(self, msg: FilePut, payload: Payload) -> None:
        error = await self._write_file(msg, payload)
        if error is not None:
            log.warning("file %r refused: %s", msg.path, error)
            if msg.job_id is None and msg.req == 0 and self.computation is None:
                self.setup_error = self.setup_error or error
            elif msg.job_id is not None and self.computation is not None:
                self._job_files.setdefault(msg.job_id, [])
                self._failed_job_files[msg.job_id] = error
        if msg.req:
            reply_error = None if error is None else clip(error)
            self._send(FileAck(comp_id=msg.comp_id, req=msg.req, error=reply_error))

    async def _write_file(self, msg: FilePut, payload: Payload) -> str | None:
        if self.dest is None or self.setup is None or msg.comp_id != self.setup.comp_id:
            return "no computation to receive the file"
        limit = self.node.config.max_file_size
        if limit and msg.size > limit:
            return (
                f"{msg.path!r} is {msg.size} bytes, over this node's max_file_size of {limit} bytes"
            )
        if len(payload) != msg.size:
            return f"{msg.path!r} arrived with {len(payload)} of {msg.size} bytes"
        try:
            path = safe_join(self.dest, msg.path)
            await asyncio.to_thread(store_file, path, payload, msg.mode, msg.mtime)
        except (UnsafePathError, OSError) as exc:
            return str(exc)
        if msg.job_id is not None:
            self._job_files.setdefault(msg.job_id, []).append(path)
        return None

    async def _start(self, msg: ComputationStart, payload: Payload) -> None:
        setup = self.setup
        if setup is None or setup.comp_id != msg.comp_id or self.dest is None:
            reason = self.setup_error or "computation.start without computation"
            self._start_seen = False
            self._send(ComputationFailed(comp_id=msg.comp_id, reason=clip(reason)))
            return
        if self.setup_error is not None:
            await self._fail_start(setup, self.setup_error)
            return
        node = self.node
        cpus = min(setup.cpus, node.cpus)
        runner: _Runner
        if setup.kind == "program":
            runner = ProgramComputation(
                comp_id=setup.comp_id,
                name=setup.name,
                cpus=cpus,
                dest_path=self.dest,
                spec=payload,
                on_reply=self._on_reply,
                on_started=self._on_started,
                may_start=self.may_start,
                cleanup_files=setup.cleanup,
                max_output=node.config.max_job_output,
            )
        else:
            runner = Computation(
                comp_id=setup.comp_id,
                name=setup.name,
                cpus=cpus,
                dest_path=self.dest,
                bundle=payload,
                on_reply=self._on_reply,
                on_provisional=self._on_provisional,
                on_send_file=self._on_send_file,
                on_started=self._on_started,
                may_start=self.may_start,
                cleanup_files=setup.cleanup,
                max_file_size=node.config.max_file_size,
                max_output=node.config.max_job_output,
                allocate=node.buffers.take,
            )
        self._starting = runner
        try:
            await runner.start()
        except (ComputationStartError, UnsafePathError, OSError) as exc:
            if self._starting is not runner:
                return  # _close() stopped it during setup: nothing to report
            self._starting = None
            await runner.close(terminate=True)
            await self._fail_start(setup, str(exc))
            return
        except BaseException:
            # A bug, or the session closing while setup runs: what start() began must not
            # outlive it (the error itself goes to the session's task owner). _close() may
            # have stopped it already.
            if self._starting is runner:
                self._starting = None
                await asyncio.shield(runner.close(terminate=True))
            raise
        if self._starting is not runner:
            await runner.close(terminate=True)  # _close() came while start() finished
            return
        self._starting = None
        self.computation = runner
        log.info("computation %s ready on %d CPU(s) in %s", setup.name, cpus, self.dest)
        self._send(ComputationReady(comp_id=setup.comp_id, cpus=cpus, dest_path=self.dest))
        self._tasks.start(self._pulse(setup.pulse_interval or DEFAULT_PULSE))

    async def _fail_start(self, setup: ComputationSetup, reason: str) -> None:
        log.warning("computation %s could not start: %s", setup.name, reason)
        if self.dest is not None and setup.cleanup:
            shutil.rmtree(self.dest, ignore_errors=True)
        self.dest = None
        self.setup = None
        self.setup_error = None
        self._start_seen = False
        self._send(ComputationFailed(comp_id=setup.comp_id, reason=clip(reason)))

    def _set_cpus(self, msg: SetCpus) -> None:
        comp = self.computation
        if comp is None:
            return
        cpus = max(1, min(msg.cpus, self.node.cpus))
        comp.set_cpus(cpus)
        self._send(CpusSet(comp_id=msg.comp_id, cpus=cpus))

    # -- jobs ---------------------------------------------------------------------------

    def _submit(self, msg: JobSubmit, payload: Payload) -> None:
        comp = self.computation
        if comp is None or comp.comp_id != msg.comp_id:
            self._send(Notice(level="error", text="jobs for an unknown computation"))
            return
        if sum(size for _, size in msg.jobs) != len(payload):
            raise RemoteProtocolError(
                f"jobs.submit announces {sum(s for _, s in msg.jobs)} bytes of arguments "
                f"but carries {len(payload)}"
            )
        offset = 0
        view = memoryview(payload)
        failed = self._failed_job_files
        notify = set(msg.notify)
        whole = len(msg.jobs) == 1
        for job_id, size in msg.jobs:
            # A job's arguments are the payload itself or, batched, a slice of it: a large
            # one as a view (no copy), small ones copied so the batch need not stay alive.
            if whole:
                data: Payload = payload
            elif size >= DIRECT_PAYLOAD:
                data = view[offset : offset + size]
            else:
                data = bytes(view[offset : offset + size])
            offset += size
            error = failed.pop(job_id, None) if failed else None
            if error is not None:
                reason = f"a file of this job was refused: {error}"
                self._on_reply(local_reply(job_id, "terminated", reason, time.time()))
                continue
            cpus = self.node.cpus
            if comp.queued >= cpus and (
                full := queue_full(comp.queued, comp.queued_bytes, size, cpus)
            ):
                log.warning("job %s of %s refused: %s", job_id, comp.name, full)
                self._on_reply(local_reply(job_id, "terminated", full, time.time()))
                continue
            comp.submit(job_id, data, job_id in notify)

    def _on_reply(self, reply: Reply) -> None:
        files = self._job_files.pop(reply.job_id, None)
        if files:
            for path in files:
                with contextlib.suppress(OSError):
                    os.remove(path)
        self._outbox.append(reply)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            comp = self.computation
            if comp is not None and comp.queued > 0 and len(self._outbox) < MAX_BATCH:
                # More results are about to follow: wait a moment to send them in one frame.
                loop.call_later(BATCH_DELAY, self._flush)
            else:
                self._flush()
        elif len(self._outbox) >= MAX_BATCH:
            self._flush()

    def _on_started(self, job_id: int) -> None:
        self._started.append(job_id)
        self._schedule_flush()

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

    async def _on_send_file(
        self, job_id: int, path: str, mode: int, mtime: float, data: Payload
    ) -> str | None:
        conn = self.conn
        if self.setup is None or conn is None:
            return "the client is not connected"
        self._send_file_req += 1
        req = self._send_file_req
        try:
            message = FilePut(
                comp_id=self.setup.comp_id,
                path=path,
                size=len(data),
                mode=mode,
                mtime=mtime,
                job_id=job_id,
                req=req,
            )
        except ValidationError as exc:
            # The job named a file the wire cannot carry (a NUL, a path too long, ...).
            return clip(f"cannot send {path!r}: {exc.errors()[0].get('msg', 'invalid')}")
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._send_file_waiters[req] = waiter
        try:
            await conn.send(message, data)
            async with asyncio.timeout(max(self.node.config.msg_timeout * 6, 30)):
                return await waiter
        except ConnectionClosed:
            return "the client connection is closed"
        except TimeoutError:
            return "the client did not confirm the file in time"
        finally:
            self._send_file_waiters.pop(req, None)

    # -- liveness -----------------------------------------------------------------------

    async def _pulse(self, interval: float) -> None:
        prefix = self.node.config.dest_path_prefix
        while True:
            await asyncio.sleep(interval)
            comp = self.computation
            avail = await asyncio.to_thread(availability.measure, prefix)
            self._send(Pulse(avail=avail, running=comp.running if comp is not None else 0))

    async def _watch_zombie(self) -> None:
        limit = self.node.config.zombie_interval
        while True:
            await asyncio.sleep(min(limit / 4, 30.0))
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

    # -- end ----------------------------------------------------------------------------

    async def _close(self, *, terminate: bool) -> None:
        comp = self.computation
        self.computation = None
        starting, self._starting = self._starting, None
        if starting is not None:
            # Setup still running (maybe forever): stop its process now; the start task,
            # cancelled below, then finds nothing left to do.
            await starting.close(terminate=True)
        if comp is not None:
            error = await comp.close(terminate=terminate)
            self._flush()
            if error:
                log.warning("cleanup of %s failed: %s", comp.name, error)
        await self._tasks.close()  # all but the caller, if it is one of them
        for paths in self._job_files.values():
            for path in paths:
                with contextlib.suppress(OSError):
                    os.remove(path)
        self._job_files.clear()
        if self.dest is not None and (self.setup is None or self.setup.cleanup):
            shutil.rmtree(self.dest, ignore_errors=True)
        store = self.node.store
        comp_id = self.comp_id
        if comp_id is not None and store.has(comp_id) and store.count(comp_id) == 0:
            store.drop(comp_id)
        self.dest = None
        self.setup = None

    async def finish(self) -> None:
        self.ended = True
        await self._close(terminate=True)


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
