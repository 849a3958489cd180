"""The node's session routes a peer's messages by computation, without a network.

A :class:`~dispy_node.session.Session` serves one end of an in-memory authenticated
connection pair (``dispy_core.testing.memory_connection_pair``); the test plays the peer on
the other end. Computations run on a fake runner that answers each job at once with its
own arguments, so no process is started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dispy_core.aio.connection import Connection
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationClosed,
    ComputationFailed,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    CpusSet,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    JobDone,
    JobSubmit,
    Message,
    Notice,
    Pulse,
    SetCpus,
)
from dispy_core.result_store import ResultStore
from dispy_core.results import Reply, local_reply
from dispy_core.testing import async_test, async_wait_for, memory_connection_pair
from dispy_node._computation_session import ComputationSession
from dispy_node.executor import ComputationStartError
from dispy_node.session import Session

SECRET = "routing"


@dataclass(eq=False)
class FakeRunner:
    """A runner whose jobs end at once with their arguments as result (or wait, if told)."""

    comp_id: int
    name: str
    cpus: int
    dest_path: str
    on_reply: Callable[[Reply], None]
    hold_jobs: bool = False
    cleanup_files: bool = True
    held: bool = False
    queued_bytes: int = 0
    waiting: dict[int, bytes] = field(default_factory=dict)
    closed: bool = False

    @property
    def running(self) -> int:
        return len(self.waiting)

    @property
    def queued(self) -> int:
        return 0

    fail: bool = False

    async def start(self) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise ComputationStartError("setup said no")

    def submit(self, job_id: int, payload: Any, notify: bool = False) -> None:
        if self.hold_jobs:
            self.waiting[job_id] = bytes(payload)
        else:
            asyncio.get_running_loop().call_soon(self.end, job_id, bytes(payload))

    def end(self, job_id: int, result: bytes) -> None:
        self.waiting.pop(job_id, None)  # no longer running, as a real runner
        now = time.time()
        self.on_reply(Reply(job_id, "finished", now, now, result))

    kicks: int = 0

    def kick(self) -> None:
        self.kicks += 1

    def cancel(self, job_id: int) -> bool:
        if self.waiting.pop(job_id, None) is None:
            return False
        self.on_reply(local_reply(job_id, "cancelled", None, time.time()))
        return True

    def pending_ids(self) -> list[int]:
        return list(self.waiting)

    def set_cpus(self, cpus: int) -> None:
        self.cpus = cpus

    async def close(self, *, terminate: bool = True) -> str | None:
        for job_id in list(self.waiting):
            self.cancel(job_id)
        self.closed = True
        return None


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> dict[int, FakeRunner]:
    """Every computation started in the test gets a FakeRunner, listed here by comp_id."""
    made: dict[int, FakeRunner] = {}

    def fake(
        self: ComputationSession, setup: ComputationSetup, dest: str, cpus: int, payload: Any
    ) -> FakeRunner:
        runner = FakeRunner(setup.comp_id, setup.name, cpus, dest, self._on_reply)
        runner.hold_jobs, runner.fail = payload == b"hold", payload == b"fail"
        made[setup.comp_id] = runner
        return runner

    monkeypatch.setattr(ComputationSession, "_runner", fake)
    return made


class FakeNode:
    def __init__(self, root: Path) -> None:
        prefix = root / "prefix"
        self.config = SimpleNamespace(
            max_file_size=0,
            dest_path_prefix=str(prefix),
            zombie_interval=3600.0,
            msg_timeout=5.0,
            max_job_output=1 << 20,
        )
        self.cpus = 4
        self.store = ResultStore(str(prefix))
        self.buffers = SimpleNamespace(take=bytearray)
        self.tasks = TaskOwner("fake node")
        self.ended: list[Session] = []

    def session_ended(self, session: Session) -> None:
        self.ended.append(session)


@dataclass
class Peer:
    """The test's end of the connection, and the session serving the other end."""

    conn: Connection
    session: Session
    served: asyncio.Task[str]

    async def next(self, *types: type[Message]) -> tuple[Any, bytes]:
        """The next message of one of ``types`` (pulses skipped)."""
        async with asyncio.timeout(5):
            while True:
                msg, payload = await self.conn.recv()
                if isinstance(msg, Pulse) and Pulse not in types:
                    continue
                assert isinstance(msg, types), msg
                return msg, bytes(payload)

    async def open(self, comp_id: int, spec: bytes = b"go", **setup: Any) -> None:
        self.conn.send_nowait(ComputationSetup(comp_id=comp_id, name=f"c{comp_id}", **setup))
        await self.conn.send(ComputationStart(comp_id=comp_id), spec)
        ready, _ = await self.next(ComputationReady)
        assert ready.comp_id == comp_id


