"""A job's result on its way back: packing, jobs.done batches, reading (dispy_core.results)."""

from __future__ import annotations

import subprocess
import sys
import threading
import typing

import pytest

from dispy_core import serialize
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import MAX_IDS, JobDone, JobOutcome, JobReport
from dispy_core.results import (
    MAX_BATCH_BYTES,
    OUTCOME_STATUS,
    Reply,
    iter_replies,
    job_done_messages,
    local_reply,
    pack_reply,
    read_reply,
)

MiB = 1 << 20


def joined(data: serialize.Pickled) -> bytes:
    return data if isinstance(data, bytes) else b"".join(bytes(p) for p in data)


def test_every_outcome_on_the_wire_has_a_status():
    assert set(OUTCOME_STATUS) == set(typing.get_args(JobOutcome))
    assert OUTCOME_STATUS["finished"] is JobStatus.Finished
    assert OUTCOME_STATUS["terminated"] is JobStatus.Terminated
    assert OUTCOME_STATUS["cancelled"] is JobStatus.Cancelled
    assert OUTCOME_STATUS["abandoned"] is JobStatus.Abandoned


def test_packed_reply_reads_back_with_its_status():
    packed, data = pack_reply({"r": 1}, "out", "err", None)
    assert packed
    expected = (JobStatus.Finished, {"r": 1}, "out", "err", None)
    assert read_reply("finished", joined(data)) == expected


def test_unpicklable_result_is_not_packed_and_says_why():
    packed, data = pack_reply(threading.Lock(), "o", "e", None)
    assert not packed
    status, result, stdout, stderr, reason = read_reply("terminated", joined(data))
    assert (status, result, stdout, stderr) == (JobStatus.Terminated, None, "o", "e")
    assert reason is not None
    assert "the job's result: cannot serialize" in reason


def test_result_over_the_limit_is_not_packed_and_keeps_the_output():
    packed, data = pack_reply(bytes(2 * MiB), "printed", "", None, limit=MiB)
    assert not packed
    _status, result, stdout, _stderr, reason = read_reply("terminated", joined(data))
    assert result is None
    assert stdout == "printed"
    assert reason is not None
    assert "over the 1048576 bytes one message can carry" in reason


def test_local_reply_carries_no_result_and_the_text_as_exception():
    reply = local_reply(5, "cancelled", "Cancelled", start=10.0)
    assert (reply.job_id, reply.outcome, reply.start) == (5, "cancelled", 10.0)
    assert reply.end >= reply.start
    assert read_reply(reply.outcome, reply.payload) == (
        JobStatus.Cancelled,
        None,
        "",
        "",
        "Cancelled",
    )


def test_unreadable_reply_ends_the_job_terminated_saying_why():
    status, result, stdout, stderr, reason = read_reply("finished", b"not a pickle")
    assert (status, result, stdout, stderr) == (JobStatus.Terminated, None, "", "")
    assert reason is not None
    assert reason.startswith("the result could not be read here: ")


def decoded(reply: Reply) -> tuple[object, ...]:
    return (OUTCOME_STATUS[reply.outcome], reply.job_id * 10, f"out {reply.job_id}", "", None)


def test_replies_survive_the_trip_through_jobs_done():
    replies = []
    for job_id, outcome in enumerate(typing.get_args(JobOutcome), start=1):
        _, data = pack_reply(job_id * 10, f"out {job_id}", "", None)
        replies.append(Reply(job_id, outcome, float(job_id), job_id + 0.5, joined(data)))
    ((message, payloads),) = job_done_messages(3, replies)
    assert message.comp_id == 3
    got = [
        (report.job_id, report.start, report.end, read_reply(report.outcome, data))
        for report, data in iter_replies(message, b"".join(payloads))
    ]
    assert got == [(r.job_id, r.start, r.end, decoded(r)) for r in replies]


def test_iter_replies_gives_views_of_the_payload_in_order():
    message = JobDone(
        comp_id=1,
        jobs=[
            JobReport(job_id=1, outcome="finished", start=0.0, end=1.0, size=3),
            JobReport(job_id=2, outcome="finished", start=0.0, end=1.0, size=0),
            JobReport(job_id=3, outcome="finished", start=0.0, end=1.0, size=2),
        ],
    )
    parts = [(report.job_id, bytes(data)) for report, data in iter_replies(message, b"abcde")]
    assert parts == [(1, b"abc"), (2, b""), (3, b"de")]


def test_no_replies_no_message():
    assert job_done_messages(7, []) == []


def test_many_small_replies_split_at_max_ids():
    replies = [Reply(i, "finished", 0.0, 1.0, b"x") for i in range(MAX_IDS + 5)]
    messages = job_done_messages(7, replies)
    assert [len(message.jobs) for message, _ in messages] == [MAX_IDS, 5]
    assert [r.job_id for message, _ in messages for r in message.jobs] == list(range(MAX_IDS + 5))


def test_large_replies_split_by_size_and_an_oversized_one_goes_alone():
    replies = [Reply(i, "finished", 0.0, 1.0, bytes(20 * MiB)) for i in range(4)]
    replies.append(Reply(4, "finished", 0.0, 1.0, bytes(MAX_BATCH_BYTES + 1)))
    messages = job_done_messages(7, replies)
    assert [[r.job_id for r in message.jobs] for message, _ in messages] == [[0, 1, 2], [3], [4]]
    for message, payloads in messages:
        assert [len(p) for p in payloads] == [r.size for r in message.jobs]


def test_the_worker_can_import_it_without_pydantic():
    # The computation process imports dispy_core.results; pydantic would slow its start.
    code = "import sys, dispy_core.results; sys.exit('pydantic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("outcome", typing.get_args(JobOutcome))
def test_stored_reply_fields_are_the_reports(outcome):
    ((message, payloads),) = job_done_messages(1, [Reply(9, outcome, 1.5, 2.5, b"abc")])
    (report,) = message.jobs
    assert report.model_dump() == {
        "job_id": 9,
        "outcome": outcome,
        "start": 1.5,
        "end": 2.5,
        "size": 3,
    }
    assert payloads == [b"abc"]
