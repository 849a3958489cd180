"""How a job's reply is packed by its worker and batched by the node (large results)."""

from __future__ import annotations

import os
import threading

from dispy_core import serialize
from dispy_core.results import MAX_BATCH_BYTES, Reply, job_done_messages
from dispy_node import _wire
from dispy_node._template import pack_reply

MiB = 1 << 20


def joined(data: serialize.Pickled) -> bytes:
    return data if isinstance(data, bytes) else b"".join(bytes(p) for p in data)


def test_reply_keeps_outcome_result_and_output():
    outcome, data = pack_reply(_wire.OUTCOME_FINISHED, {"r": 1}, "out", "err", None)
    assert outcome == _wire.OUTCOME_FINISHED
    assert serialize.loads(joined(data)) == ({"r": 1}, "out", "err", None)


def test_large_result_reply_travels_out_of_band():
    blob = os.urandom(MiB)
    outcome, data = pack_reply(_wire.OUTCOME_FINISHED, blob, "", "", None)
    assert outcome == _wire.OUTCOME_FINISHED
    assert isinstance(data, list)
    assert serialize.loads(joined(data))[0] == blob


def test_result_over_the_message_limit_becomes_a_terminated_job_saying_why():
    outcome, data = pack_reply(
        _wire.OUTCOME_FINISHED, os.urandom(2 * MiB), "printed", "", None, limit=MiB
    )
    assert outcome == _wire.OUTCOME_TERMINATED
    result, stdout, _stderr, reason = serialize.loads(joined(data))
    assert result is None
    assert stdout == "printed"
    assert "over the 1048576 bytes one message can carry" in reason


def test_unpicklable_result_becomes_a_terminated_job_saying_why():
    outcome, data = pack_reply(_wire.OUTCOME_FINISHED, threading.Lock(), "o", "e", None)
    assert outcome == _wire.OUTCOME_TERMINATED
    result, stdout, stderr, reason = serialize.loads(joined(data))
    assert (result, stdout, stderr) == (None, "o", "e")
    assert "the job's result: cannot serialize" in reason


def reply(job_id: int, size: int) -> Reply:
    return Reply(job_id, "finished", 0.0, 1.0, bytes(size))


def test_small_results_share_one_jobs_done_message():
    messages = job_done_messages(7, [reply(i, 100) for i in range(50)])
    assert len(messages) == 1
    message, payloads = messages[0]
    assert [r.job_id for r in message.jobs] == list(range(50))
    assert [r.size for r in message.jobs] == [100] * 50
    assert len(payloads) == 50


def test_large_results_are_spread_over_messages_of_bounded_size():
    replies = [reply(i, 20 * MiB) for i in range(7)] + [reply(7, 3 * MAX_BATCH_BYTES)]
    messages = job_done_messages(7, replies)
    ids = [r.job_id for message, _ in messages for r in message.jobs]
    assert ids == list(range(8))  # all of them, in order
    for message, payloads in messages:
        total = sum(len(p) for p in payloads)
        assert total == sum(r.size for r in message.jobs)
        assert total <= MAX_BATCH_BYTES or len(payloads) == 1
    assert messages[-1][0].jobs[0].job_id == 7  # the oversized one goes alone


def test_no_replies_no_message():
    assert job_done_messages(7, []) == []
