"""serve_recover: a recover connection to the scheduler, with a fake live computation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from dispy_core import serialize
from dispy_core.aio.connection import Connection, PeerRefused
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationClosed,
    JobAck,
    JobCancel,
    JobDone,
    JobReport,
    RecoverRequest,
    RecoverStatus,
)
from dispy_core.results import iter_replies
from dispy_core.testing import async_test, memory_connection_pair
from dispy_scheduler.store import ComputationStore, LiveComputation, Store, serve_recover

SECRET = "cluster-secret"


def _results(
    *pairs: tuple[int, object], outcome: str = "finished"
) -> tuple[list[JobReport], bytes]:
    replies = [(job_id, bytes(serialize.dumps((v, "", "", None)))) for job_id, v in pairs]
    reports = [
        JobReport(job_id=j, outcome=outcome, start=1.0, end=2.0, size=len(d))  # type: ignore[arg-type]
        for j, d in replies
    ]
    return reports, b"".join(d for _, d in replies)


class FakeLive:
    """What the service would say of a computation it still runs."""

    def __init__(self, cs: ComputationStore, pending: list[int], connected: bool = False):
        self.cs = cs
        self._pending = list(pending)
        self.client_connected = connected
        self.cancelled: list[int] = []
        self.closed: list[bool] = []

    def pending(self) -> list[int]:
        return list(self._pending)

    def finish(self, job_id: int, value: object, outcome: str = "finished") -> None:
        self._pending.remove(job_id)
        self.cs.store(*_results((job_id, value), outcome=outcome))

    def cancel(self, job_ids: Sequence[int]) -> None:
        self.cancelled.extend(job_ids)
        for job_id in job_ids:
            self._pending.remove(job_id)
        self.cs.store(*_results(*((j, None) for j in job_ids), outcome="cancelled"))

    def close(self, terminate: bool) -> None:
        self.closed.append(terminate)


async def _values(conn: Connection) -> dict[int, object]:
    async with asyncio.timeout(5):
        msg, payload = await conn.recv()
    assert isinstance(msg, JobDone), msg
    out = {r.job_id: serialize.loads(bytes(d))[0] for r, d in iter_replies(msg, payload)}
    await conn.send(JobAck(comp_id=msg.comp_id, job_ids=list(out)))
    return out


async def _status(conn: Connection, sched_id: int) -> RecoverStatus:
    await conn.send(RecoverRequest(comp_id=sched_id))
    async with asyncio.timeout(5):
        msg, _ = await conn.recv()
    assert isinstance(msg, RecoverStatus), msg
    return msg


async def _close(conn: Connection, sched_id: int) -> None:
    await conn.send(CloseComputation(comp_id=sched_id, terminate=True))
    async with asyncio.timeout(5):
        msg, _ = await conn.recv()
    assert isinstance(msg, ComputationClosed)
    assert msg.comp_id == sched_id


def _pair():  # type: ignore[no-untyped-def]
    return memory_connection_pair(SECRET, role_a="recover", role_b="scheduler")


@async_test(timeout=20)
async def test_stored_results_are_delivered_forgotten_on_ack_and_closed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cs = store.open(77, 5, "c", "function", "me")
    cs.store(*_results((1, "one"), (2, "two")))
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None))
        status = await _status(client, 77)
        assert (status.known, status.pending, status.stored) == (True, [], 2)
        assert await _values(client) == {1: "one", 2: "two"}
        await asyncio.sleep(0.05)
        assert cs.count() == 0  # forgotten once acknowledged
        await _close(client, 77)
        await served
    assert store.get(77) is None
    assert not (tmp_path / "77").exists()


@async_test(timeout=20)
async def test_a_broken_connection_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cs = store.open(8, 5, "c", "function", "me")
    cs.store(*_results((1, "one")))
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None))
        status = await _status(client, 8)
        assert status.stored == 1
        async with asyncio.timeout(5):
            await client.recv()  # the result, not acknowledged
        await client.close()
        await served
    assert [r.job_id for r, _ in Store(tmp_path).get(8).stored()] == [1]  # type: ignore[union-attr]
    assert not store.recovering


@async_test(timeout=20)
async def test_a_live_computation_forwards_later_results_and_cancels(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cs = store.open(9, 5, "c", "function", "me")
    cs.store(*_results((1, "early")))
    live = FakeLive(cs, pending=[2, 3, 4])

    def lookup(sched_id: int) -> LiveComputation | None:
        return live if sched_id == 9 else None

    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lookup))
        status = await _status(client, 9)
        assert (status.known, status.pending, status.stored) == (True, [2, 3, 4], 1)
        assert await _values(client) == {1: "early"}
        live.finish(2, "later")
        assert await _values(client) == {2: "later"}
        await client.send(JobCancel(comp_id=9, job_ids=[3, 4]))
        assert await _values(client) == {3: None, 4: None}
        assert live.cancelled == [3, 4]
        await _close(client, 9)
        await served
    assert live.closed == [True]
    await asyncio.sleep(0)
    assert cs.count() == 0  # all acknowledged; the service removes the record when it ends


@async_test(timeout=20)
async def test_refused_while_the_client_is_connected_or_another_recovers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cs = store.open(10, 5, "c", "function", "me")
    connected = FakeLive(cs, pending=[1], connected=True)
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: connected))
        await client.send(RecoverRequest(comp_id=10))
        with pytest.raises(PeerRefused, match="client is still connected"):
            async with asyncio.timeout(5):
                await client.recv()
        await served
    store.recovering.add(10)
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None))
        await client.send(RecoverRequest(comp_id=10))
        with pytest.raises(PeerRefused, match="being recovered by another connection"):
            async with asyncio.timeout(5):
                await client.recv()
        await served


@async_test(timeout=20)
async def test_an_unknown_computation_is_said_so(tmp_path: Path) -> None:
    store = Store(tmp_path)
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None))
        status = await _status(client, 12345)
        assert (status.known, status.pending, status.stored) == (False, [], 0)
        await _close(client, 12345)
        await served


@async_test(timeout=20)
async def test_waits_while_the_nodes_are_asked_and_reports_their_pending_jobs(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    cs = store.open(13, 5, "c", "function", "me")
    cs.asking = asyncio.Event()
    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None))
        await client.send(RecoverRequest(comp_id=13))
        await asyncio.sleep(0.1)
        # recover_from_nodes: the node answered, one result in and one job still running
        cs.node_pending = {2}
        cs.store(*_results((1, "from the node")))
        cs.asking.set()
        async with asyncio.timeout(5):
            status, _ = await client.recv()
        assert isinstance(status, RecoverStatus)
        assert (status.pending, status.stored) == ([2], 1)
        assert await _values(client) == {1: "from the node"}
        cs.node_pending.discard(2)
        cs.store(*_results((2, "the last")))
        assert await _values(client) == {2: "the last"}
        await _close(client, 13)
        await served
    assert store.get(13) is None


@async_test(timeout=20)
async def test_a_node_not_asked_yet_is_asked_again_and_refused_while_unreachable(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    cs = store.open(78, 5, "c", "function", "me")
    cs.store(*_results((1, "one")))
    cs.unasked.add(("127.0.0.1", 9))  # down when the scheduler restarted
    asked: list[list[tuple[str, int]]] = []

    async def still_down(record: ComputationStore) -> None:
        asked.append(sorted(record.unasked))

    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None, still_down))
        await client.send(RecoverRequest(comp_id=78))
        with pytest.raises(PeerRefused, match=r"node 127\.0\.0\.1:9, which ran this computation"):
            async with asyncio.timeout(5):
                await client.recv()
        await served
    assert asked == [[("127.0.0.1", 9)]]
    assert cs.count() == 1, "nothing is given up while the node may hold results"

    async def back(record: ComputationStore) -> None:
        record.store(*_results((2, "two")))  # what the node held
        record.unasked.clear()

    async with _pair() as (client, sched):
        served = asyncio.create_task(serve_recover(sched, store, lambda _id: None, back))
        status = await _status(client, 78)
        assert status.stored == 2
        assert await _values(client) == {1: "one", 2: "two"}
        await _close(client, 78)
        await served
