"""One computation on the node: its directory and files, its runner, its jobs and results.

Theory of operation
-------------------
A :class:`ComputationSession` is made when its peer sends ``computation`` and lives until
``computation.close``, the end of its peer's session, or (orphaned) until recovered or
dropped as a zombie. The peer's connection-level :class:`~dispy_node.session.Session` routes
each message to it by ``comp_id``; it never reads the connection itself.

``computation`` makes the directory; ``file.put`` messages fill it (or, with a ``job_id``,
add a job's own files, removed when the job ends); ``computation.start`` starts the runner
(a :class:`~dispy_node.executor.Computation` or a
:class:`~dispy_node.programs.ProgramComputation`) and answers ``computation.ready`` or
``computation.failed``. ``jobs.submit`` queues jobs on the runner within the bounds of
:mod:`dispy_node._limits`; replies travel back by :class:`~dispy_node._replies.ReplyPath`.

What belongs to the peer rather than to one computation is asked of the :class:`Owner`:
whether queued jobs may start now (the lease, renewed by any message of the peer), what a
failed task of this computation means, and that a computation is ready (pulses start).
Every task this computation starts is owned by it, so closing it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.aio.tasks import TaskOwner
from dispy_core.files import store_file
from dispy_core.paths import UnsafePathError, safe_join
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.framing import DIRECT_PAYLOAD, Payload
from dispy_core.protocol.messages import (
    ComputationFailed,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    CpusSet,
    FileAck,
    FilePut,
    JobSubmit,
    Notice,
    SetCpus,
    clip,
)
from dispy_core.results import local_reply
from dispy_node._limits import queue_full
from dispy_node._paths import computation_dir
from dispy_node._replies import ReplyPath
from dispy_node.executor import Computation, ComputationStartError
from dispy_node.programs import ProgramComputation

if TYPE_CHECKING:
    from dispy_node.node import Node

log = logging.getLogger("dispy_node")

NO_COMPUTATION = "no computation to receive the file"
UNKNOWN_COMPUTATION = "jobs for an unknown computation"


class Runner(Protocol):
    """What a computation session needs of its runner (functions or programs)."""

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


class Owner(Protocol):
    """The peer's session, as one of its computations sees it."""

    def may_start(self, pulse_interval: float | None) -> bool: ...
    def task_failed(self, session: ComputationSession, exc: BaseException) -> None: ...
    def computation_ready(self, session: ComputationSession) -> None: ...


