"""Sixteen nodes across two routed LANs, in network namespaces (issue 12).

Eight nodes share the client's LAN A and are found by its broadcast; eight sit on LAN B
behind the router and are listed by address. All sixteen must join and run jobs; the test
prints how long discovery took (from the cluster's creation until all sixteen serve it) and
records it as the test property ``discovery_seconds``.
"""

from __future__ import annotations

import json

import pytest
from harness.where_client import done, events, where_client

from dispy import DispyJob
from dispy_core.config import NODE_PORT

pytestmark = pytest.mark.timeout(120)

PER_LAN = 8


def test_sixteen_nodes_on_two_lans(topology, node_factory, secret, tmp_path, record_property):
    a = topology.lan("a")
    b = topology.lan("b")
    topology.router("router", [a, b])
    client_host = topology.host("client", a)
    hosts = [topology.host(f"a{i}", a) for i in range(PER_LAN)]
    hosts += [topology.host(f"b{i}", b) for i in range(PER_LAN)]
    nodes = [
        node_factory.one(
            name=host.name,
            ip_addr=host.address,
            wrapper=host.wrapper,
            port=NODE_PORT,
            env={"NODE_TAG": host.name},
            debug=False,
            wait=False,
        )
        for host in hosts
    ]
    for node in nodes:
        node.wait_ready(60)

    numbers = list(range(64))
    client = where_client(
        tmp_path / "client",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=[a.pattern(), *(h.address for h in hosts if h.lan is b)],
        secret=secret,
        expect_nodes=len(hosts),
        node_timeout=40,
        jobs=[(n, 0.5) for n in numbers],
    )
    client.wait_line("closed", 90)
    assert client.wait(10) == 0, client.stderr_text()

    seconds = float(events(client, "discovery")[0])
    # Shown with -s or -rP, and in a JUnit report (pytest-xdist keeps workers' output).
    print(f"discovery of {len(hosts)} nodes on two LANs took {seconds:.2f} s")
    record_property("discovery_seconds", seconds)
    joined = {ip for ip, _port, _name in json.loads(events(client, "nodes")[0])}
    assert joined == {h.address for h in hosts}
    records = done(client)
    assert sorted(r["n"] for r in records) == numbers, records
    by_name = {h.name: h for h in hosts}
    for record in records:
        assert record["status"] == DispyJob.Finished, record
        n, tag, value = record["result"]
        assert (n, value) == (record["n"], n * n + 7), record
        assert by_name[tag].address == record["ip"], record
    ran_on = {r["result"][1] for r in records}
    assert ran_on == set(by_name), f"64 jobs of 0.5 s ran only on {sorted(ran_on)}"
