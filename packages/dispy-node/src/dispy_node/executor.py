"""The daemon's side of running computations: computation processes and warm workers.

A :class:`Computation` starts ``python -m dispy_node._template`` in the computation's
directory, hands it the pickled bundle, and asks it to fork one worker per allocated CPU.
For each worker the daemon makes a socket pair and passes one end to the computation
process (SCM_RIGHTS over the spawn channel, a socket pair inherited at start); the worker
forked for it is the only process that holds that end. Nothing listens and there is no
token, so no other local process can pose as a worker. The daemon then feeds each worker one
job at a time directly, with no further hop. The daemon never unpickles user data: arguments
and results pass through as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import JobOutcome
from dispy_core.results import Reply, local_reply
from dispy_core.secret import without_secrets
from dispy_node import _wire
from dispy_node._output import DEFAULT_MAX_OUTPUT
from dispy_node._workers import (
    MAX_FROM_WORKER,
    SEND_FILE_OVERHEAD,
    _Worker,
    _WorkerProtocol,
    describe_exit,
)

log = logging.getLogger(__name__)

WORKER_CONNECT_TIMEOUT = 30.0
EXIT_STATUS_WAIT = 2.0
STREAM_ABOVE = 256 << 10
STREAM_SLICE = 256 << 10
# Cancelling a running job first interrupts it (SIGINT: KeyboardInterrupt in the job) so it
# can return a partial result from its handler; a job still running this many seconds later
# is killed, with whatever it started. 4.15 interrupted, then killed after about 6 seconds.
# Either way the worker and its process group go once the job has ended, and a fresh worker
# takes its place.
CANCEL_GRACE = 6.0


SendFileHandler = Callable[[int, str, int, float, Payload], Awaitable[str | None]]


class ComputationStartError(Exception):
    """The computation could not start on this node (setup failed, process died, ...)."""


class Computation:
    """One computation on this node: its process, workers and queue of jobs."""

    def __init__(
        self,
        *,
        comp_id: int,
        name: str,
        cpus: int,
        dest_path: str,
        bundle: Payload,
        on_reply: Callable[[Reply], None],
        on_provisional: Callable[[int, Payload], None],
        on_send_file: SendFileHandler | None = None,
        on_started: Callable[[int], None] = lambda job_id: None,
        may_start: Callable[[], bool] = lambda: True,
        cleanup_files: bool = True,
        max_file_size: int = 0,
        max_output: int = DEFAULT_MAX_OUTPUT,
        allocate: Callable[[int], bytearray | memoryview] = bytearray,
        job_globals: dict[str, str] | None = None,
    ) -> None:
        self.comp_id = comp_id
        self.job_globals = job_globals or {}
        self.allocate = allocate  # buffers for large results
        self.name = name
        self.cpus = cpus
        self.dest_path = dest_path
        self.cleanup_files = cleanup_files
        self._bundle = bundle
        self._on_reply = on_reply
        self._on_provisional = on_provisional
        self._on_send_file = on_send_file
        self._on_started = on_started
        self._may_start = may_start
        self.held = False  # queued jobs waiting for may_start()
        self._notify: set[int] = set()
        self.max_file_size = max_file_size
        self.max_output = max_output
        # what one frame from a worker may announce, by kind: checked before reading it
        self.max_reply = MAX_FROM_WORKER
        self.max_send_file = (
            max_file_size + SEND_FILE_OVERHEAD if max_file_size else MAX_FROM_WORKER
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._queue: deque[tuple[int, Payload]] = deque()
        self._queued_ids: set[int] = set()
        self.queued_bytes = 0  # arguments of the queued jobs
        self._idle: list[_Worker] = []
        self._workers: dict[int, _Worker] = {}
        self._by_pid: dict[int, _Worker] = {}
        self._starting: dict[int, _Worker] = {}
        self._next_wid = 0
        self._spawner: socket.socket | None = None
        self._control_events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks = TaskOwner(f"computation {name}", log=log)
        self.closing = False
        self._ready = False  # setup finished
        self._job_ended = asyncio.Event()

    @property
    def running(self) -> int:
        return sum(1 for w in self._workers.values() if w.job is not None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process, run setup, fork the workers.

        Raises:
            ComputationStartError: with the reason (setup's traceback, a crash, ...).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # argv shows only the spawn channel's descriptor number and the directory
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dispy_node._template",
                str(theirs.fileno()),
                self.dest_path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=self.dest_path,
                env=without_secrets(),  # the computation and its workers never see the secret
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._spawner = ours
        assert self._proc.stdin is not None
        init = {
            "op": "init",
            "max_file_size": self.max_file_size,
            "max_output": self.max_output,
            "globals": self.job_globals,
        }
        self._proc.stdin.write(_wire.control_frame(init, self._bundle))
        self._bundle = b""
        await self._proc.stdin.drain()
        self._tasks.start(self._read_control())
        first = await self._control_events.get()
        if first.get("op") != "ready":
            await self._kill_process()
            raise ComputationStartError(
                first.get("reason") or "the computation process ended during setup"
            )
        self._ready = True
        await asyncio.gather(*(self._add_worker() for _ in range(self.cpus)))

    async def close(self, *, terminate: bool = True) -> str | None:
        """Stop workers (cancelling running jobs if ``terminate``), run cleanup, end process.

        Returns the cleanup error, if any.
        """
        if not self._ready:
            self.closing = True
            # Setup has not finished (it may never): the process reads no control message
            # until it does, so there is no one to ask for a cleanup; stop it now.
            await self._kill_process()
            await self._tasks.close()
            return None
        if not terminate:
            # Jobs queued here run too (workers keep taking them until the queue is empty);
            # no new ones come, as the session no longer routes any to this computation.
            while self._queue or self.running:
                self._job_ended.clear()
                await self._job_ended.wait()
        self.closing = True
        for job_id, _ in list(self._queue):
            self._on_reply(local_reply(job_id, "cancelled", "Cancelled", time.time()))
        self._queue.clear()
        self._queued_ids.clear()
        self.queued_bytes = 0
        for worker in list(self._workers.values()):
            if worker.job is not None:
                self._on_reply(local_reply(worker.job, "cancelled", "Cancelled", worker.job_start))
                worker.job = None
            worker.transport.close()
        error: str | None = None
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self._proc.stdin is not None
                self._proc.stdin.write(_wire.control_frame({"op": "close"}))
                await self._proc.stdin.drain()
                async with asyncio.timeout(10):
                    while True:
                        event = await self._control_events.get()
                        if event.get("op") in ("closed", "eof"):
                            error = event.get("error")
                            break
        await self._kill_process()
        await self._tasks.close()
        if self._spawner is not None:
            self._spawner.close()
        return error

    async def _kill_process(self) -> None:
        for worker in list(self._workers.values()):
            if worker.pid:
                with contextlib.suppress(OSError):
                    os.killpg(worker.pid, signal.SIGKILL)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            # The whole group (start_new_session): whatever setup started goes with it.
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, job_id: int, payload: Payload, notify: bool = False) -> None:
        """Queue a job; with ``notify`` report (``on_started``) when it starts."""
        if notify:
            self._notify.add(job_id)
        self._queue.append((job_id, payload))
        self._queued_ids.add(job_id)
        self.queued_bytes += len(payload)
        self._dispatch()

    def pending_ids(self) -> list[int]:
        """Jobs queued or running here."""
        running = [w.job for w in self._workers.values() if w.job is not None]
        return [job_id for job_id, _ in self._queue] + running

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False if this node does not have it."""
        if job_id in self._queued_ids:
            self._queued_ids.discard(job_id)
            self._queue = deque(item for item in self._queue if item[0] != job_id)
            self.queued_bytes = sum(len(payload) for _, payload in self._queue)
            self._on_reply(local_reply(job_id, "cancelled", "Cancelled", time.time()))
            return True
        for worker in self._workers.values():
            if worker.job == job_id and not worker.cancelling:
                worker.cancelling = True
                if worker.pid:
                    with contextlib.suppress(OSError):
                        os.kill(worker.pid, signal.SIGINT)
                    self._tasks.start(self._kill_after_grace(worker, job_id))
                return True
        return False

    async def _kill_after_grace(self, worker: _Worker, job_id: int) -> None:
        """Kill a cancelled job that is still running after :data:`CANCEL_GRACE`."""
        await asyncio.sleep(CANCEL_GRACE)
        if worker.job == job_id and worker.cancelling and worker.pid:
            log.info("job %s of %s ignored its interrupt; killing it", job_id, self.name)
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)

    def kick(self) -> None:
        """Try again to start queued jobs (after may_start() said no)."""
        self._dispatch()

    def _dispatch(self) -> None:
        if self._queue and self._idle and not self._may_start():
            self.held = True
            return
        while self._idle and self._queue:
            worker = self._idle.pop()
            job_id, payload = self._queue.popleft()
            self._queued_ids.discard(job_id)
            self.queued_bytes -= len(payload)
            worker.job = job_id
            worker.job_start = time.time()
            if self._notify and job_id in self._notify:
                self._notify.discard(job_id)
                self._on_started(job_id)
            head = _wire.TO_WORKER.pack(_wire.OP_RUN, job_id, len(payload))
            if len(payload) <= STREAM_ABOVE:
                worker.transport.writelines((head, payload))
            else:
                worker.transport.write(head)
                self._tasks.start(self._stream_to(worker, payload))

    async def _stream_to(self, worker: _Worker, payload: Payload) -> None:
        """Write a large job in slices as the worker reads it (never copied whole)."""
        with memoryview(payload) as whole:
            view = whole.cast("B")
            for start in range(0, len(view), STREAM_SLICE):
                if not worker.writable.is_set():
                    await worker.writable.wait()
                if worker.transport.is_closing():
                    return
                worker.transport.write(view[start : start + STREAM_SLICE])

    # -- workers ------------------------------------------------------------------------

    async def _add_worker(self) -> None:
        assert self._spawner is not None
        self._next_wid += 1
        worker = _Worker(self._next_wid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _wire.widen(ours)
            _wire.widen(theirs)
            # A few bytes and one descriptor into a socket the computation process drains
            # between forks: it never fills unless that process is stuck.
            socket.send_fds(self._spawner, [_wire.SPAWN.pack(worker.wid)], [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise ComputationStartError(f"worker {worker.wid} not started: {exc}") from None
        finally:
            theirs.close()  # the computation process has its own copy now
        self._starting[worker.wid] = worker
        transport: asyncio.BaseTransport | None = None
        try:
            transport, _ = await asyncio.get_running_loop().create_unix_connection(
                lambda: _WorkerProtocol(self, worker), sock=ours
            )
            assert isinstance(transport, asyncio.WriteTransport)
            async with asyncio.timeout(WORKER_CONNECT_TIMEOUT):
                await worker.spawned
        except (TimeoutError, ConnectionError) as exc:
            self._starting.pop(worker.wid, None)
            worker.retired = True
            if transport is None:
                ours.close()
            else:
                transport.close()
            raise ComputationStartError(f"worker {worker.wid} did not start: {exc!r}") from None
        worker.writable.set()
        # Paused while the transport holds anything, so a large job goes to the socket
        # slice by slice, never copied into the transport's buffer.
        transport.set_write_buffer_limits(high=1, low=0)
        if worker.lost or len(self._workers) >= self.cpus or self.closing:
            # it died at once, or set_cpus() lowered the count while it was starting
            worker.retired = True
            transport.close()
            if worker.lost and not self.closing:
                raise ComputationStartError(f"worker {worker.wid} ended as it started")
            return
        worker.registered = True
        self._workers[worker.wid] = worker
        self._idle.append(worker)
        self._dispatch()

    def _worker_message(
        self,
        worker: _Worker,
        op: int,
        outcome: int,
        job_id: int,
        start: float,
        end: float,
        payload: Payload,
    ) -> None:
        if op == _wire.OP_DONE:
            if worker.job != job_id:
                return
            worker.job = None
            self._job_ended.set()
            kind: JobOutcome = "finished" if outcome == _wire.OUTCOME_FINISHED else "terminated"
            if worker.cancelling:
                # The interrupted job ended: Cancelled, with the result its handler
                # returned (a partial one), or none if the interrupt ended it.
                if kind == "finished":
                    self._on_reply(Reply(job_id, "cancelled", start, end, payload))
                else:
                    self._on_reply(local_reply(job_id, "cancelled", "Cancelled", start))
                # A cancel leaves nothing of the job behind: what it started, and a worker
                # an interrupt may have left half-way through some library's state, go; a
                # fresh worker replaces it (_worker_lost).
                if worker.pid:
                    with contextlib.suppress(OSError):
                        os.killpg(worker.pid, signal.SIGKILL)
                return
            self._on_reply(Reply(job_id, kind, start, end, payload))
            if self.closing:
                return
            if len(self._workers) > self.cpus:
                self._retire(worker)
                return
            self._idle.append(worker)
            self._dispatch()
        elif op == _wire.OP_PROVISIONAL:
            self._on_provisional(job_id, payload)
        elif op == _wire.OP_SEND_FILE:
            self._tasks.start(self._send_file(worker, job_id, payload))

    async def _send_file(self, worker: _Worker, job_id: int, payload: Payload) -> None:
        error = await self._forward_file(job_id, payload)
        answer = error.encode() if error else b""
        worker.transport.writelines(
            (_wire.TO_WORKER.pack(_wire.OP_ACK, job_id, len(answer)), answer)
        )

    async def _forward_file(self, job_id: int, payload: Payload) -> str | None:
        if self._on_send_file is None:
            return "this node cannot send files for this computation"
        head = _wire.SEND_FILE.size
        try:
            path_len, mode, mtime = _wire.SEND_FILE.unpack_from(payload)
            path = bytes(payload[head : head + path_len]).decode()
        except (ValueError, UnicodeDecodeError, struct.error):
            return "malformed file from the job"
        data = payload[head + path_len :]
        if self.max_file_size and len(data) > self.max_file_size:
            return (
                f"{path!r} is {len(data)} bytes, over this node's max_file_size "
                f"of {self.max_file_size} bytes"
            )
        return await self._on_send_file(job_id, path, mode, mtime, data)

    def set_cpus(self, cpus: int) -> None:
        """Serve ``cpus`` jobs at once from now on (start or retire workers)."""
        self.cpus = cpus
        self._tasks.start(self._resize())

    async def _resize(self) -> None:
        while len(self._workers) < self.cpus and not self.closing:
            await self._add_worker()
        while len(self._workers) > self.cpus and self._idle:
            self._retire(self._idle.pop())

    def _retire(self, worker: _Worker) -> None:
        worker.retired = True
        self._workers.pop(worker.wid, None)
        worker.transport.close()

    async def _worker_lost(self, worker: _Worker) -> None:
        self._workers.pop(worker.wid, None)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if worker.job is not None:
            job_id, start = worker.job, worker.job_start
            worker.job = None
            if worker.cancelling:
                self._on_reply(local_reply(job_id, "cancelled", "Cancelled", start))
            else:
                info: dict[str, Any] | None = None
                with contextlib.suppress(TimeoutError):
                    info = await asyncio.wait_for(
                        asyncio.shield(worker.exit_info), EXIT_STATUS_WAIT
                    )
                reason = worker.fault or describe_exit(info)
                self._on_reply(local_reply(job_id, "terminated", reason, start))
                log.warning("job %s of %s: %s", job_id, self.name, reason)
        worker.transport.close()
        if worker.retired:
            return
        alive = self._proc is not None and self._proc.returncode is None
        if not self.closing and alive and len(self._workers) < self.cpus:
            try:
                await self._add_worker()
            except ComputationStartError as exc:
                log.error("could not replace a worker of %s: %s", self.name, exc)

    async def _read_control(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while True:
                head = await stdout.readexactly(_wire.CONTROL.size)
                hlen, plen = _wire.CONTROL.unpack(head)
                event = json.loads(await stdout.readexactly(hlen))
                if plen:
                    await stdout.readexactly(plen)
                op = event.get("op")
                if op == "spawned":
                    worker = self._starting.pop(int(event["wid"]), None)
                    if worker is not None and not worker.spawned.done():
                        worker.pid = int(event["pid"])
                        self._by_pid[worker.pid] = worker
                        worker.spawned.set_result(worker.pid)
                elif op == "exited":
                    worker = self._by_pid.pop(int(event["pid"]), None)
                    if worker is not None and not worker.exit_info.done():
                        worker.exit_info.set_result(event)
                else:
                    self._control_events.put_nowait(event)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._control_events.put_nowait({"op": "eof"})
            for worker in self._starting.values():
                if not worker.spawned.done():
                    worker.spawned.set_exception(ConnectionError("the computation process ended"))
            self._starting.clear()
