"""What a SharedJobCluster does through ``dispy-scheduler serve``, feature by feature.

TLS toward nodes and toward clients (each with its own certificate), nodes found through
a client's ``hosts`` and nodes that come by themselves (``--scheduler_node``), pinned jobs,
cancel, provisional results, and files both ways (dependencies kept by the scheduler for
nodes set up later, a job's ``dispy_send_file``, ``cluster.send_file``). The client is
:class:`harness.shared_client.FakeSharedClient`.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness.computations import square_plus
from harness.features import (
    interval,
    make_and_send,
    pattern_bytes,
    provisional_then_wait,
    read_text,
)
from harness.ports import LOOPBACK
from harness.shared_client import FakeSharedClient, args

from dispy_core.protocol.messages import CloseComputation, ComputationStart, SharedComputation
from dispy_core.security import client_context

pytestmark = pytest.mark.timeout(180)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_tls_toward_nodes_and_toward_clients(node_factory, scheduler_factory, tmp_path):
    node_cert, node_key = _certificate(tmp_path, "nodes")
    client_cert, client_key = _certificate(tmp_path, "clients")
    nodes = node_factory(
        2, cpus=1, name="tls", extra_args=["--certfile", str(node_cert), "--keyfile", str(node_key)]
    )
    sched = scheduler_factory(
        nodes,
        "--node_certfile", str(node_cert), "--node_keyfile", str(node_key),
        "--cluster_certfile", str(client_cert), "--cluster_keyfile", str(client_key),
    )  # fmt: skip
    sched.wait_log(f"clients at {LOOPBACK}:{sched.scheduler_port} (TLS)")

    async def scenario() -> None:
        tls = client_context(str(client_cert), str(client_key))
        client = await FakeSharedClient.connect(
            sched.scheduler_port, sched.cluster_secret, ssl_context=tls
        )
        await client.open("tls", square_plus)
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        client.submit({i: args(i) for i in range(1, 11)})
        await client.wait_done(10)
        assert all(client.results[i].value == square_plus(i) for i in range(1, 11))
        await client.close()
        # the nodes' certificate is not the clients' one: refused
        wrong = client_context(str(node_cert), str(node_key))
        with pytest.raises((OSError, ConnectionError, TimeoutError)):
            await FakeSharedClient.connect(
                sched.scheduler_port, sched.cluster_secret, ssl_context=wrong
            )

    _run(scenario())


def test_nodes_from_a_clients_hosts_and_nodes_that_come_by_themselves(
    node_factory, scheduler_factory
):
    sched = scheduler_factory([])
    listed = node_factory.one(cpus=1, name="listed")
    volunteer = node_factory.one(
        cpus=1,
        name="volunteer",
        extra_args=["--scheduler_node", LOOPBACK, "--scheduler_port", str(sched.port)],
    )
    sched.wait_log(f"node volunteer ({LOOPBACK}:{volunteer.port}) with", timeout=20)

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("hosts", square_plus, hosts=[f"{LOOPBACK}:{listed.port}"])
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        assert {(o.ip_addr, o.port) for o in client.offers} == {
            listed.address,
            volunteer.address,
        }
        await client.close()

    _run(scenario())


def test_pinned_jobs_and_cancel(node_factory, scheduler_factory):
    one, two = node_factory(2, cpus=1, name="pin")
    sched = scheduler_factory([one, two])

    async def scenario() -> None:
        client = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await client.open("pins", interval)
        await client.wait(lambda: len(client.nodes) == 2, 20, "both nodes")
        pins = {i: two.address for i in range(1, 7)}
        client.submit({i: args(0.05) for i in range(1, 7)}, pinned=pins)
        await client.wait_done(6)
        assert {r.node for r in client.results.values()} == {two.address}
        # two long jobs run, two wait: cancel all four
        client.submit({i: args(60.0) for i in range(10, 14)})
        await client.wait(lambda: len({10, 11, 12, 13} & set(client.running)) >= 2, 20, "running")
        client.cancel([10, 11, 12, 13])
        await client.wait_done(10, timeout=30)
        for job_id in (10, 11, 12, 13):
            if job_id in client.results:
                assert client.results[job_id].outcome == "cancelled"
            else:
                assert client.ended[job_id][0] == "cancelled"
        await client.close()

    _run(scenario())


def test_provisional_results_and_files_both_ways(node_factory, scheduler_factory, tmp_path):
    first = node_factory.one(cpus=1, name="files-1")
    sched = scheduler_factory([first])
    release = tmp_path / "release"
    dep = b"a dependency of the computation\n"

    async def scenario() -> None:
        prov = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await prov.open("provisional", provisional_then_wait)
        await prov.wait(lambda: prov.nodes, 20, "node")
        prov.submit({1: args(str(release), 2)})
        await prov.wait(lambda: len(prov.provisional) == 2, 20, "provisional results")
        assert prov.provisional == [(1, ("step", 0)), (1, ("step", 1))]
        release.write_text("go")
        await prov.wait_done(1)
        assert prov.results[1].value == ("final", 2)
        await prov.close()

        sender = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await sender.open("sender", make_and_send)
        await sender.wait(lambda: sender.nodes, 20, "node")
        sender.submit({1: args("out/data.bin", 3000)})
        await sender.wait_done(1)
        assert sender.files["out/data.bin"] == pattern_bytes(3000)
        await sender.close()

        reader = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        await reader.open("reader", read_text, files={"dep.txt": dep})
        await reader.wait(lambda: reader.nodes, 20, "node")
        # a node that joins later gets the dependency files too, from the scheduler's disk
        late = await asyncio.to_thread(
            node_factory.one,
            cpus=1,
            name="files-2",
            extra_args=["--scheduler_node", LOOPBACK, "--scheduler_port", str(sched.port)],
        )
        await reader.wait(lambda: late.address in reader.nodes, 20, "the late node set up")
        await asyncio.to_thread(sched.wait_log, f"node files-2 ({LOOPBACK}:{late.port}) with", 20)
        reader.send_file(late.address, "sent.txt", b"sent by the client", req=7)
        await reader.wait(lambda: 7 in reader.file_acks, 20, "file.ack")
        assert reader.file_acks[7] is None
        reader.submit({1: args("dep.txt")}, pinned={1: late.address})
        reader.submit({2: args("sent.txt")}, pinned={2: late.address})
        reader.submit({3: args("dep.txt")}, pinned={3: first.address})
        await reader.wait_done(3)
        assert reader.results[1].value == dep.decode()
        assert reader.results[2].value == "sent by the client"
        assert reader.results[3].value == dep.decode()
        await reader.close()

    _run(scenario())


def test_a_failed_setup_is_told_to_its_client_and_others_go_on(node_factory, scheduler_factory):
    node = node_factory.one(cpus=1, name="setup")
    sched = scheduler_factory([node])

    async def scenario() -> None:
        broken = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        fine = await FakeSharedClient.connect(sched.scheduler_port, sched.cluster_secret)
        broken.conn.send_nowait(
            SharedComputation(comp_id=broken.comp_id, name="broken", kind="function")
        )
        await broken.conn.send(
            ComputationStart(comp_id=broken.comp_id), b"this is no pickled bundle"
        )
        await broken.wait(lambda: broken.nodes, 30, "the node's status")
        assert broken.nodes[node.address] == "setup_failed"
        status = next(m for m in broken.events if m.type == "sched.node")
        assert status.reason
        broken.submit({1: args(1)})
        await fine.open("fine", square_plus)
        await fine.wait(lambda: fine.nodes, 20, "node")
        fine.submit({1: args(3)})
        await fine.wait_done(1)
        assert fine.results[1].value == square_plus(3)
        await fine.close()
        # the broken one's job has no node; closing ends it
        await broken.conn.send(CloseComputation(comp_id=broken.comp_id, terminate=True))
        await broken.wait(broken.closed.is_set, 20, "computation.closed")
        assert broken.ended[1][0] in ("cancelled", "abandoned")
        await broken.disconnect()

    _run(scenario())