@asynccontextmanager
async def serving(tmp_path: Path, max_computations: int = 1) -> AsyncIterator[Peer]:
    node = FakeNode(tmp_path)
    async with memory_connection_pair(SECRET) as (node_end, peer_end):
        session = Session(node, max_computations=max_computations)  # type: ignore[arg-type]
        served = asyncio.create_task(session.serve(node_end))
        try:
            yield Peer(peer_end, session, served)
        finally:
            await session.finish()
            served.cancel()
            await asyncio.gather(served, return_exceptions=True)
            await node.tasks.close()


FUNCTION: dict[str, Any] = {"kind": "function", "cpus": 2}


@async_test()
async def test_two_computations_share_one_connection(tmp_path, runners):
    async with serving(tmp_path, max_computations=2) as peer:
        await peer.open(1, **FUNCTION)
        await peer.open(2, **FUNCTION)
        assert sorted(peer.session.sessions) == [1, 2]
        peer.conn.send_nowait(JobSubmit(comp_id=1, jobs=[(10, 2)]), b"aa")
        peer.conn.send_nowait(JobSubmit(comp_id=2, jobs=[(10, 3), (11, 1)]), b"bbbc")
        done: dict[int, dict[int, bytes]] = {1: {}, 2: {}}
        while len(done[1]) + len(done[2]) < 3:
            msg, payload = await peer.next(JobDone)
            at = 0
            for report in msg.jobs:
                done[msg.comp_id][report.job_id] = payload[at : at + report.size]
                at += report.size
        # the same job id in two computations: each result went back under its own comp_id
        assert done == {1: {10: b"aa"}, 2: {10: b"bbb", 11: b"c"}}
        first, second = peer.session.sessions[1], peer.session.sessions[2]
        assert (first.unacked, second.unacked) == (1, 2)
        await peer.conn.send(JobAck(comp_id=2, job_ids=[10, 11]))
        await async_wait_for(lambda: second.unacked == 0, 2.0)
        assert first.unacked == 1  # the ack of comp 2's job 10 left comp 1's alone

        await peer.conn.send(SetCpus(comp_id=2, cpus=1))
        cpus, _ = await peer.next(CpusSet)
        assert (cpus.comp_id, cpus.cpus, runners[2].cpus, runners[1].cpus) == (2, 1, 1, 2)
        # closing one computation leaves the other, and the connection, working
        await peer.conn.send(CloseComputation(comp_id=1))
        closed, _ = await peer.next(ComputationClosed)
        assert closed.comp_id == 1
        assert runners[1].closed
        assert not runners[2].closed
        assert list(peer.session.sessions) == [2]
        assert not peer.served.done()
        peer.conn.send_nowait(JobSubmit(comp_id=2, jobs=[(12, 1)]), b"d")
        msg, payload = await peer.next(JobDone)
        assert (msg.comp_id, [r.job_id for r in msg.jobs], payload) == (2, [12], b"d")


@async_test()
async def test_messages_for_an_unknown_computation_get_todays_answers(tmp_path, runners):
    async with serving(tmp_path) as peer:
        await peer.open(1, **FUNCTION)
        peer.conn.send_nowait(JobSubmit(comp_id=9, jobs=[(1, 1)]), b"x")
        notice, _ = await peer.next(Notice)
        assert notice.text == "jobs for an unknown computation"
        await peer.conn.send(FilePut(comp_id=9, path="f.txt", size=1, req=5), b"x")
        ack, _ = await peer.next(FileAck)
        assert (ack.comp_id, ack.req, ack.error) == (9, 5, "no computation to receive the file")
        await peer.conn.send(ComputationStart(comp_id=9), b"go")
        failed, _ = await peer.next(ComputationFailed)
        assert (failed.comp_id, failed.reason) == (9, "computation.start without computation")
        # acks, cancels and set_cpus for it change nothing
        peer.conn.send_nowait(JobAck(comp_id=9, job_ids=[1]))
        peer.conn.send_nowait(JobCancel(comp_id=9, job_ids=[1]))
        await peer.conn.send(SetCpus(comp_id=9, cpus=1))
        peer.conn.send_nowait(JobSubmit(comp_id=1, jobs=[(1, 1)]), b"y")
        msg, payload = await peer.next(JobDone)
        assert (msg.comp_id, payload) == (1, b"y")
        assert not (Path(runners[1].dest_path) / "f.txt").exists()


@async_test()
async def test_a_client_holds_one_computation_and_its_close_ends_the_session(tmp_path, runners):
    async with serving(tmp_path) as peer:
        await peer.open(1, **FUNCTION)
        peer.conn.send_nowait(ComputationSetup(comp_id=2, name="c2", **FUNCTION))
        failed, _ = await peer.next(ComputationFailed)
        assert (failed.comp_id, failed.reason) == (2, "this node already runs a computation")
        assert list(peer.session.sessions) == [1]
        await peer.conn.send(CloseComputation(comp_id=1))
        closed, _ = await peer.next(ComputationClosed)
        assert closed.comp_id == 1
        assert await asyncio.wait_for(peer.served, 5) == "closed"
        assert peer.session.sessions == {}


