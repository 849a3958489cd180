"""The cluster's scheduling shell, without a network: a fake node on an in-memory connection.

The fake node answers as dispy-node would (node.info, computation.ready, jobs.started,
jobs.done); the tests check the frames the shell sends and the jobs' statuses and callbacks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from dispy._core import ClusterCore, ClusterOptions
from dispy._node_session import serve_node
from dispy.jobs import DispyJob
from dispy.nodes import NodeAllocate
from dispy_core import serialize
from dispy_core.aio.connection import PeerRefused
from dispy_core.engine import ComputationOpened, Tick
from dispy_core.protocol.jobs import JobStatus, NodeStatus
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    JobAck,
    JobCancel,
    JobStarted,
    JobSubmit,
    NodeInfo,
)
from dispy_core.protocol.messages import ComputationClosed as NodeClosed
from dispy_core.results import Reply, job_done_messages
from dispy_core.security import TLSConfig
from dispy_core.testing import async_test, async_wait_for, open_memory_connection_pair

NODE_PORT = 51348
_uids = itertools.count(1)


class Callbacks:
    """Runs callbacks at once, on the loop thread (the real runner has its own thread)."""

    def post(self, func: Any, *args: Any) -> None:
        func(*args)


class Owner:
    def __init__(self) -> None:
        self.ended = 0

    def _job_ended(self) -> None:
        self.ended += 1


class Recovery:
    """Records what the shell writes to the recover file."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.flushes = 0

    def created(self, jobs: list[DispyJob]) -> None:
        self.records.append(("created", [j._uid for j in jobs]))

    def sent(self, key: tuple[str, int], jobs: list[DispyJob]) -> None:
        self.records.append(("sent", key, [j._uid for j in jobs]))

    def done(self, ids: list[int]) -> None:
        self.records.append(("done", list(ids)))

    def node(self, key: tuple[str, int]) -> None:
        self.records.append(("node", key))

    def ids(self, jobs: list[DispyJob]) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1

    def close(self, remove: bool = False) -> None:
        pass


class Harness:
    def __init__(self, *, reentrant: bool = False) -> None:
        self.statuses: list[tuple[int, str | None, int | None]] = []
        self.ended: list[DispyJob] = []
        opts = ClusterOptions(
            name="shell-test",
            kind="function",
            start_payload=b"",
            files=[],
            nodes=[NodeAllocate("127.0.0.*")],
            ip_addrs=["127.0.0.1"],
            ext_ip_addrs=[],
            port=0,
            node_port=NODE_PORT,
            secret="s",
            secret_origin="",
            tls=TLSConfig(None),
            dest_path=None,
            cleanup=True,
            pulse_interval=None,
            ping_interval=None,
            reentrant=reentrant,
            msg_timeout=5.0,
            callback=self.ended.append,
            recover_file="",
            cluster_status=self._status,
        )
        self.owner = Owner()
        self.core = core = ClusterCore(opts, Callbacks(), self.owner)  # type: ignore[arg-type]
        core.loop = asyncio.get_running_loop()
        core.recovery = self.recovery = Recovery()  # type: ignore[assignment]
        event = ComputationOpened(core.comp_id, reentrant, None)
        core.engine.handle(event, time.monotonic())

    def _status(self, status: int, node: Any, job: DispyJob | None) -> None:
        name = node.name if node is not None else None
        self.statuses.append((status, name, job._uid if job is not None else None))

    def submit(self, n: int, *, pinned: tuple[str, int] | None = None) -> list[DispyJob]:
        jobs = []
        for _ in range(n):
            job = DispyJob(next(_uids), (), {})
            job._payload = b"args"
            job._pinned = pinned
            self.core.submit_threadsafe(job)
            jobs.append(job)
        return jobs

    def job_statuses(self, job: DispyJob) -> list[int]:
        return [s for s, _, uid in self.statuses if uid == job._uid]


