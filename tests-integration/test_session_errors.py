"""Odd messages from an authenticated client end only that session; the node serves on.

Issue 9, item 4: one authenticated message with a NUL in a path, an mtime of 1e300 or a
negative job id used to escape the node's session and leave the node "busy" until the
zombie interval. Each such message must now end its session with one clear error (the
client is told why), free the node, and the next client must be served at once.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import History
from harness.computations import square_plus
from harness.features import wait_nodes
from harness.rawpeer import COMP_ID, connect, ending, send_raw, start_computation

from dispy import DispyJob
from dispy_core import serialize

pytestmark = pytest.mark.timeout(90)

ARGS = bytes(serialize.dumps(((3,), {})))  # square_plus(3)
AVAIL = '"memory": 1, "disk": 1, "swap": 0.0'

# label -> (header: a dict sent as JSON, or raw JSON bytes; payload)
ODD_MESSAGES: dict[str, tuple[dict[str, object] | bytes, bytes]] = {
    "NUL in a file.put path": (
        {"type": "file.put", "comp_id": COMP_ID, "path": "dir/a\x00b.txt", "size": 1},
        b"x",
    ),
    "mtime of 1e300": (
        {"type": "file.put", "comp_id": COMP_ID, "path": "f.txt", "size": 1, "mtime": 1e300},
        b"x",
    ),
    "negative job id": (
        {"type": "jobs.submit", "comp_id": COMP_ID, "jobs": [[-1, len(ARGS)]]},
        ARGS,
    ),
    "job id 2**64": (
        {"type": "jobs.submit", "comp_id": COMP_ID, "jobs": [[2**64, len(ARGS)]]},
        ARGS,
    ),
    "NaN cpu in a pulse": (
        ('{"type": "pulse", "avail": {"cpu": NaN, ' + AVAIL + '}, "running": 0}').encode(),
        b"",
    ),
    "a huge list": (
        {"type": "jobs.cancel", "comp_id": COMP_ID, "job_ids": list(range(100_000))},
        b"",
    ),
}


async def _send_odd(port: int, secret: str, header: dict[str, object] | bytes, payload: bytes):
    conn, _info = await connect(port, secret)
    await start_computation(conn)
    send_raw(conn, header, payload)
    # Seconds, not the zombie interval: the node must end this session by itself.
    return await ending(conn, timeout=10)


def test_odd_messages_end_their_session_and_the_node_serves_on(
    node_factory, cluster_factory, secret
):
    node = node_factory.one(cpus=1, name="odd")
    for label, (header, payload) in ODD_MESSAGES.items():
        errors = node.log_count("malformed message header")
        how = asyncio.run(_send_odd(node.port, secret, header, payload))
        assert how.startswith("refused: malformed message header"), (label, how)
        # One clear error in the node's log, naming the problem, and no traceback (it is the
        # peer's fault, not a bug here).
        node.wait_log("malformed message header", count=errors + 1)
        assert node.log_count("malformed message header") == errors + 1, (label, node.log_text())
        node.wait_log("free again", count=list(ODD_MESSAGES).index(label) + 1)
    assert "Traceback" not in node.log_text()

    history = History()
    cluster = cluster_factory(
        square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    for i in range(20):
        history.submit(cluster, i)
    assert cluster.wait(timeout=20), history.summary()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()
    assert node.running()


def test_valid_but_unexpected_messages_do_not_end_the_session(node_factory, secret):
    """Messages that pass the schema but make no sense here get a notice or are ignored;
    the session (and its computation) goes on."""
    node = node_factory.one(cpus=1, name="odd-valid")

    async def scenario() -> None:
        conn, _info = await connect(node.port, secret)
        await start_computation(conn)
        for header in (
            {"type": "jobs.submit", "comp_id": COMP_ID + 1, "jobs": [[1, 0]]},
            {"type": "jobs.cancel", "comp_id": COMP_ID, "job_ids": [2**64 - 1]},
            {"type": "jobs.ack", "comp_id": COMP_ID, "job_ids": [5]},
            {"type": "file.ack", "comp_id": COMP_ID, "req": 77},
            {"type": "node.info", "name": "x", "ip_addr": "1.2.3.4", "port": 1, "cpus": 1,
             "platform": "p", "version": "v"},
        ):  # fmt: skip
            send_raw(conn, json.dumps(header).encode())
        send_raw(conn, {"type": "jobs.submit", "comp_id": COMP_ID, "jobs": [[9, len(ARGS)]]}, ARGS)
        async with asyncio.timeout(20):
            while True:
                msg, payload = await conn.recv()
                if msg.type == "jobs.done":
                    break
        assert [r.job_id for r in msg.jobs] == [9]
        assert serialize.loads(payload)[0] == square_plus(3)
        send_raw(conn, {"type": "computation.close", "comp_id": COMP_ID})
        assert await ending(conn, timeout=15) == "closed"

    asyncio.run(scenario())
    node.wait_log("free again")


def test_client_error_on_a_nodes_message_drops_only_that_node(
    node_factory, cluster_factory, dispy_log, monkeypatch
):
    """A bug in the client while it handles one node's message ends that node's connection
    (the node is told why and freed), is logged once, and the cluster finishes elsewhere."""
    from dispy import _core

    first, second = node_factory(2, cpus=1, name="client-bug")
    original = _core.ClusterCore._job_replies
    planted: list[str] = []

    def sometimes_broken(self, session, msg, payload):
        if not planted and session.node.name == first.name:
            planted.append(session.node.name)
            raise RuntimeError("planted client bug")
        return original(self, session, msg, payload)

    monkeypatch.setattr(_core.ClusterCore, "_job_replies", sometimes_broken)
    history = History()
    cluster = cluster_factory(
        square_plus,
        [first, second],
        reentrant=True,
        callback=history.callback,
        cluster_status=history.cluster_status,
    )
    # Both nodes must be in before the jobs go, or the quicker one may take all of them.
    wait_nodes(cluster, 2)
    for i in range(30):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary()
    history.check(square_plus, allowed={DispyJob.Finished})
    assert planted == [first.name]
    errors = [r for r in dispy_log.records if "planted client bug" in str(r.exc_info)]
    assert len(errors) == 1, dispy_log.text()
    first.wait_log("client error: RuntimeError: planted client bug")
    first.wait_log("free again")
    cluster.close()