@async_test()
async def test_a_failed_start_frees_its_comp_id(tmp_path, runners):
    async with serving(tmp_path) as peer:
        peer.conn.send_nowait(ComputationSetup(comp_id=1, name="c1", **FUNCTION))
        await peer.conn.send(ComputationStart(comp_id=1), b"fail")
        failed, _ = await peer.next(ComputationFailed)
        assert (failed.comp_id, failed.reason) == (1, "setup said no")
        assert peer.session.sessions == {}
        await peer.open(1, **FUNCTION)  # the client may try again


@async_test()
async def test_a_lost_connection_orphans_only_computations_with_work(tmp_path, runners):
    async with serving(tmp_path, max_computations=2) as peer:
        await peer.open(1, b"hold", **FUNCTION)
        await peer.open(2, **FUNCTION)
        await peer.conn.send(JobSubmit(comp_id=1, jobs=[(7, 1)]), b"z")
        await async_wait_for(lambda: runners[1].running == 1, 2.0)
        await peer.conn.close()
        assert await asyncio.wait_for(peer.served, 5) == "lost"
        session = peer.session
        assert await session.end("lost")  # kept: comp 1 still runs a job
        assert list(session.sessions) == [1]
        assert runners[2].closed
        assert session.sessions[1].conn is None
        runners[1].end(7, b"late")  # the result of an orphaned computation goes to disk
        store = session.node.store
        await async_wait_for(lambda: [r.job_id for r in store.load(1)] == [7], 2.0)
        # Its last job ended: the orphaned session ends by itself, the node is free.
        await async_wait_for(lambda: session.ended and runners[1].closed, 3.0)
        assert session.sessions == {}
        assert not await session.end("closed")


@async_test()
async def test_the_lease_is_the_peers_and_any_message_renews_it(tmp_path, runners):
    async with serving(tmp_path, max_computations=2) as peer:
        await peer.open(1, pulse_interval=0.1, **FUNCTION)
        await peer.open(2, **FUNCTION)
        first = peer.session.sessions[1]
        peer.session.last_heard -= 1000  # the peer has been silent past dead_after()
        assert not first.may_start()
        runners[1].held = True  # what a runner does when may_start() says no
        await peer.conn.send(Pulse())
        await async_wait_for(lambda: not runners[1].held, 2.0)
        assert (runners[1].kicks, runners[2].kicks) == (1, 0)
        assert first.may_start()


@async_test()
async def test_a_scheduler_holds_up_to_its_bound_and_stays_after_a_close(tmp_path, runners):
    async with serving(tmp_path, max_computations=2) as peer:
        await peer.open(1, **FUNCTION)
        await peer.open(2, **FUNCTION)
        peer.conn.send_nowait(ComputationSetup(comp_id=3, name="c3", **FUNCTION))
        failed, _ = await peer.next(ComputationFailed)
        assert (failed.comp_id, failed.reason) == (3, "too many computations on this node")
        await peer.conn.send(CloseComputation(comp_id=1))
        await peer.next(ComputationClosed)
        await peer.open(3, **FUNCTION)  # the freed place is taken again
        assert sorted(peer.session.sessions) == [2, 3]
        assert not peer.served.done()


@async_test()
async def test_recovering_one_orphaned_computation_leaves_the_others_orphaned(tmp_path, runners):
    async with serving(tmp_path, max_computations=2) as peer:
        await peer.open(1, b"hold", **FUNCTION)
        await peer.open(2, b"hold", **FUNCTION)
        peer.conn.send_nowait(JobSubmit(comp_id=1, jobs=[(7, 1)]), b"a")
        await peer.conn.send(JobSubmit(comp_id=2, jobs=[(7, 1)]), b"b")
        await async_wait_for(lambda: runners[1].running + runners[2].running == 2, 2.0)
        await peer.conn.close()
        assert await asyncio.wait_for(peer.served, 5) == "lost"
        session = peer.session
        assert await session.end("lost")
        async with memory_connection_pair(SECRET) as (node_end, recover_end):
            recovering = asyncio.create_task(session.recover(node_end, 1))
            await async_wait_for(lambda: session.sessions[1].conn is node_end, 2.0)
            assert session.sessions[2].conn is None  # still orphaned
            runners[2].end(7, b"two")  # comp 2's result goes to disk, not to comp 1's peer
            runners[1].end(7, b"one")
            store = session.node.store
            await async_wait_for(lambda: [r.job_id for r in store.load(2)] == [7], 2.0)
            async with asyncio.timeout(5):
                while True:
                    msg, payload = await recover_end.recv()
                    if isinstance(msg, JobDone):
                        break
            assert (msg.comp_id, bytes(payload)) == (1, b"one")
            await recover_end.close()
            assert await asyncio.wait_for(recovering, 5) == "lost"
