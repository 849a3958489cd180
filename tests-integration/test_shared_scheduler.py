"""``dispy-scheduler serve`` shares real nodes between clients (issue 11, the scheduler).

A real scheduler and real ``dispy-node``s on 127.0.0.1; the clients are
:class:`harness.shared_client.FakeSharedClient`, which speaks PROTOCOL.md section 13 message
by message. The node secret and the cluster secret differ in every test.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

import pytest
from harness.computations import pid_and_value, square_plus
from harness.features import interval
from harness.ports import LOOPBACK
from harness.shared_client import FakeSharedClient, args

from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.messages import SharedSubmit

pytestmark = pytest.mark.timeout(180)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_two_clients_interleave_on_the_same_nodes(node_factory, scheduler_factory):
    nodes = node_factory(2, cpus=2, name="shared")
    sched = scheduler_factory(nodes)

    async def scenario() -> None:
        a = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        b = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await a.open("squares", square_plus)
        await b.open("pids", pid_and_value)
        assert a.sched_id != b.sched_id
        await a.wait(lambda: len(a.nodes) == 2, 20, "both nodes set up for a")
        await b.wait(lambda: len(b.nodes) == 2, 20, "both nodes set up for b")
        # the same job ids in both computations, interleaved
        for job_id in range(1, 41):
            a.submit({job_id: args(job_id)})
            b.submit({job_id: args(job_id * 10)})
        await a.wait_done(40)
        await b.wait_done(40)
        assert not a.ended
        assert not b.ended
        for job_id in range(1, 41):
            assert a.results[job_id].value == square_plus(job_id)
            assert b.results[job_id].value[1] == job_id * 10 + 1
        # a batch of jobs that take a while spreads over both nodes
        assert {r.node for r in (*a.results.values(), *b.results.values())} <= {
            n.address for n in nodes
        }
        await a.close()
        c = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await c.open("spread", interval)
        await c.wait(lambda: len(c.nodes) == 2, 20, "both nodes set up for c")
        c.submit({job_id: args(0.3) for job_id in range(1, 5)})
        await c.wait_done(4)
        assert {r.node for r in c.results.values()} == {n.address for n in nodes}
        await b.close()
        await c.close()

    _run(scenario())


def test_a_small_computation_finishes_long_before_a_big_one(node_factory, scheduler_factory):
    nodes = node_factory(2, cpus=2, name="fair")
    sched = scheduler_factory(nodes)

    async def scenario() -> None:
        big = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        small = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await big.open("big", interval)
        await big.wait(lambda: len(big.nodes) == 2, 20, "nodes for big")
        big.submit({job_id: args(0.1) for job_id in range(1, 301)})
        await big.wait(lambda: len(big.results) >= 8, 30, "big under way")
        await small.open("small", interval)
        await small.wait(lambda: len(small.nodes) == 2, 20, "nodes for small")
        small.submit({job_id: args(0.1) for job_id in range(1, 11)})
        await small.wait_done(10, timeout=30)
        # 300 jobs of 0.1 s on 4 CPUs take 7.5 s; the small one took a few rounds.
        assert len(big.results) < 150, f"small waited for big: {len(big.results)} done"
        assert all(r.outcome == "finished" for r in small.results.values())
        await small.close()
        await big.close(terminate=True)

    _run(scenario())


def test_exclusive_computations_take_their_turns_in_order(node_factory, scheduler_factory):
    nodes = node_factory(2, cpus=1, name="turns")
    sched = scheduler_factory(nodes)

    async def scenario() -> None:
        first = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        excl = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        late = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await first.open("first", interval)
        first.submit({i: args(0.3) for i in range(1, 5)})
        await excl.open("exclusive", interval, exclusive=True)
        await excl.wait(lambda: excl.state == "waiting", 10, "exclusive waits")
        excl.submit({i: args(0.2) for i in range(1, 5)})
        await late.open("late", interval)
        await late.wait(lambda: late.state == "waiting", 10, "late waits")
        late.submit({i: args(0.1) for i in range(1, 5)})
        await first.wait_done(4)
        await first.close()
        await excl.wait(lambda: excl.state == "active", 20, "exclusive's turn")
        await excl.wait_done(4)
        assert late.state == "waiting"
        assert not late.results
        await excl.close()
        await late.wait(lambda: late.state == "active", 20, "late's turn")
        await late.wait_done(4)
        await late.close()
        first_end = max(r.value[1] for r in first.results.values())
        excl_start = min(r.value[0] for r in excl.results.values())
        excl_end = max(r.value[1] for r in excl.results.values())
        late_start = min(r.value[0] for r in late.results.values())
        assert first_end <= excl_start < excl_end <= late_start

    _run(scenario())


def test_a_client_with_the_wrong_cluster_secret_is_refused(node_factory, scheduler_factory):
    node = node_factory.one(cpus=1, name="guarded")
    sched = scheduler_factory([node])

    async def wrong() -> str:
        try:
            client = await FakeSharedClient.connect(sched.scheduler_port, "not-the-secret")
        except ProtocolError as exc:
            return str(exc)
        await client.disconnect()
        return "accepted"

    reason = _run(wrong())
    assert "authentication failed" in reason
    assert "secret" in reason
    sched.wait_log("client at 127.0.0.1:")
    sched.wait_log("refused: it does not use this scheduler's --cluster_secret")

    async def right() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("ok", square_plus)
        await client.wait(lambda: client.nodes, 20, "node set up")
        client.submit({1: args(2)})
        await client.wait_done(1)
        assert client.results[1].value == square_plus(2)
        await client.close()

    _run(right())


def test_a_node_with_the_wrong_node_secret_is_not_used(node_factory, scheduler_factory):
    good = node_factory.one(cpus=1, name="good")
    bad = node_factory.one(cpus=1, name="bad", secret="some-other-secret")
    sched = scheduler_factory([good], also=[bad])
    sched.wait_log("node at 127.0.0.1:", timeout=20)
    sched.wait_log("refused: it does not use this scheduler's --node_secret", timeout=20)

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("only-good", square_plus)
        await client.wait(lambda: client.nodes, 20, "node set up")
        client.submit({i: args(i) for i in range(1, 6)})
        await client.wait_done(5)
        assert {r.node for r in client.results.values()} == {good.address}
        assert [o.port for o in client.offers] == [good.port]
        await client.close()

    _run(scenario())


@pytest.mark.parametrize("reentrant", [True, False])
def test_node_killed_jobs_move_or_end_cancelled(node_factory, scheduler_factory, reentrant):
    victim, survivor = node_factory(2, cpus=1, name="mortal")
    sched = scheduler_factory([victim, survivor], "--pulse_interval", "1")

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("moving", interval, reentrant=reentrant)
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        client.submit({i: args(3.0) for i in range(1, 5)})
        await client.wait(
            lambda: victim.address in client.running.values(), 20, "a job on the victim"
        )
        on_victim = {j for j, n in client.running.items() if n == victim.address}
        victim.kill()
        await client.wait_done(4, timeout=60)
        await client.wait(
            lambda: client.nodes.get(victim.address) == "abandoned", 20, "victim abandoned"
        )
        if reentrant:
            assert not client.ended, client.ended
            assert on_victim <= set(client.requeued)
            assert {r.node for r in client.results.values()} == {survivor.address}
        else:
            assert set(client.ended) >= on_victim
            for job_id in on_victim:
                status, reason = client.ended[job_id]
                assert status == "cancelled"
                assert f"{victim.address[0]}:{victim.address[1]}" in reason
        await client.close()

    _run(scenario())


def test_a_silent_node_is_declared_dead_by_pulses(node_factory, scheduler_factory):
    """A stopped node (SIGSTOP: its connection stays open) misses its pulses: after
    5 x --pulse_interval the scheduler declares it dead and its jobs move."""
    frozen, alive = node_factory(2, cpus=1, name="pulse")
    sched = scheduler_factory([frozen, alive], "--pulse_interval", "1")

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("silent", interval, reentrant=True)
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        client.submit({i: args(1.0) for i in range(1, 5)})
        await client.wait(
            lambda: frozen.address in client.running.values(), 20, "a job on the frozen node"
        )
        frozen.kill(signal.SIGSTOP)
        try:
            await client.wait_done(4, timeout=40)
            await client.wait(
                lambda: client.nodes.get(frozen.address) == "abandoned", 20, "frozen abandoned"
            )
        finally:
            frozen.kill(signal.SIGCONT)
        assert not client.ended
        assert client.requeued
        assert {r.node for r in client.results.values()} == {alive.address}
        await client.close()

    _run(scenario())
    sched.wait_log(f"node {LOOPBACK}:{frozen.port} declared dead: no pulse for")


def test_a_gone_client_leaves_its_jobs_running_and_others_unaffected(
    node_factory, scheduler_factory
):
    nodes = node_factory(2, cpus=1, name="orphan")
    sched = scheduler_factory(nodes)

    async def scenario() -> int:
        gone = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        other = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await gone.open("orphaned", interval)
        await other.open("other", square_plus)
        await gone.wait(lambda: len(gone.nodes) == 2, 20, "nodes for gone")
        await other.wait(lambda: len(other.nodes) == 2, 20, "nodes for other")
        gone.submit({i: args(0.5) for i in range(1, 7)})
        await gone.wait(lambda: gone.running, 20, "a job running")
        await gone.disconnect()
        other.submit({i: args(i) for i in range(1, 21)})
        await other.wait_done(20)
        assert all(other.results[i].value == square_plus(i) for i in range(1, 21))
        await other.close()
        return gone.sched_id

    sched_id = _run(scenario())
    sched.wait_log("of computation orphaned is gone")
    sched.wait_log("its 6 job(s) go on")
    # its jobs went on to their end, then it was closed on the nodes and dropped
    sched.wait_log(f"computation orphaned ({sched_id}) done", timeout=30)
    assert "shutting down" not in sched.log_text()


@pytest.mark.parametrize(
    ("option", "text"),
    [
        (["--pulse_interval", "0"], "--pulse-interval"),
        (["--port", "70000"], "--port"),
        (["--max_file_size", "ten"], "invalid size"),
        (["--node_keyfile", "/etc/hostname"], "--node_keyfile given without --node_certfile"),
    ],
)
def test_cli_option_errors_exit_2_with_a_clear_message(option, text, tmp_path):
    proc = subprocess.run(
        ["dispy-scheduler", "serve", "-i", LOOPBACK, *option],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={"PATH": __import__("os").environ["PATH"], "DISPY_SECRET": "s", "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_gets_a_clear_error_and_others_are_served(node_factory, scheduler_factory):
    node = node_factory.one(cpus=1, name="sturdy")
    sched = scheduler_factory([node])

    async def scenario() -> None:
        good = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        sloppy = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await good.open("good", square_plus)
        await sloppy.open("sloppy", square_plus)
        await sloppy.wait(lambda: sloppy.nodes, 20, "node")
        # arguments shorter than the sizes announced; a computation never opened
        sloppy.conn.send_nowait(SharedSubmit(comp_id=sloppy.comp_id, jobs=[(1, 50)]), b"x")
        sloppy.conn.send_nowait(SharedSubmit(comp_id=12345, jobs=[(1, 1)]), b"x")
        await sloppy.wait(lambda: len(sloppy.notices) == 2, 10, "two notices")
        assert "does not match the jobs' sizes" in sloppy.notices[0]
        assert "did not open" in sloppy.notices[1]
        # still served after that
        sloppy.submit({2: args(2)})
        await sloppy.wait_done(1)
        assert sloppy.results[2].value == square_plus(2)
        # bytes that are no frame end that connection only
        sloppy.conn._transport.write(b"\x00garbage that is not a dispy frame" * 4)
        await sloppy.wait(lambda: sloppy.lost is not None, 10, "the connection's end")
        assert "not a dispy frame" in str(sloppy.lost)
        good.submit({i: args(i) for i in range(1, 6)})
        await good.wait_done(5)
        assert all(good.results[i].value == square_plus(i) for i in range(1, 6))
        await good.close()

    _run(scenario())
    sched.wait_log("not a dispy frame")


def test_httpd_is_not_available_yet_and_sigterm_stops_cleanly(node_factory, scheduler_factory):
    node = node_factory.one(cpus=1, name="plain")
    sched = scheduler_factory([node], "--httpd")
    sched.wait_log("--httpd: the web monitor is not available yet")

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("still-serving", square_plus)
        await client.wait(lambda: client.nodes, 20, "node")
        client.submit({1: args(1)})
        await client.wait_done(1)
        sched.kill(signal.SIGTERM)
        # the client is told, and the scheduler ends by itself
        await client.wait(lambda: client.lost is not None, 20, "the scheduler's goodbye")
        assert "scheduler shutting down" in str(client.lost)

    _run(scenario())
    assert sched.proc is not None
    assert sched.proc.wait(20) == 0
    sched.wait_log("dispy-scheduler shutting down")
    node.wait_log("scheduler shutting down")


def test_four_clients_with_many_jobs_each_all_correct(node_factory, scheduler_factory):
    nodes = node_factory(2, cpus=2, name="many")
    sched = scheduler_factory(nodes)
    count = 5000

    async def one(index: int) -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open(f"many-{index}", square_plus)
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        for start in range(0, count, 1000):
            client.submit({j: args(j, index) for j in range(start, start + 1000)})
        await client.wait_done(count, timeout=120)
        assert not client.ended
        assert all(client.results[j].value == square_plus(j, index) for j in range(count))
        await client.close()

    async def scenario() -> None:
        await asyncio.gather(*(one(i) for i in range(4)))

    _run(scenario())
