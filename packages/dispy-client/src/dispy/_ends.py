"""How a job reaches the user, whoever scheduled it: results, statuses, callbacks, files.

A JobCluster hears of its jobs from its nodes (:mod:`dispy._shell`), a SharedJobCluster from
its scheduler (:mod:`dispy._shared_core`); both end jobs, post ``cluster_status`` and
``callback`` calls, read provisional results and store files sent by jobs through this mixin,
so a job ends the same way (exactly once, its callbacks in order) under either.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dispy._files import safe_local_path
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode
from dispy_core import serialize
from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.files import store_file
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import FileAck, FilePut, JobDone, clip
from dispy_core.results import iter_replies, read_reply

if TYPE_CHECKING:
    from dispy._callbacks import CallbackRunner
    from dispy._core import ClusterOptions

log = logging.getLogger("dispy")


class JobEnds:
    """Mixed into both cluster cores, which own the attributes declared here."""

    owner: Any  # the user's cluster object: told when a job ends (wait() counts them)
    callbacks: CallbackRunner
    jobs: dict[int, DispyJob]  # jobs not ended yet, by their wire id
    comp_id: int
    opts: ClusterOptions  # its callback and cluster_status

    def _finish(
        self,
        job: DispyJob,
        status: JobStatus,
        *,
        exception: str | None = None,
        node: DispyNode | None = None,
    ) -> None:
        """End ``job`` (once: a second call is ignored) and post its callbacks."""
        if job._done:
            return
        job._on_id = None
        job.status = status
        if exception is not None:
            job.exception = exception
        if job.end_time is None:
            job.end_time = time.time()
        job._payload = None
        job._mark_done()
        opts = self.opts
        if opts.cluster_status is not None:
            self.callbacks.post(opts.cluster_status, status, node, job)
        if opts.callback is not None:
            self.callbacks.post(opts.callback, job)
        self.owner._job_ended()

    def _status(self, status: int, node: DispyNode | None, job: DispyJob | None) -> None:
        post: Callable[..., Any] | None = self.opts.cluster_status
        if post is not None:
            self.callbacks.post(post, status, node, job)

    def _read_replies(
        self,
        node: DispyNode,
        msg: JobDone,
        payload: Payload,
        ignored: frozenset[int] = frozenset(),
    ) -> list[tuple[DispyJob, JobStatus]]:
        """Read the replies of one ``jobs.done`` (or ``sched.done``) into their jobs, except
        those in ``ignored`` and those already ended; the caller ends them (``_finish``),
        after its bookkeeping: a program waiting for one of them wakes then and needs the
        GIL, which the loop's thread gives up only when it waits again."""
        host, jobs = node.ip_addr, self.jobs
        ended: list[tuple[DispyJob, JobStatus]] = []
        for report, data in iter_replies(msg, payload):
            uid = report.job_id
            if uid in ignored:
                continue
            job = jobs.pop(uid, None)
            if job is None:
                continue
            status, job.result, job.stdout, job.stderr, job.exception = read_reply(
                report.outcome, data
            )
            job.start_time = report.start
            job.end_time = report.end
            job.ip_addr = host
            node.jobs_done += 1
            node.rx += report.size
            node.cpu_time += max(0.0, report.end - report.start)
            ended.append((job, status))
        return ended

    def _end_replies(
        self,
        node: DispyNode,
        msg: JobDone,
        payload: Payload,
        ignored: frozenset[int] = frozenset(),
    ) -> list[int]:
        """Read and end the jobs of one ``jobs.done`` (or ``sched.done``); returns their ids."""
        ended = self._read_replies(node, msg, payload, ignored)
        for job, status in ended:
            self._finish(job, status, node=node)
        return [job._uid for job, _ in ended]

    def _load_provisional(self, job: DispyJob, payload: Payload) -> tuple[bool, Any]:
        """``(True, result)`` of a ``jobs.provisional``, or ``(False, None)`` (logged)."""
        try:
            return True, serialize.loads(payload)
        except serialize.SerializationError as exc:
            log.warning("provisional result of job %s cannot be read here: %s", job.id, exc)
            return False, None

    def _take_provisional(self, job: DispyJob, node: DispyNode | None, result: Any) -> None:
        job.status = JobStatus.ProvisionalResult
        job.result = result
        # The callbacks get a snapshot: the final result may overwrite the job before the
        # callback thread runs.
        snapshot = copy.copy(job)
        opts = self.opts
        if opts.cluster_status is not None:
            self.callbacks.post(opts.cluster_status, JobStatus.ProvisionalResult, node, snapshot)
        if opts.callback is not None:
            self.callbacks.post(opts.callback, snapshot)

    async def _store_file(
        self, conn: Connection, msg: FilePut, payload: Payload, source: str
    ) -> None:
        """A file a job sent (``dispy_send_file``): into this process's working directory,
        acknowledged when the sender asked (``req``)."""
        error: str | None = None
        try:
            target = safe_local_path(os.getcwd(), msg.path)
            await asyncio.to_thread(store_file, target, payload, msg.mode, msg.mtime)
        except (ValueError, OSError) as exc:
            error = clip(f"client refused {msg.path!r}: {exc}")
            log.warning("file from %s: %s", source, error)
        if msg.req:
            with contextlib.suppress(ConnectionClosed):
                conn.send_nowait(FileAck(comp_id=self.comp_id, req=msg.req, error=error))
