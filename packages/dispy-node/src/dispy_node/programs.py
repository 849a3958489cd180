"""Program computations: each job runs the program once, as a subprocess of the daemon.

The program is either a file the client sent (it lands in the computation's directory and
is made executable; ``.py`` files run with this node's Python) or a command the node already
has. Job arguments are strings, sent as a JSON list, so the daemon never unpickles anything.
A job's result is the program's exit status (negative: killed by that signal). Cancel kills
the program's whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dispy_core import serialize
from dispy_core.aio.tasks import TaskOwner
from dispy_core.paths import safe_join
from dispy_core.protocol.framing import Payload
from dispy_core.results import Reply, local_reply
from dispy_core.secret import without_secrets
from dispy_node._output import DEFAULT_MAX_OUTPUT, Tail, finish
from dispy_node.executor import ComputationStartError

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16


class ProgramComputation:
    """Runs up to ``cpus`` instances of a program at once; same interface as Computation."""

    def __init__(
        self,
        *,
        comp_id: int,
        name: str,
        cpus: int,
        dest_path: str,
        spec: Payload,
        on_reply: Callable[[Reply], None],
        on_started: Callable[[int], None] = lambda job_id: None,
        may_start: Callable[[], bool] = lambda: True,
        cleanup_files: bool = True,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self.comp_id = comp_id
        self.name = name
        self.cpus = cpus
        self.dest_path = dest_path
        self.cleanup_files = cleanup_files
        self.max_output = max_output
        self._spec = spec
        self._on_reply = on_reply
        self._on_started = on_started
        self._may_start = may_start
        self.held = False  # queued jobs waiting for may_start()
        self._notify: set[int] = set()
        self._argv: list[str] = []
        # Jobs run with the node's environment minus the secret (DISPY_SECRET and kin).
        self._env = without_secrets()
        self._queue: deque[tuple[int, Payload]] = deque()
        self.queued_bytes = 0  # arguments of the queued jobs
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._cancelled: set[int] = set()
        self._tasks = TaskOwner(f"program {name}", log=log)  # one per running job
        self._job_ended = asyncio.Event()
        self.closing = False

    @property
    def running(self) -> int:
        return len(self._procs)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        try:
            spec = json.loads(bytes(self._spec))
            program = str(spec["program"])
            transferred = bool(spec.get("transferred"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ComputationStartError(f"malformed program specification: {exc}") from None
        if not program or "\0" in program:
            # No exec() could run it: refuse it here, once, rather than fail every job.
            raise ComputationStartError(f"program name {program!r} is empty or holds a NUL")
        if transferred:
            path = safe_join(self.dest_path, program)
            if not await asyncio.to_thread(_make_executable, path):
                raise ComputationStartError(f"program {program!r} did not arrive")
            self._argv = [sys.executable, path] if path.endswith(".py") else [path]
        else:
            self._argv = [program]

    def submit(self, job_id: int, payload: Payload, notify: bool = False) -> None:
        if notify:
            self._notify.add(job_id)
        self._queue.append((job_id, payload))
        self.queued_bytes += len(payload)
        self._dispatch()

    def set_cpus(self, cpus: int) -> None:
        self.cpus = cpus
        self._dispatch()

    def kick(self) -> None:
        """Try again to start queued jobs (after may_start() said no)."""
        self._dispatch()

    def _dispatch(self) -> None:
        if self._queue and len(self._tasks) < self.cpus and not self._may_start():
            self.held = True
            return
        while self._queue and len(self._tasks) < self.cpus and not self.closing:
            job_id, payload = self._queue.popleft()
            self.queued_bytes -= len(payload)
            if job_id in self._notify:
                self._notify.discard(job_id)
                self._on_started(job_id)
            task = self._tasks.start(
                self._run(job_id, payload),
                name=f"job {job_id}",
                on_error=functools.partial(self._job_failed, job_id),
            )
            # Runs after the owner's callback, so the job no longer counts as running.
            task.add_done_callback(self._task_done)

    def _job_failed(self, job_id: int, exc: BaseException) -> None:
        # A bug: say so once, and end the job rather than leave the client waiting.
        log.error("program job %d failed: %s", job_id, exc, exc_info=exc)
        self._procs.pop(job_id, None)
        reason = f"the node failed to run the job: {type(exc).__name__}: {exc}"
        self._on_reply(local_reply(job_id, "terminated", reason, time.time()))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._job_ended.set()
        self._dispatch()

    async def _run(self, job_id: int, payload: Payload) -> None:
        start = time.time()
        try:
            args = json.loads(bytes(payload))
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError("program arguments must be strings")
            if any("\0" in a for a in args):
                raise ValueError("a program argument holds a NUL")
        except ValueError as exc:
            self._on_reply(local_reply(job_id, "terminated", f"bad arguments: {exc}", start))
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.dest_path,
                env=self._env,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            self._on_reply(
                local_reply(job_id, "terminated", f"cannot run {self._argv[0]}: {exc}", start)
            )
            return
        self._procs[job_id] = proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            out, err = await asyncio.gather(
                _read_tail(proc.stdout, self.max_output), _read_tail(proc.stderr, self.max_output)
            )
            await proc.wait()
        finally:
            self._procs.pop(job_id, None)
        end = time.time()
        # A program's output need not be text: it goes back as bytes, as 4.15 gave it
        # (surrogateescape round-trips every byte through the cut notices added as text).
        text_out, text_err = finish(
            out.value().decode(errors="surrogateescape"),
            out.dropped,
            err.value().decode(errors="surrogateescape"),
            err.dropped,
            self.max_output,
        )
        stdout = text_out.encode(errors="surrogateescape")
        stderr = text_err.encode(errors="surrogateescape")
        if out.dropped or err.dropped:
            log.warning(
                "job %s of %s: output over max_job_output (%d bytes) truncated",
                job_id,
                self.name,
                self.max_output,
            )
        if job_id in self._cancelled:
            self._cancelled.discard(job_id)
            reply: Any = (None, stdout, stderr, "Cancelled")
            self._on_reply(Reply(job_id, "cancelled", start, end, serialize.dumps_plain(reply)))
            return
        reply = (proc.returncode, stdout, stderr, None)
        self._on_reply(Reply(job_id, "finished", start, end, serialize.dumps_plain(reply)))

    def pending_ids(self) -> list[int]:
        """Jobs queued or running here."""
        return [job_id for job_id, _ in self._queue] + list(self._procs)

    def cancel(self, job_id: int) -> bool:
        for i, (queued, payload) in enumerate(self._queue):
            if queued == job_id:
                del self._queue[i]
                self.queued_bytes -= len(payload)
                self._on_reply(local_reply(job_id, "cancelled", None, time.time()))
                return True
        proc = self._procs.get(job_id)
        if proc is None:
            return False
        self._cancelled.add(job_id)
        _kill_group(proc.pid)
        return True

    async def close(self, *, terminate: bool = True) -> str | None:
        if not terminate:
            while self._queue or self._tasks:
                self._job_ended.clear()
                await self._job_ended.wait()
        self.closing = True
        for job_id, _ in list(self._queue):
            self._on_reply(local_reply(job_id, "cancelled", "Cancelled", time.time()))
        self._queue.clear()
        self.queued_bytes = 0
        for job_id, proc in list(self._procs.items()):
            self._cancelled.add(job_id)
            _kill_group(proc.pid)
        await self._tasks.close(grace=10)
        return None


def _make_executable(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


async def _read_tail(stream: asyncio.StreamReader, limit: int) -> Tail[bytes]:
    """Read ``stream`` to its end, keeping its last ``limit`` bytes."""
    tail: Tail[bytes] = Tail(limit, b"")
    while chunk := await stream.read(READ_SIZE):
        tail.add(chunk)
    return tail
