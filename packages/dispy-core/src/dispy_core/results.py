"""A job's result on its way back: packed by its worker, carried in ``jobs.done``, read.

One job's *reply* is the pickled tuple ``(result, stdout, stderr, exception)`` plus a
report (job id, outcome, start, end). The node packs it in the worker (:func:`pack_reply`)
or makes it itself for a job that never ran to its end (:func:`local_reply`: cancelled,
crashed, refused); it sends replies as ``jobs.done`` messages within the peer's bounds
(:func:`job_done_messages`), or keeps them in its result store
(:mod:`dispy_core.result_store`) when nobody can take them. A receiver (the client, its
recovery, later the scheduler) walks a ``jobs.done`` (:func:`iter_replies`) and reads each
payload (:func:`read_reply`) into a :class:`~dispy_core.protocol.jobs.JobStatus` through the
one map from the wire's outcomes (:data:`OUTCOME_STATUS`). PROTOCOL.md sections 7.2 and 9
describe the bytes.

This module is imported by the worker process, which does not load pydantic (it would
slow every computation's start): the message classes are imported where a message is made.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispy_core import serialize
from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE, Buffer, Payload, nbytes
from dispy_core.protocol.jobs import JobStatus

if TYPE_CHECKING:
    from dispy_core.protocol.messages import JobDone, JobOutcome, JobReport

# Results per jobs.done message (one larger result goes alone), so none nears the peer's
# message limit and each is acknowledged soon.
MAX_BATCH_BYTES = 64 << 20

# The wire's outcome of a job -> the status a job ends with.
OUTCOME_STATUS: dict[JobOutcome, JobStatus] = {
    "finished": JobStatus.Finished,
    "terminated": JobStatus.Terminated,
    "cancelled": JobStatus.Cancelled,
    "abandoned": JobStatus.Abandoned,
}

# What a receiver reads from one reply: (status, result, stdout, stderr, exception).
# stdout and stderr: str from a Python function, bytes from a program (as 4.15 gave them)
ReadReply = tuple[JobStatus, Any, "str | bytes", "str | bytes", "str | None"]


@dataclass(slots=True)
class Reply:
    """One job's end as it goes back to the client: its report and its pickled payload."""

    job_id: int
    outcome: JobOutcome
    start: float
    end: float
    payload: Payload


def local_reply(job_id: int, outcome: JobOutcome, text: str | None, start: float) -> Reply:
    """A reply the node makes itself (cancel, crash, a refused job or file): no result,
    ``text`` as the exception, ending now."""
    payload = serialize.dumps_plain((None, "", "", text))
    return Reply(job_id, outcome, start, time.time(), payload)


def pack_reply(
    result: Any,
    stdout: str,
    stderr: str,
    exception: str | None,
    limit: int = DEFAULT_MAX_MESSAGE,
) -> tuple[bool, serialize.Pickled]:
    """A job's reply, pickled (a large result out of band).

    Returns:
        ``(True, data)``; or ``(False, data)`` when the result cannot be pickled or is larger
        than ``limit`` (one message): then ``data`` holds no result, the output, and the
        reason as exception, and the job is to end terminated.
    """
    try:
        data = serialize.dumps((result, stdout, stderr, exception), plain_first=True)
    except serialize.SerializationError as exc:
        return False, serialize.dumps_plain((None, stdout, stderr, f"the job's result: {exc}"))
    size = nbytes(data)
    if size > limit:
        reason = (
            f"the job's result is {size} bytes pickled, over the {limit} bytes one message "
            "can carry"
        )
        return False, serialize.dumps_plain((None, stdout, stderr, reason))
    return True, data


@functools.cache
def _done_classes() -> tuple[type[JobDone], type[JobReport], int]:
    # Imported on first use, not at the top: see the module's docstring (the worker imports
    # this module); cached, since an import statement costs about a microsecond per job.
    from dispy_core.protocol.messages import MAX_IDS, JobDone, JobReport

    return JobDone, JobReport, MAX_IDS


def job_done_messages(comp_id: int, replies: list[Reply]) -> list[tuple[JobDone, list[Payload]]]:
    """``jobs.done`` messages for ``replies``, in order, each carrying at most
    :data:`MAX_BATCH_BYTES` of results (a larger result goes alone) and ``MAX_IDS`` jobs."""
    JobDone, JobReport, MAX_IDS = _done_classes()
    if len(replies) == 1:  # one job's result, as it ends: no batching to do
        r = replies[0]
        report = JobReport(
            job_id=r.job_id, outcome=r.outcome, start=r.start, end=r.end, size=len(r.payload)
        )
        return [(JobDone(comp_id=comp_id, jobs=[report]), [r.payload])]
    batches: list[list[Reply]] = []
    size = 0
    for reply in replies:
        if not batches or (
            batches[-1]
            and (size + len(reply.payload) > MAX_BATCH_BYTES or len(batches[-1]) >= MAX_IDS)
        ):
            batches.append([])
            size = 0
        batches[-1].append(reply)
        size += len(reply.payload)
    return [
        (
            JobDone(
                comp_id=comp_id,
                jobs=[
                    JobReport(
                        job_id=r.job_id,
                        outcome=r.outcome,
                        start=r.start,
                        end=r.end,
                        size=len(r.payload),
                    )
                    for r in batch
                ],
            ),
            [r.payload for r in batch],
        )
        for batch in batches
    ]


def iter_replies(msg: JobDone, payload: Buffer) -> Iterator[tuple[JobReport, memoryview]]:
    """Each job's report in a received ``jobs.done`` with its part of the payload (a view,
    valid as long as ``payload``)."""
    view = memoryview(payload)
    offset = 0
    for report in msg.jobs:
        yield report, view[offset : offset + report.size]
        offset += report.size


def read_reply(outcome: JobOutcome, data: Buffer) -> ReadReply:
    """One reply's ``(status, result, stdout, stderr, exception)``.

    A payload that cannot be unpickled here (a class this process lacks, say) ends the job
    Terminated, saying why, rather than failing whoever reads it.
    """
    try:
        result, stdout, stderr, exception = serialize.loads(data)
    except serialize.SerializationError as exc:
        return (
            JobStatus.Terminated,
            None,
            "",
            "",
            f"the result could not be read here: {exc}",
        )
    return OUTCOME_STATUS[outcome], result, stdout, stderr, exception


__all__ = [
    "MAX_BATCH_BYTES",
    "OUTCOME_STATUS",
    "ReadReply",
    "Reply",
    "iter_replies",
    "job_done_messages",
    "local_reply",
    "pack_reply",
    "read_reply",
]