class FakeNode:
    """The node's end of one connection, driven by the test."""

    def __init__(self, harness: Harness, name: str, port: int) -> None:
        self.harness, self.name, self.port = harness, name, port
        self.key = ("127.0.0.1", port)

    async def connect(self, cpus: int) -> FakeNode:
        core = self.harness.core
        self.pair = await open_memory_connection_pair("s", role_a="node", role_b="client")
        self.conn = self.pair.connector
        self.served = asyncio.create_task(serve_node(core, self.pair.acceptor))
        host, port = self.key
        info = NodeInfo(
            name=self.name, ip_addr=host, port=port, cpus=cpus, platform="t", version="1"
        )
        await self.conn.send(info)
        setup, _ = await self.conn.recv()
        assert isinstance(setup, ComputationSetup)
        assert setup.cpus == cpus
        start, _ = await self.conn.recv()
        assert isinstance(start, ComputationStart)
        ready = ComputationReady(comp_id=core.comp_id, cpus=cpus, dest_path="/tmp/x")
        await self.conn.send(ready)
        await async_wait_for(lambda: core.engine.has_allocation(core.comp_id, self.key), 5)
        return self

    async def recv(self, kind: type) -> Any:
        while True:
            msg, payload = await asyncio.wait_for(self.conn.recv(), 5)
            if isinstance(msg, kind):
                return msg, payload

    async def started(self, ids: list[int]) -> None:
        await self.conn.send(JobStarted(comp_id=self.harness.core.comp_id, job_ids=ids))

    async def done(self, ids: list[int]) -> None:
        now = time.time()
        plain = serialize.dumps_plain
        replies = [
            Reply(uid, "finished", now - 0.001, now, plain((uid * 10, "", "", None))) for uid in ids
        ]
        for msg, parts in job_done_messages(self.harness.core.comp_id, replies):
            await self.conn.send(msg, parts)

    async def close(self) -> None:
        await self.pair.aclose()
        await self.served


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@async_test()
async def test_free_cpus_run_at_once_the_rest_wait_ahead_and_each_job_ends_once() -> None:
    h = Harness()
    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=2)
    assert (NodeStatus.Initialized, "n1", None) in h.statuses
    jobs = h.submit(3)
    submit, _ = await node.recv(JobSubmit)
    uids = [j._uid for j in jobs]
    assert [uid for uid, _ in submit.jobs] == uids
    assert submit.notify == [uids[2]]  # two CPUs: the third waits on the node
    assert [j.status for j in jobs] == [JobStatus.Running] * 2 + [JobStatus.Created]
    assert all(j.ip_addr == "127.0.0.1" for j in jobs)
    assert ("sent", node.key, uids) in h.recovery.records
    await node.started([uids[2]])
    await async_wait_for(lambda: jobs[2].status == JobStatus.Running, 5)
    assert h.core.known_nodes[node.key].busy == 3
    assert sorted(j._uid for j in h.core.node_jobs(node.key)) == uids

    await node.done(uids)
    await async_wait_for(lambda: len(h.ended) == 3, 5)
    assert [j() for j in jobs] == [uid * 10 for uid in uids]
    assert all(j.status == JobStatus.Finished for j in jobs)
    assert h.core.known_nodes[node.key].busy == 0
    ack, _ = await node.recv(JobAck)  # after the recover file is flushed
    assert ack.job_ids == uids
    assert h.recovery.flushes >= 1

    await node.done([uids[0]])  # a stale repeat: acknowledged, never ends the job again
    ack, _ = await node.recv(JobAck)
    assert ack.job_ids == [uids[0]]
    assert len(h.ended) == 3
    assert h.owner.ended == 3
    for job in jobs:
        assert h.job_statuses(job).count(JobStatus.Finished) == 1
    await node.close()


@async_test()
async def test_a_job_ending_before_its_start_is_reported_is_not_counted_busy() -> None:
    h = Harness()
    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    jobs = h.submit(2)
    submit, _ = await node.recv(JobSubmit)
    assert submit.notify == [jobs[1]._uid]
    await node.done([j._uid for j in jobs])  # the second never got a jobs.started
    await async_wait_for(lambda: len(h.ended) == 2, 5)
    assert h.core.known_nodes[node.key].busy == 0
    await node.close()


@async_test()
async def test_jobs_of_a_lost_node_are_cancelled_with_the_reason() -> None:
    h = Harness()
    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    jobs = h.submit(2)
    await node.recv(JobSubmit)
    await node.close()
    await async_wait_for(lambda: len(h.ended) == 2, 5)
    for job in jobs:
        assert job.status == JobStatus.Cancelled
        assert job.exception is not None
        assert job.exception.startswith(f"Cancelled: node 127.0.0.1:{NODE_PORT} ")
    assert (NodeStatus.AbandonedNode, "n1", None) in h.statuses
    assert h.core.known_nodes[node.key].error is not None
    assert h.core.sessions == {}


