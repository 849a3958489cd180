"""A node serves a scheduler: several computations over one connection, clients refused.

Issue 11 (the node's side of shared execution). The scheduler here is a fake peer written
with ``dispy_core.aio``: it authenticates to a real ``dispy-node`` with role ``scheduler``,
opens two computations of two different functions, interleaves their jobs, closes one and
keeps using the other. A JobCluster started meanwhile is refused with the reason, which its
no-node warning shows, and does not disturb the scheduler's computations.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from harness.computations import pid_and_value, square_plus
from harness.polling import wait_for
from harness.ports import LOOPBACK

from dispy_core import serialize
from dispy_core.aio.connection import Connection, PeerRefused, open_connection
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationSetup,
    ComputationStart,
    JobAck,
    JobSubmit,
    NodeInfo,
)

pytestmark = pytest.mark.timeout(120)

SQUARE, PID = 11, 12


def _args(*args: Any) -> bytes:
    return bytes(serialize.dumps((args, {})))


class FakeScheduler:
    """The scheduler's end of one node connection, message by message."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.results: dict[tuple[int, int], Any] = {}
        self.closed: list[int] = []

    @classmethod
    async def connect(cls, port: int, secret: str, role: str = "scheduler") -> FakeScheduler:
        conn = await open_connection(
            LOOPBACK, port, secret=secret, role=role, name="fake-scheduler", timeout=10
        )
        async with asyncio.timeout(10):
            msg, _ = await conn.recv()
        assert isinstance(msg, NodeInfo), msg
        return cls(conn)

    async def open(self, comp_id: int, function: Any) -> None:
        self.conn.send_nowait(
            ComputationSetup(comp_id=comp_id, name=f"c{comp_id}", kind="function", cpus=2)
        )
        bundle = serialize.dumps(
            {"computation": function, "setup": None, "cleanup": None, "depends": []}
        )
        await self.conn.send(ComputationStart(comp_id=comp_id), bundle)
        async with asyncio.timeout(30):
            while True:
                msg, _ = await self.conn.recv()
                assert msg.type != "computation.failed", msg
                if msg.type == "computation.ready" and msg.comp_id == comp_id:
                    return

    def submit(self, comp_id: int, jobs: dict[int, bytes]) -> None:
        spec = [(job_id, len(data)) for job_id, data in jobs.items()]
        self.conn.send_nowait(JobSubmit(comp_id=comp_id, jobs=spec), b"".join(jobs.values()))

    async def collect(self, count: int) -> None:
        """Read until ``count`` more results are in (acking them), noting closes."""
        want = len(self.results) + count
        async with asyncio.timeout(60):
            while len(self.results) < want:
                msg, payload = await self.conn.recv()
                if msg.type == "computation.closed":
                    self.closed.append(msg.comp_id)
                if msg.type != "jobs.done":
                    continue
                at = 0
                for report in msg.jobs:
                    assert report.outcome == "finished", report
                    reply = serialize.loads(bytes(payload[at : at + report.size]))
                    self.results[msg.comp_id, report.job_id] = reply[0]
                    at += report.size
                done = [r.job_id for r in msg.jobs]
                await self.conn.send(JobAck(comp_id=msg.comp_id, job_ids=done))

    async def close(self, comp_id: int) -> None:
        await self.conn.send(CloseComputation(comp_id=comp_id))
        async with asyncio.timeout(20):
            while comp_id not in self.closed:
                msg, _ = await self.conn.recv()
                if msg.type == "computation.closed":
                    self.closed.append(msg.comp_id)


def test_a_scheduler_runs_two_computations_and_a_jobcluster_is_refused(
    node_factory, cluster_factory, secret, dispy_log
):
    node = node_factory.one(cpus=2, name="shared")

    async def scenario() -> None:
        sched = await FakeScheduler.connect(node.port, secret)
        await sched.open(SQUARE, square_plus)
        await sched.open(PID, pid_and_value)
        # interleaved, with the same job ids in both computations
        for job_id in range(1, 21):
            sched.submit(SQUARE, {job_id: _args(job_id)})
            sched.submit(PID, {job_id: _args(job_id * 10)})
        await sched.collect(40)
        for job_id in range(1, 21):
            assert sched.results[SQUARE, job_id] == square_plus(job_id)
            assert sched.results[PID, job_id][1] == job_id * 10 + 1
        pids = {sched.results[PID, j][0] for j in range(1, 21)}

        # A client meanwhile: refused with the reason, which its no-node warning shows.
        await asyncio.to_thread(_client_is_refused, cluster_factory, node, dispy_log)
        direct = await _direct_refusal(node.port, secret)
        assert direct == "node is serving a scheduler"

        # Closing one computation leaves the other, and the connection, working.
        await sched.close(SQUARE)
        sched.submit(PID, {100: _args(5)})
        await sched.collect(1)
        assert sched.results[PID, 100][1] == 6
        assert sched.results[PID, 100][0] in pids  # the same computation process
        # ... and a third computation may come on the same connection.
        await sched.open(SQUARE + 10, square_plus)
        sched.submit(SQUARE + 10, {1: _args(4)})
        await sched.collect(1)
        assert sched.results[SQUARE + 10, 1] == square_plus(4)
        await sched.close(PID)
        await sched.close(SQUARE + 10)
        await sched.conn.close()

    asyncio.run(scenario())
    node.wait_log("free again")
    # Free again, the node serves a JobCluster as before.
    cluster = cluster_factory(square_plus, [node])
    assert cluster.submit(3)() == square_plus(3)
    cluster.close()
    assert "Traceback" not in node.log_text()


def _client_is_refused(cluster_factory, node, dispy_log) -> None:
    cluster = cluster_factory(square_plus, [node])
    reason = "node is serving a scheduler"
    wait_for(
        lambda: reason in dispy_log.text() and "no dispy node has joined" in dispy_log.text(),
        20,
        lambda: f"the client's warning should say why: {dispy_log.text()}",
    )
    warning = next(r for r in dispy_log.records if "no dispy node has joined" in r.getMessage())
    assert reason in warning.getMessage()
    assert cluster.nodes() == []
    cluster.close()


async def _direct_refusal(port: int, secret: str) -> str:
    conn = await open_connection(
        LOOPBACK, port, secret=secret, role="client", name="direct", timeout=10
    )
    try:
        async with asyncio.timeout(10):
            await conn.recv()
    except PeerRefused as exc:
        return exc.reason
    finally:
        await conn.close()
    return "not refused"


def test_a_node_serving_a_client_refuses_a_scheduler(node_factory, cluster_factory, secret):
    node = node_factory.one(cpus=1, name="taken")
    cluster = cluster_factory(square_plus, [node])
    assert cluster.submit(2)() == square_plus(2)

    async def refused() -> str:
        conn = await open_connection(
            LOOPBACK, node.port, secret=secret, role="scheduler", name="late", timeout=10
        )
        try:
            async with asyncio.timeout(10):
                await conn.recv()
        except PeerRefused as exc:
            return exc.reason
        finally:
            await conn.close()
        return "not refused"

    assert asyncio.run(refused()) == "node is busy serving another client"
    assert cluster.submit(5)() == square_plus(5)
    cluster.close()
