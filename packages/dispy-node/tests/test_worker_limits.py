"""What a worker may announce to the daemon is capped before anything is allocated or read
(issue 9, item 8b and 8d)."""

from __future__ import annotations

from typing import Any

from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE
from dispy_core.testing import async_test
from dispy_node import _wire
from dispy_node.executor import MAX_FROM_WORKER, Computation, Reply, _Worker, _WorkerProtocol


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _computation(allocated: list[int], replies: list[Reply], max_file_size: int = 0) -> Any:
    def allocate(size: int) -> bytearray:
        allocated.append(size)
        return bytearray(size)

    return Computation(
        comp_id=1,
        name="limits",
        cpus=1,
        dest_path="/nonexistent",
        bundle=b"",
        on_reply=replies.append,
        on_provisional=lambda job_id, payload: None,
        max_file_size=max_file_size,
        allocate=allocate,
    )


def _feed(protocol: _WorkerProtocol, data: bytes) -> None:
    target = protocol.get_buffer(len(data))
    target[: len(data)] = data
    protocol.buffer_updated(len(data))


def _worker() -> _Worker:
    worker = _Worker(1)
    worker.transport = _Transport()  # type: ignore[assignment]
    return worker


@async_test()
async def test_a_worker_announcing_4_gib_is_cut_off_without_allocating():
    allocated: list[int] = []
    replies: list[Reply] = []
    comp = _computation(allocated, replies)
    worker = _worker()
    worker.job = 5
    protocol = _WorkerProtocol(comp, worker)
    head = _wire.FROM_WORKER.pack(_wire.OP_DONE, 0, 5, 1.0, 2.0, 0xFFFFFFFF)
    _feed(protocol, head + b"x" * 1000)
    assert allocated == []
    assert worker.transport.is_closing()
    assert worker.fault is not None
    assert "4294967295 bytes" in worker.fault
    # the job ends terminated, saying why
    worker.exit_info.set_result({"signal": 9})
    await comp._worker_lost(worker)
    assert [(r.job_id, r.outcome) for r in replies] == [(5, "terminated")]
    assert "stopped it" in _reason(replies[0])


@async_test()
async def test_a_reply_at_the_message_limit_is_still_received_directly():
    allocated: list[int] = []
    comp = _computation(allocated, [])
    worker = _worker()
    protocol = _WorkerProtocol(comp, worker)
    head = _wire.FROM_WORKER.pack(_wire.OP_DONE, 0, 5, 1.0, 2.0, 1 << 20)
    _feed(protocol, head)
    assert allocated == [1 << 20]
    assert not worker.transport.is_closing()
    assert MAX_FROM_WORKER > DEFAULT_MAX_MESSAGE  # a whole-message reply fits


@async_test()
async def test_a_file_over_max_file_size_is_refused_from_its_header():
    allocated: list[int] = []
    comp = _computation(allocated, [], max_file_size=1 << 20)
    worker = _worker()
    protocol = _WorkerProtocol(comp, worker)
    head = _wire.FROM_WORKER.pack(_wire.OP_SEND_FILE, 0, 5, 1.0, 2.0, 200 << 20)
    _feed(protocol, head + b"\0" * 100)
    assert allocated == []
    assert worker.transport.is_closing()
    assert worker.fault is not None
    assert "max_file_size" in worker.fault


def _reason(reply: Reply) -> str:
    from dispy_core import serialize

    _result, _out, _err, reason = serialize.loads(reply.payload)
    assert isinstance(reason, str)
    return reason
