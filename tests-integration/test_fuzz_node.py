"""Fuzzing a real node: arbitrary bytes and arbitrary authenticated messages, then real work.

Hypothesis draws a bounded number of examples (deterministically), each on its own
connection: random bytes before authentication, random bytes after it, or a few messages
(valid JSON that breaks the schema, or passes it with odd values) on an authenticated
session, optionally with a live program computation. Each session must end within seconds
(a refusal with a reason, or the close this test sends last), the node must never log a
traceback, and afterwards a real client gets the node and runs jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import pytest
from harness import History, wait_for
from harness.computations import square_plus
from harness.rawpeer import COMP_ID, connect, ending, send_raw
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dispy import DispyJob
from dispy_core.protocol.messages import ComputationSetup, ComputationStart

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 200
SESSION_END = 10.0  # seconds a session may take to end after the test's last message

# What a client may send in a session (computation.start excepted: it would run whatever
# program the fuzz names), one valid header each.
SAMPLES: dict[str, dict[str, Any]] = {
    "computation": {"type": "computation", "comp_id": COMP_ID, "name": "fz", "kind": "program",
                    "cpus": 1, "dest_path": "fz/dir", "cleanup": True, "pulse_interval": 1.0},
    "jobs.submit": {"type": "jobs.submit", "comp_id": COMP_ID, "jobs": [[1, 4], [2, 0]],
                    "notify": [2]},
    "jobs.cancel": {"type": "jobs.cancel", "comp_id": COMP_ID, "job_ids": [1, 2]},
    "jobs.ack": {"type": "jobs.ack", "comp_id": COMP_ID, "job_ids": [1]},
    "file.put": {"type": "file.put", "comp_id": COMP_ID, "path": "in/data.txt", "size": 4,
                 "mode": 0o640, "mtime": 1.7e9, "job_id": None, "req": 3},
    "file.ack": {"type": "file.ack", "comp_id": COMP_ID, "req": 1, "error": None},
    "computation.set_cpus": {"type": "computation.set_cpus", "comp_id": COMP_ID, "cpus": 1},
    "pulse": {"type": "pulse", "avail": {"cpu": 50.0, "memory": 1, "disk": 1, "swap": 0.0},
              "running": 0},
    "notice": {"type": "notice", "level": "error", "text": "hello"},
    "jobs.done": {"type": "jobs.done", "comp_id": COMP_ID, "jobs": [
        {"job_id": 1, "outcome": "finished", "start": 1.0, "end": 2.0, "size": 0}]},
    "recover.request": {"type": "recover.request", "comp_id": COMP_ID},
    "node.info": {"type": "node.info", "name": "n", "ip_addr": "127.0.0.1", "port": 1,
                  "cpus": 1, "platform": "p", "version": "v"},
}  # fmt: skip
ODD = [
    -1, 0, 2**63, 2**64 - 1, 2**64, 1e300, float("nan"), float("inf"), -0.0,
    "", "\x00", "a\x00b", "..", "../../../etc/passwd", "/tmp", "x" * 3000, "é✓",
    True, None, [], [[-1, 2**64]], {}, ["a\x00"],
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(ODD),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)  # fmt: skip


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    header = dict(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for field in draw(st.lists(st.sampled_from(sorted(header)), max_size=3)):
        if field == "type" and draw(st.booleans()):
            continue
        header[field] = draw(st.sampled_from(ODD) | json_values)
    return header


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    return draw(
        st.sampled_from([b"", b"data", json.dumps(["a", "b"]).encode(), b'["x"]'])
        | st.binary(max_size=64)
    )


examples = st.one_of(
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=2000)),
    st.tuples(st.just("garbage after auth"), st.binary(min_size=1, max_size=2000)),
    st.tuples(
        st.just("messages"),
        st.booleans(),  # with a live program computation first
        st.lists(st.tuples(headers(), payloads()), min_size=1, max_size=5),
    ),
)


class FreeWatch:
    """Waits for the node's next "free again" without rereading the whole log each time."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.offset = 0

    def wait(self, timeout: float = 10.0) -> None:
        def seen() -> bool:
            with open(self.node.log_path, "rb") as fh:
                fh.seek(self.offset)
                text = fh.read()
            at = text.find(b"free again")
            if at < 0:
                return False
            self.offset += at + len(b"free again")
            return True

        wait_for(seen, timeout, lambda: f"the node is not free again:\n{self.node.log_text()}")


async def _start_program(conn: Any) -> None:
    conn.send_nowait(ComputationSetup(comp_id=COMP_ID, name="fz", kind="program", cpus=1))
    await conn.send(ComputationStart(comp_id=COMP_ID), b'{"program": "true"}')
    async with asyncio.timeout(10):
        msg, _ = await conn.recv()
    assert msg.type == "computation.ready", msg


async def _session(port: int, secret: str, example: tuple[Any, ...]) -> str:
    conn, _info = await connect(port, secret, timeout=5)
    if example[0] == "garbage after auth":
        conn._transport.write(example[1])
    else:
        _kind, live, messages = example
        if live:
            await _start_program(conn)
        for header, payload in messages:
            send_raw(conn, header, payload)
    with contextlib.suppress(Exception):
        send_raw(conn, {"type": "computation.close", "comp_id": COMP_ID, "terminate": True})
    return await ending(conn, SESSION_END)


def test_fuzzed_peers_leave_the_node_serving(node_factory, cluster_factory, secret):
    node = node_factory.one(cpus=1, name="fuzzed", extra_args=["--msg_timeout", "5"])
    watch = FreeWatch(node)
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # shrinking against a live node takes long
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(examples)
    def one(example: tuple[Any, ...]) -> None:
        assert node.running(), node.log_text()
        if example[0] == "raw":
            with (
                socket.create_connection(node.address, timeout=5) as sock,
                contextlib.suppress(OSError),
            ):
                sock.sendall(example[1])
            return
        how = asyncio.run(_session(node.port, secret, example))
        seen[how.split(":")[0]] = seen.get(how.split(":")[0], 0) + 1
        watch.wait()

    one()
    assert node.running()
    assert "Traceback" not in node.log_text()
    # both kinds of ending happened
    assert seen.get("refused"), seen
    assert seen.get("closed"), seen

    history = History()
    cluster = cluster_factory(
        square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    for i in range(20):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()
    assert node.running()