@async_test()
async def test_jobs_of_a_lost_node_go_to_another_node_when_reentrant() -> None:
    h = Harness(reentrant=True)
    first = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    jobs = h.submit(2)
    submit, _ = await first.recv(JobSubmit)
    assert len(submit.jobs) == 2
    await first.close()
    await async_wait_for(lambda: all(j.status == JobStatus.Created for j in jobs), 5)
    assert all(j.ip_addr is None for j in jobs)
    second = await FakeNode(h, "n2", NODE_PORT + 1).connect(cpus=2)
    submit, _ = await second.recv(JobSubmit)
    uids = [uid for uid, _ in submit.jobs]
    assert sorted(uids) == [j._uid for j in jobs]
    await second.done(uids)
    await async_wait_for(lambda: len(h.ended) == 2, 5)
    assert all(j.status == JobStatus.Finished for j in jobs)
    await second.close()


@async_test()
async def test_cancel_ends_a_queued_job_and_asks_the_node_for_a_placed_one() -> None:
    h = Harness()
    (queued,) = h.submit(1)
    await settle()
    h.core.cancel(queued)
    assert queued.status == JobStatus.Cancelled
    assert queued.exception == "Cancelled"

    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    (placed,) = h.submit(1)
    await node.recv(JobSubmit)
    h.core.cancel(placed)
    cancel, _ = await node.recv(JobCancel)
    assert cancel.job_ids == [placed._uid]
    assert placed.status == JobStatus.Running  # it ends when the node says so
    await node.close()


@async_test()
async def test_a_job_pinned_to_an_unknown_node_is_cancelled_and_never_created() -> None:
    h = Harness()
    (job,) = h.submit(1, pinned=("127.0.0.9", NODE_PORT))
    await async_wait_for(lambda: job.status == JobStatus.Cancelled, 5)
    assert job.exception == f"node 127.0.0.9:{NODE_PORT} is not in this cluster"
    assert h.job_statuses(job) == [JobStatus.Cancelled]
    assert not any(r[0] == "created" for r in h.recovery.records)


@async_test()
async def test_a_pinned_job_goes_only_to_its_node() -> None:
    h = Harness()
    first = await FakeNode(h, "n1", NODE_PORT).connect(cpus=4)
    second = await FakeNode(h, "n2", NODE_PORT + 1).connect(cpus=4)
    (job,) = h.submit(1, pinned=second.key)
    submit, _ = await second.recv(JobSubmit)
    assert [uid for uid, _ in submit.jobs] == [job._uid]
    assert job.ip_addr == "127.0.0.1"
    await first.close()
    await second.close()


@async_test()
async def test_a_silent_node_is_declared_dead_and_refused() -> None:
    h = Harness()
    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    (job,) = h.submit(1)
    await node.recv(JobSubmit)
    later = time.monotonic() + 3600  # the engine is told the time; nothing here sleeps
    h.core._apply(h.core.engine.handle(Tick(), later))
    assert job.status == JobStatus.Cancelled
    assert job.exception is not None
    assert "declared dead: no pulse for" in job.exception
    assert h.core.sessions == {}
    assert (NodeStatus.AbandonedNode, "n1", None) in h.statuses
    with pytest.raises(PeerRefused, match="declared dead"):
        await node.recv(JobSubmit)
    await node.close()


@async_test()
async def test_close_with_terminate_cancels_on_nodes_and_abandons_what_remains() -> None:
    h = Harness()
    node = await FakeNode(h, "n1", NODE_PORT).connect(cpus=1)
    jobs = h.submit(3)  # one runs, one waits on the node, one stays queued (capacity 2)
    submit, _ = await node.recv(JobSubmit)
    assert len(submit.jobs) == 2
    closing = asyncio.create_task(h.core.close(terminate=True))
    cancel, _ = await node.recv(JobCancel)
    assert sorted(cancel.job_ids) == [jobs[0]._uid, jobs[1]._uid]
    assert jobs[2].status == JobStatus.Cancelled  # never placed: ended at once
    await node.recv(CloseComputation)
    await node.done([jobs[0]._uid])  # the node ends one before it closes
    await node.conn.send(NodeClosed(comp_id=h.core.comp_id))
    await closing
    assert jobs[0].status == JobStatus.Finished
    assert jobs[1].status == JobStatus.Cancelled
    assert jobs[1].exception == f"Cancelled: node 127.0.0.1:{NODE_PORT} closed"
    assert (NodeStatus.Closed, "n1", None) in h.statuses
    assert h.owner.ended == 3
    await node.close()


@async_test()
async def test_jobs_left_when_the_cluster_closes_end_abandoned() -> None:
    h = Harness()
    (job,) = h.submit(1)
    await settle()
    await h.core.close(terminate=False)
    assert job.status == JobStatus.Abandoned
    assert job.exception == "cluster closed"
