"""Two LANs joined by a router, with a dispy-relay on LAN B, in network namespaces (issue 12).

LAN A holds the client (and, in the last test, a dispy-scheduler); LAN B holds a host
running ``dispy-relay run`` and two nodes started with ``--relay <that host>``. Nothing on A
pings B's nodes: the client's broadcast stays on A, and B's nodes are never listed, so they
can only hear of a client through the relay's broadcast on B. Every job returns the
``NODE_TAG`` of its node, so the test sees where jobs ran.

* the client lists the relay host (``nodes=['*', relay]``): all four nodes run jobs; with B's
  pattern (``nodes=['10.x.y.*', relay]``) only B's two do;
* the relay is started with ``--scheduler_node <client>`` after the client runs; the client,
  which did not list it, hears its announcement, pings through it and B's nodes join;
* the same through ``dispy-scheduler serve`` on A: the relay announces itself to the
  scheduler's ``--scheduler_port``, and a SharedJobCluster's jobs run on B's nodes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness.netns import Host, Topology
from harness.node import NodeProcess
from harness.relay import RelayProcess
from harness.scheduler import SchedulerProcess
from harness.where_client import done, events, where_client

from dispy import DispyJob
from dispy_core.config import CLIENT_PORT, NODE_PORT

pytestmark = pytest.mark.timeout(120)

SCHEDULER_PORT = 51349  # dispy-scheduler serve's and dispy-relay's default


class NetnsRelay(RelayProcess):
    """``dispy-relay run -i <host>`` inside ``host``'s namespace."""

    def __init__(self, workdir: Path, host: Host, *args: str) -> None:
        super().__init__(workdir, ["-i", host.address, "-d", *args])
        self.host = host

    def command(self) -> list[str]:
        return [*self.host.wrapper, *super().command()]


class NetnsScheduler(SchedulerProcess):
    """``dispy-scheduler serve -i <host>`` on its default ports inside ``host``'s namespace."""

    def __init__(self, workdir: Path, host: Host, node_secret: str, cluster_secret: str) -> None:
        super().__init__(workdir, node_secret=node_secret, cluster_secret=cluster_secret)
        self.host = host
        self.port = 51347
        self.scheduler_port = SCHEDULER_PORT

    def command(self) -> list[str]:
        exe = shutil.which("dispy-scheduler")
        assert exe is not None, "the dispy-scheduler CLI is not on PATH (run through hatch)"
        return [*self.host.wrapper, exe, "serve", "-d", "-i", self.host.address]


@pytest.fixture
def processes():
    """Relays and schedulers of a test, stopped at its end (before the namespaces go)."""
    started: list[RelayProcess | SchedulerProcess] = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, SchedulerProcess):
            proc.stop()
            proc.cleanup()
        else:
            proc.kill()


def _lans(topology: Topology, a_nodes: int = 2):
    a = topology.lan("a")
    b = topology.lan("b")
    topology.router("router", [a, b])
    client = topology.host("client", a)
    on_a = [topology.host(f"a{i}", a) for i in range(1, a_nodes + 1)]
    relay = topology.host("relay", b, octet=3)
    on_b = [topology.host(f"b{i}", b, octet=4 + i) for i in (1, 2)]
    return a, b, client, on_a, relay, on_b


def _start(node_factory, hosts: list[Host], relay: Host | None = None) -> list[NodeProcess]:
    """One one-CPU node per host on the default node port (with ``--relay`` if given)."""
    extra = ["--relay", relay.address] if relay is not None else []
    nodes = [
        node_factory.one(
            name=host.name,
            ip_addr=host.address,
            wrapper=host.wrapper,
            port=NODE_PORT,
            env={"NODE_TAG": host.name},
            extra_args=extra,
            wait=False,
        )
        for host in hosts
    ]
    for node in nodes:
        node.wait_ready()
    return nodes


def _relay(processes, tmp_path: Path, host: Host, *args: str) -> NetnsRelay:
    relay = NetnsRelay(tmp_path / f"relay-{len(processes)}", host, *args)
    processes.append(relay)
    return relay.start().wait_ready()  # type: ignore[return-value]


def _run(client, timeout: float = 60):
    """Wait for the client to end well; its ``done`` records and the nodes it saw."""
    client.wait_line("closed", timeout)
    assert client.wait(10) == 0, client.stderr_text()
    joined = json.loads(events(client, "nodes")[0])
    return done(client), {ip for ip, _port, _name in joined}


