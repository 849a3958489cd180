"""A restarted scheduler gets back from a real node every result of a computation it had.

Issue 11 ("scheduler kill -9 and restart with nothing lost"), the store's side. A fake
scheduler written with ``dispy_core.aio`` (as in test_node_scheduler_peer.py) opens a
computation on a real ``dispy-node``, records it in a ``Store`` as the service does, submits
jobs (some finished and not yet acknowledged, some running, one queued) and drops its
connection, as a killed scheduler does. A new ``Store`` on the same directory (what the
restarted scheduler sees) finds the computation and ``recover_from_nodes`` brings every
result into it; jobs still running when the timeout passes end cancelled, and the node is
then free for a scheduler again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from harness.computations import block_on
from harness.polling import wait_for
from harness.ports import LOOPBACK

from dispy_core import serialize
from dispy_core.aio.connection import Connection, open_connection
from dispy_core.protocol.messages import (
    ComputationSetup,
    ComputationStart,
    JobDone,
    JobSubmit,
    NodeInfo,
)
from dispy_core.security import TLSConfig
from dispy_scheduler.store import Store, recover_from_nodes

pytestmark = pytest.mark.timeout(120)

SCHED_ID = 4242


def _args(*args: Any) -> bytes:
    return bytes(serialize.dumps((args, {})))


async def _open_on_node(port: int, secret: str, cpus: int) -> Connection:
    """The scheduler's connection to the node, with computation SCHED_ID (block_on) ready."""
    conn = await open_connection(
        LOOPBACK, port, secret=secret, role="scheduler", name="sched-under-test", timeout=10
    )
    async with asyncio.timeout(10):
        msg, _ = await conn.recv()
    assert isinstance(msg, NodeInfo), msg
    conn.send_nowait(ComputationSetup(comp_id=SCHED_ID, name="blocks", kind="function", cpus=cpus))
    bundle = serialize.dumps(
        {"computation": block_on, "setup": None, "cleanup": None, "depends": []}
    )
    await conn.send(ComputationStart(comp_id=SCHED_ID), bundle)
    async with asyncio.timeout(30):
        while True:
            msg, _ = await conn.recv()
            assert msg.type != "computation.failed", msg
            if msg.type == "computation.ready":
                return conn


def _submit(conn: Connection, jobs: dict[int, bytes]) -> None:
    spec = [(job_id, len(data)) for job_id, data in jobs.items()]
    conn.send_nowait(JobSubmit(comp_id=SCHED_ID, jobs=spec), b"".join(jobs.values()))


def _stored(store: Store) -> dict[int, tuple[str, Any]]:
    cs = store.get(SCHED_ID)
    assert cs is not None
    out = {}
    for report, data in cs.stored():
        out[report.job_id] = (report.outcome, serialize.loads(data))
    return out


def test_recover_from_nodes_stores_every_result_after_a_scheduler_dies(
    node_factory, secret, tmp_path: Path
):
    node = node_factory.one(cpus=2, name="ran-it")
    marks = tmp_path / "marks"
    marks.mkdir()
    root = tmp_path / "sched-store"

    def mark(job_id: int) -> str:
        return str(marks / str(job_id))

    async def before_the_kill() -> None:
        store = Store(root)
        cs = store.open(SCHED_ID, 99, "blocks", "function", "client at 127.0.0.1")
        conn = await _open_on_node(node.port, secret, cpus=2)
        cs.node_used(node.address)
        # 1, 2 end at once; 3, 4 then run a while; 5 waits in the node's queue.
        _submit(conn, {1: _args(mark(1), 0.0), 2: _args(mark(2), 0.0)})
        received: set[int] = set()
        async with asyncio.timeout(30):
            while received != {1, 2}:
                msg, _ = await conn.recv()
                if isinstance(msg, JobDone):  # never acknowledged: the node keeps them
                    received.update(r.job_id for r in msg.jobs)
        _submit(conn, {j: _args(mark(j), 3.0) for j in (3, 4)} | {5: _args(mark(5), 0.5)})
        await asyncio.to_thread(
            wait_for, lambda: os.path.exists(mark(3)) and os.path.exists(mark(4)), 20, "3, 4 run"
        )
        conn._transport.abort()  # as the kernel does for a killed process: no goodbye

    asyncio.run(before_the_kill())

    restarted = Store(root)  # what the scheduler finds on disk when it starts again
    [cs] = restarted.found()
    assert cs.nodes() == [node.address]
    count = asyncio.run(recover_from_nodes(cs, node_secret=secret, tls=TLSConfig(None), timeout=30))
    assert count == 5
    results = _stored(restarted)
    assert sorted(results) == [1, 2, 3, 4, 5]
    pids = set()
    for job_id, (outcome, reply) in results.items():
        assert outcome == "finished", (job_id, reply)
        result, _stdout, _stderr, exception = reply
        assert exception is None
        assert result == int(Path(mark(job_id)).read_text())  # the pid that ran it
        pids.add(result)
    assert len(pids) >= 2
    node.wait_log("free again", timeout=20)  # the orphaned computation was closed
    assert "Traceback" not in node.log_text()


