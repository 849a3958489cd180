"""Nothing a session starts outlives it (issue 9, item 10).

A second ``computation.start``, a close while setup hangs, a program name with a NUL: each
used to leave a process behind or a task that died without a word. The node's descendants
are checked with psutil, and the node must serve the next client right after.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import wait_for
from harness.computations import setup_forever, square_plus
from harness.procs import describe
from harness.rawpeer import COMP_ID, connect, ending, send_raw, start_computation

from dispy import DispyJob
from dispy_core import serialize
from dispy_core.protocol.messages import ComputationSetup, ComputationStart

pytestmark = pytest.mark.timeout(90)


def _no_children(node, timeout: float = 10.0) -> None:
    wait_for(
        lambda: not node.descendants(),
        timeout,
        lambda: (
            "processes of the node left behind: "
            + "; ".join(describe(p) for p in node.descendants())
        ),
    )


def _served_right_after(node, cluster_factory) -> None:
    cluster = cluster_factory(square_plus, [node])
    jobs = [cluster.submit(i) for i in range(5)]
    assert cluster.wait(timeout=20)
    assert [j.result for j in jobs] == [square_plus(i) for i in range(5)]
    assert all(j.status == DispyJob.Finished for j in jobs)
    cluster.close()


def test_second_computation_start_is_refused_and_leaves_no_process(
    node_factory, cluster_factory, secret
):
    node = node_factory.one(cpus=1, name="twice")

    async def scenario() -> list[str]:
        conn, _info = await connect(node.port, secret)
        await start_computation(conn)
        bundle = serialize.dumps(
            {"computation": square_plus, "setup": None, "cleanup": None, "depends": []}
        )
        await conn.send(ComputationStart(comp_id=COMP_ID), bundle)
        notices = []
        async with asyncio.timeout(10):
            while not notices:
                msg, _ = await conn.recv()
                assert msg.type != "computation.ready", "a second computation was started"
                if msg.type == "notice":
                    notices.append(msg.text)
        # one computation process and one worker (cpus=1), not two of each
        assert len(node.descendants()) == 2, [describe(p) for p in node.descendants()]
        send_raw(conn, {"type": "computation.close", "comp_id": COMP_ID})
        assert await ending(conn, timeout=15) == "closed"
        return notices

    assert asyncio.run(scenario()) == ["computation already started"]
    node.wait_log("sent computation.start twice")
    node.wait_log("free again")
    _no_children(node)
    _served_right_after(node, cluster_factory)


def test_close_during_a_hung_setup_stops_its_processes(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="hung-setup")
    cluster = cluster_factory(square_plus, [node], setup=setup_forever)
    # The computation process and the child its setup started.
    wait_for(lambda: len(node.descendants()) >= 2, 20, "setup should be running")
    assert node.log_count("ready on") == 0
    cluster.close()
    _no_children(node)
    node.wait_log("free again")
    assert "Traceback" not in node.log_text()
    _served_right_after(node, cluster_factory)


def test_session_lost_during_a_hung_setup_stops_its_processes(node_factory, secret):
    node = node_factory.one(cpus=1, name="hung-lost")

    async def scenario() -> None:
        conn, _info = await connect(node.port, secret)
        conn.send_nowait(ComputationSetup(comp_id=COMP_ID, name="hung", kind="function", cpus=1))
        bundle = serialize.dumps(
            {"computation": square_plus, "setup": setup_forever, "cleanup": None, "depends": []}
        )
        await conn.send(ComputationStart(comp_id=COMP_ID), bundle)
        await asyncio.to_thread(
            wait_for, lambda: len(node.descendants()) >= 2, 20, "setup should be running"
        )
        await conn.close()  # the client goes away without a word

    asyncio.run(scenario())
    _no_children(node)
    node.wait_log("free again")


@pytest.mark.parametrize(
    ("spec", "args", "expected"),
    [
        ({"program": "tr\x00ue", "transferred": False}, None, "holds a NUL"),
        ({"program": "nul\x00.py", "transferred": True}, None, "holds a NUL"),
        ({"program": "true", "transferred": False}, ["a\x00b"], "holds a NUL"),
    ],
    ids=["program name", "sent program name", "argument"],
)
def test_nul_in_a_program_name_or_argument_is_one_clear_error(
    node_factory, cluster_factory, secret, spec, args, expected
):
    node = node_factory.one(cpus=1, name="nul-program")

    async def scenario() -> str:
        conn, _info = await connect(node.port, secret)
        conn.send_nowait(ComputationSetup(comp_id=COMP_ID, name="prog", kind="program", cpus=1))
        await conn.send(ComputationStart(comp_id=COMP_ID), json.dumps(spec).encode())
        async with asyncio.timeout(10):
            msg, payload = await conn.recv()
            if args is None:
                assert msg.type == "computation.failed", msg
                text = msg.reason
            else:
                assert msg.type == "computation.ready", msg
                job = json.dumps(args).encode()
                send_raw(
                    conn,
                    {"type": "jobs.submit", "comp_id": COMP_ID, "jobs": [[1, len(job)]]},
                    job,
                )
                while msg.type != "jobs.done":
                    msg, payload = await conn.recv()
                assert [(r.job_id, r.outcome) for r in msg.jobs] == [(1, "terminated")]
                text = serialize.loads(payload)[3]
                send_raw(conn, {"type": "computation.close", "comp_id": COMP_ID})
                assert await ending(conn, timeout=10) == "closed"
        await conn.close()
        return text

    assert expected in asyncio.run(scenario())
    node.wait_log("free again")
    _no_children(node)
    assert "Traceback" not in node.log_text()
    _served_right_after(node, cluster_factory)
