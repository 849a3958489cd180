"""recover_jobs on a SharedJobCluster's recover file: through the scheduler, not the nodes.

The scheduler's side is the real ``dispy_scheduler.store.serve_recover`` behind a real
loopback connection (the handshake with the cluster secret, role ``recover``), serving a
store with stored results and a fake live computation with a job still running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from dispy import recover_jobs
from dispy_core import serialize
from dispy_core.aio.handshake import accept_connection
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import JobReport
from dispy_core.testing import async_test, free_port

store_module = pytest.importorskip("dispy_scheduler.store")

SECRET = "shared-cluster-secret"
SCHED_ID, CLIENT_COMP_ID = 31337, 555


def _results(
    *pairs: tuple[int, object], outcome: str = "finished"
) -> tuple[list[JobReport], bytes]:
    replies = [(j, bytes(serialize.dumps((v, f"out {j}", "", None)))) for j, v in pairs]
    reports = [
        JobReport(job_id=j, outcome=outcome, start=1.0, end=2.0, size=len(d))  # type: ignore[arg-type]
        for j, d in replies
    ]
    return reports, b"".join(d for _, d in replies)


class Live:
    """The service's computation, its client gone, job 3 still running."""

    def __init__(self, cs: object) -> None:
        self.cs = cs
        self._pending = [3]
        self.client_connected = False
        self.closed: list[bool] = []

    def pending(self) -> list[int]:
        return list(self._pending)

    def cancel(self, job_ids: Sequence[int]) -> None:
        raise AssertionError("nothing to cancel")

    def close(self, terminate: bool) -> None:
        self.closed.append(terminate)


def _recover_file(path: Path, port: int, unused_node_port: int) -> None:
    records = [
        {
            "format": "dispy-recover-1",
            "comp_id": CLIENT_COMP_ID,
            "name": "shared",
            "secret": SECRET,
            "certfile": None,
            "keyfile": None,
            "msg_timeout": 5.0,
            "scheduler": ["127.0.0.1", port],
            "sched_id": SCHED_ID,
        },
        {"c": [[1, "first"], [2, 2], [3, 3], [4, 4], [5, 5]]},
        # Where jobs ran: never asked (the scheduler answers for them).
        {"s": ["127.0.0.1", unused_node_port], "j": [1, 2, 3, 4], "i": ["first", 2, 3, 4]},
        {"d": [4]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    path.chmod(0o600)


@async_test(timeout=30)
async def test_recover_jobs_of_a_shared_cluster_asks_the_scheduler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_module.Store(tmp_path / "store")
    cs = store.open(SCHED_ID, CLIENT_COMP_ID, "shared", "function", "client")
    cs.store(*_results((1, "one"), (2, "two")))
    live = Live(cs)
    served: list[asyncio.Task[None]] = []

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def serve() -> None:
            conn = await accept_connection(
                reader, writer, secret=SECRET, role="scheduler", name="sched", timeout=5
            )
            assert conn.peer_role == "recover"
            await store_module.serve_recover(
                conn, store, lambda sched_id: live if sched_id == SCHED_ID else None
            )

        served.append(asyncio.ensure_future(serve()))

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recover_file = tmp_path / "_dispy_shared"
    _recover_file(recover_file, port, free_port())
    caplog.set_level(logging.INFO)
    try:
        recovery = asyncio.ensure_future(asyncio.to_thread(recover_jobs, str(recover_file)))
        # The scheduler's job 3 ends while recover_jobs waits for it.
        for _ in range(200):
            if served and cs.count() == 0:
                break  # 1 and 2 delivered and acknowledged
            await asyncio.sleep(0.02)
        assert cs.count() == 0
        live._pending.remove(3)
        cs.store(*_results((3, "three")))
        jobs = await recovery
    finally:
        server.close()
        await server.wait_closed()
    await asyncio.gather(*served)
    by_id = {job.id: job for job in jobs}
    assert sorted(by_id, key=str) == [2, 3, 5, "first"]
    assert by_id["first"].status == JobStatus.Finished
    assert by_id["first"].result == "one"
    assert by_id["first"].stdout == "out 1"
    assert (by_id[2].result, by_id[3].result) == ("two", "three")
    assert by_id[3].status == JobStatus.Finished
    assert by_id[5].status == JobStatus.Abandoned
    assert f"scheduler 127.0.0.1:{port} does not have this job" in by_id[5].exception
    assert live.closed == [True]  # released, as a node is
    assert cs.count() == 0
    assert not recover_file.exists()  # nothing left to wait for
    assert not any("cannot reach" in r.getMessage() for r in caplog.records)


def test_recover_jobs_names_the_scheduler_it_cannot_reach(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recover_file = tmp_path / "_dispy_gone"
    port = free_port()
    _recover_file(recover_file, port, free_port())
    jobs = recover_jobs(str(recover_file), timeout=5)
    assert {job.status for job in jobs} == {JobStatus.Abandoned}
    assert any(f"cannot reach scheduler 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    for job in jobs:
        assert f"scheduler 127.0.0.1:{port} could not be asked" in job.exception
        assert "call recover_jobs again" in job.exception
    # The scheduler may be restarting: the file stays for the next call.
    assert recover_file.exists()


def test_a_damaged_scheduler_record_is_refused(tmp_path: Path) -> None:
    recover_file = tmp_path / "_dispy_bad"
    recover_file.write_text(
        json.dumps({"format": "dispy-recover-1", "comp_id": 1, "scheduler": "nowhere"}) + "\n"
    )
    with pytest.raises(ValueError, match="scheduler or sched_id is unreadable"):
        recover_jobs(str(recover_file))


def test_a_scheduler_that_never_answers_is_named_with_the_timeout(tmp_path: Path) -> None:
    recover_file = tmp_path / "_dispy_silent"
    with socket.socket() as silent:  # accepts (in the kernel), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        _recover_file(recover_file, port, free_port())
        text = recover_file.read_text().replace('"msg_timeout": 5.0', '"msg_timeout": 1.0')
        recover_file.write_text(text)
        jobs = recover_jobs(str(recover_file), timeout=5)
    for job in jobs:
        assert job.status == JobStatus.Abandoned
        assert "(no answer within msg_timeout (1 s))" in job.exception
    assert recover_file.exists()