class ComputationSession(ReplyPath):
    """One computation of a peer on this node (see the module docstring)."""

    def __init__(
        self, node: Node, setup: ComputationSetup | None = None, owner: Owner | None = None
    ) -> None:
        super().__init__(node)
        self.owner = owner
        self.dest: str | None = None
        self.setup_error: str | None = None
        self._starting: Runner | None = None  # between computation.start and ready
        self.start_seen = False
        self._failed_job_files: dict[int, str] = {}
        self.tasks = TaskOwner("computation session", log=log, on_error=self._task_failed)
        self._send_file_req = 0
        self._send_file_waiters: dict[int, asyncio.Future[str | None]] = {}
        if setup is not None:
            self._begin(setup)

    def _begin(self, setup: ComputationSetup) -> None:
        self.setup = setup
        try:
            self.dest = computation_dir(
                self.node.config.dest_path_prefix, setup.dest_path, setup.name, setup.comp_id
            )
        except (UnsafePathError, OSError) as exc:
            self.setup_error = f"dest_path {setup.dest_path!r} refused: {exc}"

    def _task_failed(self, exc: BaseException) -> None:
        if self.owner is not None:
            self.owner.task_failed(self, exc)
        else:
            log.error("computation task failed: %s", exc, exc_info=exc)

    def has_work(self) -> bool:
        comp = self.computation
        return comp is not None and (comp.running > 0 or comp.queued > 0)

    def may_start(self) -> bool:
        """Whether queued jobs may start now: the peer's lease (see Session.may_start)."""
        if self.owner is None or self.setup is None:
            return True
        return self.owner.may_start(self.setup.pulse_interval)

    # -- files ----------------------------------------------------------------------------

    async def file_put(self, msg: FilePut, payload: Payload) -> None:
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
            return NO_COMPUTATION
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

    def file_acked(self, msg: FileAck) -> None:
        waiter = self._send_file_waiters.pop(msg.req, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.error)

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

    # -- start ----------------------------------------------------------------------------

    async def start(self, msg: ComputationStart, payload: Payload) -> None:
        setup = self.setup
        if setup is None or setup.comp_id != msg.comp_id or self.dest is None:
            reason = self.setup_error or "computation.start without computation"
            self.start_seen = False
            self._send(ComputationFailed(comp_id=msg.comp_id, reason=clip(reason)))
            return
        if self.setup_error is not None:
            await self._fail_start(setup, self.setup_error)
            return
        cpus = min(setup.cpus, self.node.cpus)
        runner = self._runner(setup, self.dest, cpus, payload)
        self._starting = runner
        try:
            await runner.start()
        except (ComputationStartError, UnsafePathError, OSError) as exc:
            if self._starting is not runner:
                return  # close() stopped it during setup: nothing to report
            self._starting = None
            await runner.close(terminate=True)
            await self._fail_start(setup, str(exc))
            return
        except BaseException:
            # A bug, or the computation closing while setup runs: what start() began must not
            # outlive it (the error itself goes to this session's task owner). close() may
            # have stopped it already.
            if self._starting is runner:
                self._starting = None
                await asyncio.shield(runner.close(terminate=True))
            raise
        if self._starting is not runner:
            await runner.close(terminate=True)  # close() came while start() finished
            return
        self._starting = None
        self.computation = runner
        log.info("computation %s ready on %d CPU(s) in %s", setup.name, cpus, self.dest)
        self._send(ComputationReady(comp_id=setup.comp_id, cpus=cpus, dest_path=self.dest))
        if self.owner is not None:
            self.owner.computation_ready(self)

    def _runner(self, setup: ComputationSetup, dest: str, cpus: int, payload: Payload) -> Runner:
        config = self.node.config
        if setup.kind == "program":
            return ProgramComputation(
                comp_id=setup.comp_id,
                name=setup.name,
                cpus=cpus,
                dest_path=dest,
                spec=payload,
                on_reply=self._on_reply,
                on_started=self._on_started,
                may_start=self.may_start,
                cleanup_files=setup.cleanup,
                max_output=config.max_job_output,
            )
        return Computation(
            comp_id=setup.comp_id,
            name=setup.name,
            cpus=cpus,
            dest_path=dest,
            bundle=payload,
            on_reply=self._on_reply,
            on_provisional=self._on_provisional,
            on_send_file=self._on_send_file,
            on_started=self._on_started,
            may_start=self.may_start,
            cleanup_files=setup.cleanup,
            max_file_size=config.max_file_size,
            max_output=config.max_job_output,
            allocate=self.node.buffers.take,
            job_globals=self._job_globals(dest),
        )

    def _job_globals(self, dest: str) -> dict[str, str]:
        """Names 4.15's jobs found among their globals, which programs still read."""
        config = self.node.config
        ip_addr = config.ext_ip_addr or config.ip_addr or ""
        if not ip_addr and self.conn is not None and self.conn.local_address:
            ip_addr = str(self.conn.local_address[0])  # the address the client reached
        return {
            "dispy_node_name": config.name,
            "dispy_node_ip_addr": ip_addr,
            "dispy_job_path": dest,
        }

    async def _fail_start(self, setup: ComputationSetup, reason: str) -> None:
        log.warning("computation %s could not start: %s", setup.name, reason)
        if self.dest is not None and setup.cleanup:
            shutil.rmtree(self.dest, ignore_errors=True)
        self.dest = None
        self.setup = None  # closed: its peer may send another computation
        self.setup_error = None
        self.start_seen = False
        self._send(ComputationFailed(comp_id=setup.comp_id, reason=clip(reason)))

    def set_cpus(self, msg: SetCpus) -> None:
        comp = self.computation
        if comp is None:
            return
        cpus = max(1, min(msg.cpus, self.node.cpus))
        comp.set_cpus(cpus)
        self._send(CpusSet(comp_id=msg.comp_id, cpus=cpus))

    # -- jobs -----------------------------------------------------------------------------

    def _submit(self, msg: JobSubmit, payload: Payload) -> None:
        comp = self.computation
        if comp is None or comp.comp_id != msg.comp_id:
            self._send(Notice(level="error", text=UNKNOWN_COMPUTATION))
            return
        jobs = msg.jobs
        whole = len(jobs) == 1  # one job at a time is the common case when latency matters
        announced = jobs[0][1] if whole else sum(size for _, size in jobs)
        if announced != len(payload):
            raise RemoteProtocolError(
                f"jobs.submit announces {announced} bytes of arguments but carries {len(payload)}"
            )
        offset = 0
        view = memoryview(payload)
        failed = self._failed_job_files
        notify = set(msg.notify) if msg.notify else ()
        for job_id, size in jobs:
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

    def cancel(self, job_ids: list[int]) -> None:
        comp = self.computation
        if comp is not None:
            for job_id in job_ids:
                comp.cancel(job_id)

    # -- without a peer, and the end ------------------------------------------------------

    def orphan(self) -> None:
        """The peer is gone but jobs remain: keep every result on disk from now on."""
        setup = self.setup
        if setup is None:
            return
        comp = self.computation
        if comp is not None:
            comp.held = False
            comp.kick()
        self._store_pending(setup)
        log.warning(
            "client of %s is gone: %d job(s) still running or queued; results are kept in %s",
            setup.name,
            (comp.running + comp.queued) if comp is not None else 0,
            self.node.store.root,
        )

    async def recover(self, conn: Connection) -> None:
        """Report to a recover connection and queue the stored results for it."""
        assert self.setup is not None
        await self._send_stored(conn, self.setup)

    async def close(self, *, terminate: bool) -> None:
        """Stop the runner (letting its jobs end unless ``terminate``), remove the files."""
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
        await self.tasks.close()  # all but the caller, if it is one of them
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
