"""The recover file, and ``recover_jobs`` that reads it after a client crash.

The recover file is a JSON-lines log, appended (one write per batch, not per job) by the
cluster's loop thread:

* a header: computation id, name, secret, TLS files, node port;
* ``{"c": [[uid, id], ...]}`` jobs submitted; ``{"s": [host, port], "j": [uid, ...]}`` jobs
  sent to that node; ``{"d": [uid, ...]}`` jobs whose result the client has.

``id`` is the job's user id when it is JSON (int, str, ...), else its ``repr``. The file
holds the cluster's secret, so it is created with mode 0600. A cleanly closed cluster
removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from dispy.jobs import DispyJob
from dispy_core import serialize
from dispy_core.aio.connection import ConnectionClosed, open_connection
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationClosed,
    JobAck,
    JobCancel,
    JobDone,
    RecoverRequest,
    RecoverStatus,
)
from dispy_core.security import TLSConfig

log = logging.getLogger("dispy")

FORMAT = "dispy-recover-1"

OUTCOMES = {
    "finished": JobStatus.Finished,
    "terminated": JobStatus.Terminated,
    "cancelled": JobStatus.Cancelled,
    "abandoned": JobStatus.Abandoned,
}


def default_recover_file() -> str:
    base = time.strftime("_dispy_%Y%m%d%H%M%S")
    path = base
    n = 0
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _json_id(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return repr(value)


class RecoveryLog:
    """Appends what ``recover_jobs`` needs; every method is cheap and never raises."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh = os.fdopen(fd, "w", buffering=1 << 16)
        self._write({"format": FORMAT, **header})
        self._fh.flush()
        self._broken = False

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")

    def created(self, jobs: list[DispyJob]) -> None:
        self._guarded({"c": [[j._uid, _json_id(j.id)] for j in jobs]})

    def sent(self, node: tuple[str, int], jobs: list[DispyJob]) -> None:
        self._guarded(
            {"s": list(node), "j": [j._uid for j in jobs], "i": [_json_id(j.id) for j in jobs]}
        )

    def done(self, uids: list[int]) -> None:
        self._guarded({"d": uids})

    def _guarded(self, record: dict[str, Any]) -> None:
        if self._broken:
            return
        try:
            self._write(record)
            self._fh.flush()
        except (OSError, ValueError) as exc:
            self._broken = True
            log.warning("recover file %s can no longer be written: %s", self.path, exc)

    def close(self, remove: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()
        if remove:
            with contextlib.suppress(OSError):
                os.remove(self.path)


class _Plan:
    """What the recover file says about each job."""

    def __init__(self, path: str) -> None:
        try:
            with open(path) as fh:
                lines = [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(f"recover file {path!r} does not exist") from None
        except ValueError as exc:
            raise ValueError(f"recover file {path!r} is damaged: {exc}") from None
        if not lines or lines[0].get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a dispy recover file")
        self.header = lines[0]
        self.ids: dict[int, Any] = {}
        self.where: dict[int, tuple[str, int]] = {}
        self.done: set[int] = set()
        for record in lines[1:]:
            if "c" in record:
                for uid, ident in record["c"]:
                    self.ids[uid] = ident
            elif "s" in record:
                node = (str(record["s"][0]), int(record["s"][1]))
                for uid in record["j"]:
                    self.where[uid] = node
                for uid, ident in zip(record["j"], record.get("i", []), strict=False):
                    if ident is not None:
                        self.ids[uid] = ident
            elif "d" in record:
                self.done.update(record["d"])

    def outstanding(self) -> dict[tuple[str, int], list[int]]:
        out: dict[tuple[str, int], list[int]] = {}
        for uid, node in self.where.items():
            if uid not in self.done:
                out.setdefault(node, []).append(uid)
        return out


def recover_jobs(
    recover_file: str, timeout: float | None = None, terminate_pending: bool = False
) -> list[DispyJob]:
    """Collect the jobs of a client that stopped, from the nodes that ran them.

    Args:
        recover_file: the cluster's recover file (``recover_file`` of JobCluster, by default
            ``_dispy_YYYYMMDDHHMMSS`` in the directory it ran in).
        timeout: seconds to wait for jobs still running (None: until all are done).
        terminate_pending: cancel the jobs that are not done when ``timeout`` passes.

    Returns:
        One DispyJob per job the client had submitted and not yet received: with its result
        (or exception) when the node had it; still ``Running`` if it did not finish within
        ``timeout``; ``Abandoned`` (with the reason in ``exception``) if it never reached a
        node or the node no longer knows it. Nodes are released once nothing is left to wait
        for.
    """
    plan = _Plan(recover_file)
    jobs = asyncio.run(_recover(plan, timeout, terminate_pending))
    if all(j.status != JobStatus.Running for j in jobs):
        with contextlib.suppress(OSError):
            os.remove(recover_file)
    return jobs


async def _recover(plan: _Plan, timeout: float | None, terminate: bool) -> list[DispyJob]:
    header = plan.header
    jobs: dict[int, DispyJob] = {}
    for uid in sorted(set(plan.ids) | set(plan.where)):
        if uid in plan.done:
            continue
        job = DispyJob(uid, (), {})
        job.id = plan.ids.get(uid, uid)
        if uid not in plan.where:
            job.status = JobStatus.Abandoned
            job.exception = "the client stopped before this job reached a node"
            job._mark_done()
        else:
            job.status = JobStatus.Running
            job.ip_addr = plan.where[uid][0]
        jobs[uid] = job
    tls = TLSConfig(header.get("certfile"), header.get("keyfile"))
    deadline = None if timeout is None else time.monotonic() + timeout
    await asyncio.gather(
        *(
            _recover_node(header, tls, node, uids, jobs, deadline, terminate)
            for node, uids in plan.outstanding().items()
        )
    )
    return [jobs[uid] for uid in sorted(jobs)]


async def _recover_node(
    header: dict[str, Any],
    tls: TLSConfig,
    node: tuple[str, int],
    uids: list[int],
    jobs: dict[int, DispyJob],
    deadline: float | None,
    terminate: bool,
) -> None:
    comp_id = int(header["comp_id"])
    msg_timeout = float(header.get("msg_timeout", 5.0))
    wanted = set(uids)
    where = f"{node[0]}:{node[1]}"

    def abandon(uid: int, reason: str) -> None:
        job = jobs[uid]
        job.status = JobStatus.Abandoned
        job.exception = reason
        job._mark_done()

    try:
        conn = await open_connection(
            node[0],
            node[1],
            secret=header.get("secret", ""),
            role="recover",
            name=str(header.get("name", "recover")),
            timeout=msg_timeout,
            ssl_context=tls.client,
        )
    except (OSError, TimeoutError, ConnectionClosed, ProtocolError) as exc:
        log.warning("recover: cannot reach node %s: %s", where, exc or type(exc).__name__)
        return
    try:
        await conn.send(RecoverRequest(comp_id=comp_id))
        async with asyncio.timeout(msg_timeout):
            status, _ = await conn.recv()
        if not isinstance(status, RecoverStatus):
            raise ProtocolError(f"unexpected {status.type}")
        pending = set(status.pending) & wanted
        expected = status.stored
        received = 0
        while wanted:
            if not pending and received >= expected:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    msg, payload = await conn.recv()
            except TimeoutError:
                break
            if not isinstance(msg, JobDone):
                continue
            _apply(msg, payload, jobs, node, wanted)
            received += len(msg.jobs)
            for report in msg.jobs:
                pending.discard(report.job_id)
            await conn.send(JobAck(comp_id=comp_id, job_ids=[r.job_id for r in msg.jobs]))
        if pending and terminate:
            await conn.send(JobCancel(comp_id=comp_id, job_ids=sorted(pending)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(msg_timeout * 2):
                    while pending:
                        msg, payload = await conn.recv()
                        if isinstance(msg, JobDone):
                            _apply(msg, payload, jobs, node, wanted)
                            for report in msg.jobs:
                                pending.discard(report.job_id)
                            await conn.send(
                                JobAck(comp_id=comp_id, job_ids=[r.job_id for r in msg.jobs])
                            )
        for uid in sorted(wanted):
            if uid not in pending:
                abandon(uid, f"node {where} does not have this job (was it restarted?)")
        if not pending:
            await conn.send(CloseComputation(comp_id=comp_id, terminate=True))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(msg_timeout):
                    while True:
                        msg, _ = await conn.recv()
                        if isinstance(msg, ComputationClosed):
                            break
    except (ConnectionClosed, ProtocolError) as exc:
        log.warning("recover: node %s: %s", where, exc)
    finally:
        await conn.close()


def _apply(
    msg: JobDone,
    payload: bytes,
    jobs: dict[int, DispyJob],
    node: tuple[str, int],
    wanted: set[int],
) -> None:
    view = memoryview(payload)
    offset = 0
    for report in msg.jobs:
        data = view[offset : offset + report.size]
        offset += report.size
        job = jobs.get(report.job_id)
        if job is None or report.job_id not in wanted:
            continue
        wanted.discard(report.job_id)
        try:
            result, stdout, stderr, exc_text = serialize.loads(data)
            status = OUTCOMES[report.outcome]
        except serialize.SerializationError as exc:
            result, stdout, stderr = None, "", ""
            exc_text = f"the result could not be read here: {exc}"
            status = JobStatus.Terminated
        job.result, job.stdout, job.stderr, job.exception = result, stdout, stderr, exc_text
        job.start_time, job.end_time = report.start, report.end
        job.ip_addr = node[0]
        job.status = status
        job._mark_done()


__all__ = ["RecoveryLog", "recover_jobs"]
