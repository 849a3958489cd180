"""Rate limits (dispy_core.ratelimit) and the cap on unauthenticated connections
(dispy_core.aio.admission)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.tasks import TaskOwner
from dispy_core.ratelimit import KeyedLimiter, Once, TokenBucket
from dispy_core.testing import async_test


def test_token_bucket_burst_then_rate():
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.ready_in(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_keyed_limiter_is_per_key_and_bounded():
    limiter = KeyedLimiter(rate=1.0, burst=1, max_keys=3)
    assert limiter.take("a", 0.0)
    assert not limiter.take("a", 0.0)
    assert limiter.take("b", 0.0)
    for key in "cdef":
        limiter.take(key, 0.0)
    assert len(limiter) == 3


def test_once_per_key_and_in_all():
    once = Once(interval=60.0, max_keys=100, burst=3)
    assert once("a", 0.0)
    assert not once("a", 30.0)
    assert once("a", 61.0)
    assert once("b", 61.0)
    assert once("c", 61.0)
    assert not once("d", 61.0)  # a fourth within the minute, in all


def test_admission_caps_per_source_and_in_total():
    admission = Admission(per_source=2, total=3)
    assert admission.enter("10.0.0.1")
    assert admission.enter("10.0.0.1")
    assert not admission.enter("10.0.0.1")
    assert admission.enter("10.0.0.2")
    assert not admission.enter("10.0.0.3")  # total reached
    assert admission.pending == 3
    admission.leave("10.0.0.1")
    assert admission.enter("10.0.0.3")
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        admission.leave(source)
    assert admission.pending == 0
    assert admission._by_source == {}
    with pytest.raises(RuntimeError):
        admission.leave("10.0.0.1")


def test_admission_rejects_bad_limits():
    with pytest.raises(ValueError, match="per_source"):
        Admission(per_source=4, total=2)


class _FakeTransport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


class _FakeWriter:
    def __init__(self, host: str) -> None:
        self.transport = _FakeTransport()
        self._peer = (host, 40000)

    def get_extra_info(self, name: str) -> object:
        return self._peer if name == "peername" else None


def test_slot_closes_excess_connection_at_once_and_releases_on_exit():
    admission = Admission(per_source=1, total=8)
    first = _FakeWriter("127.0.0.2")
    with admission.slot(first) as admitted:  # type: ignore[arg-type]
        assert admitted
        assert admission.pending == 1
        second = _FakeWriter("127.0.0.2")
        with admission.slot(second) as admitted_too:  # type: ignore[arg-type]
            assert not admitted_too
        assert second.transport.aborted
        assert admission.pending == 1
    assert not first.transport.aborted
    assert admission.pending == 0
    with pytest.raises(KeyError), admission.slot(first):  # type: ignore[arg-type]
        raise KeyError("handshake failed")
    assert admission.pending == 0


def _churn(admission: Admission, source: str, now: float) -> bool:
    admitted = admission.enter(source, now)
    if admitted:
        admission.leave(source)  # the connection ended at once
    return admitted


def test_admission_limits_the_rate_of_new_connections_per_source():
    # Each handshake costs the acceptor a SPAKE2 computation: open-and-close loops from
    # one source must not keep it computing.
    admission = Admission(rate_per_source=2.0, burst_per_source=3)
    assert [_churn(admission, "10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert _churn(admission, "10.0.0.1", 0.5)  # 2 a second after the burst
    assert not _churn(admission, "10.0.0.1", 0.5)
    assert _churn(admission, "10.0.0.2", 0.5)  # another source has its own bucket
    assert admission.pending == 0


def test_admission_limits_the_rate_of_new_connections_in_all():
    admission = Admission(rate_total=2.0, burst_total=3)
    assert [_churn(admission, f"10.0.0.{i}", 0.0) for i in range(4)] == [True, True, True, False]
    assert _churn(admission, "10.0.1.1", 0.5)
    assert not _churn(admission, "10.0.1.2", 0.5)
    assert admission.pending == 0


@async_test(timeout=10)
async def test_closing_the_owner_ends_handshakes_in_flight_without_a_pending_task(caplog):
    # asyncio.start_server ran each connection in a task nobody held: a server closed while a
    # peer was mid-handshake left it pending ("Task was destroyed but it is pending!").
    admission = Admission()
    tasks = TaskOwner("acceptor")
    arrived = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.set()  # the test wakes once this task waits for the peer's Hello
        await admission.accept(
            reader, writer, logger=logging.getLogger("acceptor"),
            secret="s", role="client", name="c", timeout=30.0,
        )  # fmt: skip

    server = await start_server(
        accept, tasks=tasks, host="127.0.0.1", port=0, ssl_context=None, handshake_timeout=30.0
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing
    await arrived.wait()
    assert admission.pending == 1  # in the handshake
    assert len(tasks) == 1
    with caplog.at_level(logging.DEBUG):
        server.close()
        await tasks.close()
        await server.wait_closed()
    assert len(tasks) == 0
    assert admission.pending == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # the acceptor hung up
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    writer.close()

    # A connection arriving once the owner is closed is dropped, not left to a dead owner.
    server = await start_server(
        accept, tasks=tasks, host="127.0.0.1", port=0, ssl_context=None, handshake_timeout=30.0
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    assert asyncio.all_tasks() == {asyncio.current_task()}
    writer.close()
    server.close()