def _check(records, numbers, hosts: dict[str, Host], used: set[str]) -> None:
    """Each job ended once, finished, on a node of ``used`` (names) that returned its tag;
    every node of ``used`` ran some."""
    assert sorted(r["n"] for r in records) == sorted(numbers), records
    for record in records:
        assert record["status"] == DispyJob.Finished, record
        n, tag, value = record["result"]
        assert (n, value) == (record["n"], record["n"] ** 2 + 7), record
        assert hosts[tag].address == record["ip"], record
    assert {r["result"][1] for r in records} == used


def test_nodes_behind_a_listed_relay(topology, node_factory, processes, secret, tmp_path):
    _a, b, client_host, on_a, relay_host, on_b = _lans(topology)
    hosts = {h.name: h for h in on_a + on_b}
    _start(node_factory, on_a)
    _start(node_factory, on_b, relay=relay_host)
    relay = _relay(processes, tmp_path, relay_host)

    numbers = list(range(16))
    client = where_client(
        tmp_path / "all",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=["*", relay_host.address],
        secret=secret,
        expect_nodes=4,
        jobs=[(n, 0.2) for n in numbers],
        name="all",
    )
    records, joined = _run(client)
    assert joined == {h.address for h in hosts.values()}
    _check(records, numbers, hosts, set(hosts))
    assert relay.count(f"relayed ping of client {client_host.address}:") >= 1

    # B's pattern: A's nodes answer the broadcast on A and are not used.
    client = where_client(
        tmp_path / "only-b",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=[b.pattern(), relay_host.address],
        secret=secret,
        expect_nodes=2,
        jobs=[(n, 0.2) for n in numbers],
        name="only-b",
    )
    records, joined = _run(client)
    assert joined == {h.address for h in on_b}
    _check(records, numbers, hosts, {h.name for h in on_b})


def test_a_relay_announces_itself_to_a_running_client(
    topology, node_factory, processes, secret, tmp_path
):
    _a, _b, client_host, on_a, relay_host, on_b = _lans(topology)
    hosts = {h.name: h for h in on_a + on_b}
    a_nodes = _start(node_factory, on_a)
    _start(node_factory, on_b, relay=relay_host)

    numbers = list(range(16))
    client = where_client(
        tmp_path / "client",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=["*"],  # not the relay
        secret=secret,
        expect_nodes=4,
        node_timeout=40,
        jobs=[(n, 0.2) for n in numbers],
        options={"port": CLIENT_PORT},
    )
    # A's nodes serve it, so it listens (for relay announcements too); B's cannot know it.
    for node in a_nodes:
        node.wait_log(f"at {client_host.address}:{CLIENT_PORT}", timeout=20)
    assert not any(line.startswith("nodes") for line in client.lines())
    relay = _relay(
        processes, tmp_path, relay_host, "--scheduler_node", client_host.address,
        "--scheduler_port", str(CLIENT_PORT),
    )  # fmt: skip
    records, joined = _run(client)
    assert joined == {h.address for h in hosts.values()}
    _check(records, numbers, hosts, set(hosts))
    assert relay.count("announced this relay to") == 1
    assert f"relay {relay_host.address}:{NODE_PORT} announced itself" in client.stderr_text()


def test_a_relay_announces_itself_to_a_scheduler(
    topology, node_factory, processes, secret, cluster_secret, tmp_path
):
    a, _b, client_host, _on_a, relay_host, on_b = _lans(topology, a_nodes=0)
    sched_host = topology.host("sched", a)
    hosts = {h.name: h for h in on_b}
    _start(node_factory, on_b, relay=relay_host)
    sched = NetnsScheduler(tmp_path / "scheduler", sched_host, secret, cluster_secret)
    processes.append(sched)
    sched.start(wait=False)
    sched.wait_log(f"dispy-scheduler serving nodes at {sched_host.address}:", timeout=20)
    relay = _relay(
        processes, tmp_path, relay_host, "--scheduler_node", sched_host.address,
        "--scheduler_port", str(SCHEDULER_PORT),
    )  # fmt: skip
    for host in on_b:
        sched.wait_log(f"({host.address}:{NODE_PORT}) with 1 CPU(s) joined", timeout=30)

    numbers = list(range(12))
    client = where_client(
        tmp_path / "shared",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=["*"],
        secret=cluster_secret,
        expect_nodes=2,
        jobs=[(n, 0.2) for n in numbers],
        options={"scheduler_node": sched_host.address},
        cluster_class="SharedJobCluster",
    )
    records, joined = _run(client)
    assert joined == {h.address for h in on_b}
    _check(records, numbers, hosts, set(hosts))
    assert relay.count(f"relayed ping of scheduler {sched_host.address}:") >= 1
    assert sched.log_count(f"relay {relay_host.address}:{NODE_PORT} announced itself") == 1
