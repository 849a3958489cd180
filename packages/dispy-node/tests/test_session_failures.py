"""A bug met while serving a client ends that session only: logged once, the node freed.

The node runs in this process (so a bug can be planted with monkeypatch); clients are real
authenticated connections to its TCP port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from dispy_core.aio.connection import Connection, PeerRefused, open_connection
from dispy_core.protocol.messages import ComputationSetup, ComputationStart, JobAck, NodeInfo
from dispy_core.testing import async_test, async_wait_for, free_port
from dispy_node import session as session_module
from dispy_node.config import NodeConfig
from dispy_node.node import Node

SECRET = "session failures"


@asynccontextmanager
async def running_node(tmp_path: Path) -> AsyncIterator[Node]:
    config = NodeConfig(
        cpus=1,
        ip_addr="127.0.0.1",
        node_port=free_port(),
        name="in-process",
        secret=SECRET,
        dest_path_prefix=str(tmp_path / "prefix"),
        msg_timeout=5,
    )
    node = Node(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def client(node: Node) -> Connection:
    conn = await open_connection(
        "127.0.0.1", node.port, secret=SECRET, role="client", name="tester", timeout=5
    )
    msg, _ = await conn.recv()
    assert isinstance(msg, NodeInfo)
    return conn


async def refusal(conn: Connection) -> str:
    try:
        while True:
            await conn.recv()
    except PeerRefused as exc:
        return exc.reason
    finally:
        await conn.close()


def failures(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() or text in (r.exc_text or "")]


async def served_next(node: Node) -> None:
    """The node is free at once and serves the next client."""
    await async_wait_for(lambda: node._active is None, 2.0, message="the node should be free")
    conn = await client(node)
    assert node._active is not None
    await conn.close()


@async_test(timeout=20)
async def test_error_in_a_message_handler_ends_the_session_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, job_ids: list[int]) -> None:
        raise RuntimeError("planted bug in jobs.ack")

    monkeypatch.setattr(session_module.Session, "_acked", broken)
    caplog.set_level(logging.INFO, logger="dispy_node")
    async with running_node(tmp_path) as node:
        conn = await client(node)
        await conn.send(JobAck(comp_id=1, job_ids=[1]))
        reason = await refusal(conn)
        assert reason == "node error: RuntimeError: planted bug in jobs.ack"
        records = failures(caplog, "planted bug")
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].exc_info is not None  # with its traceback
        await served_next(node)


@async_test(timeout=20)
async def test_error_in_a_session_task_ends_the_session_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: object, msg: object, payload: object) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("planted bug in a start task")

    monkeypatch.setattr(session_module.Session, "_start", broken)
    caplog.set_level(logging.INFO, logger="dispy_node")
    async with running_node(tmp_path) as node:
        conn = await client(node)
        conn.send_nowait(ComputationSetup(comp_id=1, name="c", kind="program", cpus=1))
        await conn.send(ComputationStart(comp_id=1), b'{"program": "true"}')
        reason = await refusal(conn)
        assert reason == "node error: RuntimeError: planted bug in a start task"
        records = failures(caplog, "planted bug")
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].exc_info is not None
        await served_next(node)


@async_test(timeout=20)
async def test_error_before_the_session_starts_frees_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, conn: object) -> NodeInfo:
        raise RuntimeError("planted bug in node.info")

    caplog.set_level(logging.INFO, logger="dispy_node")
    async with running_node(tmp_path) as node:
        monkeypatch.setattr(Node, "_node_info", broken)
        conn = await open_connection(
            "127.0.0.1", node.port, secret=SECRET, role="client", name="tester", timeout=5
        )
        assert await refusal(conn) == "node error: RuntimeError"
        assert len(failures(caplog, "planted bug")) == 1
        monkeypatch.undo()
        await served_next(node)