def test_the_nodes_count_as_answered_once_their_stored_results_are_stored(
    node_factory, secret, tmp_path: Path
):
    """A recover_jobs served while the restarted scheduler asks its nodes waits for
    ``cs.asking``; when it is set every job must be stored here or known to be pending on a
    node (else that recovery reports it never placed and closes the record, and its result
    comes too late: seen in CI)."""
    node = node_factory.one(cpus=2, name="answers")
    marks = tmp_path / "marks"
    marks.mkdir()
    root = tmp_path / "sched-store"

    async def before_the_kill() -> None:
        store = Store(root)
        cs = store.open(SCHED_ID, 99, "blocks", "function", "client at 127.0.0.1")
        conn = await _open_on_node(node.port, secret, cpus=2)
        cs.node_used(node.address)
        done_now = {j: _args(str(marks / str(j)), 0.0) for j in range(1, 21)}
        _submit(conn, done_now)
        received: set[int] = set()
        async with asyncio.timeout(30):
            while received != set(done_now):
                msg, _ = await conn.recv()
                if isinstance(msg, JobDone):  # never acknowledged: the node keeps them
                    received.update(r.job_id for r in msg.jobs)
        _submit(conn, {21: _args(str(marks / "21"), 2.0)})
        await asyncio.to_thread(wait_for, (marks / "21").exists, 20, "21 runs")
        conn._transport.abort()

    asyncio.run(before_the_kill())
    [cs] = Store(root).found()

    async def recover_and_look() -> set[int]:
        cs.asking = asyncio.Event()  # as the service marks it before anything listens
        asking = cs.asking

        async def when_answered() -> set[int]:
            await asking.wait()
            return {r.job_id for r, _ in cs.stored()} | set(cs.node_pending)

        look = asyncio.create_task(when_answered())
        await recover_from_nodes(cs, node_secret=secret, tls=TLSConfig(None), timeout=30)
        return await look

    assert asyncio.run(recover_and_look()) == set(range(1, 22))


def test_jobs_still_running_at_the_timeout_end_cancelled_and_the_node_is_freed(
    node_factory, secret, tmp_path: Path
):
    node = node_factory.one(cpus=1, name="slow")
    root = tmp_path / "sched-store"
    marker = str(tmp_path / "running")

    async def before_the_kill() -> None:
        cs = Store(root).open(SCHED_ID, 1, "blocks", "function", "me")
        conn = await _open_on_node(node.port, secret, cpus=1)
        cs.node_used(node.address)
        _submit(conn, {7: _args(marker, 90.0)})
        await asyncio.to_thread(wait_for, lambda: os.path.exists(marker), 20, "7 runs")
        conn._transport.abort()

    asyncio.run(before_the_kill())
    restarted = Store(root)
    [cs] = restarted.found()
    recovery = recover_from_nodes(cs, node_secret=secret, tls=TLSConfig(None), timeout=1.5)
    count = asyncio.run(recovery)
    assert count == 1
    [(outcome, reply)] = _stored(restarted).values()
    assert outcome == "cancelled"
    assert reply[0] is None
    node.wait_log("free again", timeout=20)

    async def a_scheduler_is_served_again() -> None:
        conn = await _open_on_node(node.port, secret, cpus=1)
        await conn.close()

    asyncio.run(a_scheduler_is_served_again())


def test_an_unreachable_node_is_logged_and_nothing_is_stored(tmp_path: Path, caplog) -> None:
    from dispy_core.testing import free_port

    cs = Store(tmp_path).open(SCHED_ID, 1, "c", "function", "me")
    cs.node_used((LOOPBACK, free_port()))
    count = asyncio.run(recover_from_nodes(cs, node_secret="s", tls=TLSConfig(None), timeout=5))
    assert count == 0
    assert cs.stored() == []
    assert any("cannot reach node" in r.getMessage() for r in caplog.records)
