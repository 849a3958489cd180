"""Two nodes behind one NAT gateway address, in network namespaces (issue 12).

The nodes sit on an inside LAN the client cannot route to. The gateway masquerades what
leaves the inside and forwards (DNAT) two of its outside ports, one to each node; each node
listens on its own port and announces the gateway's address (``--ext_ip_addr``). The client,
outside, lists ``(gateway, port)`` for each: two nodes at one address, each running jobs.
"""

from __future__ import annotations

import json

import pytest
from harness.where_client import done, events, where_client

from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)

PORTS = (9811, 9812)


def test_two_nodes_behind_one_gateway(topology, node_factory, secret, tmp_path):
    outside = topology.lan("out")
    inside = topology.lan("in")
    # The client reaches only its own LAN: the gateway's outside address, not the inside.
    client_host = topology.host("client", outside, route=False)
    hidden = [topology.host(f"n{i}", inside) for i in (1, 2)]
    gateway = topology.nat_gateway("gw", outside, inside, list(zip(PORTS, hidden, strict=True)))
    public = outside.gateway
    del gateway

    nodes = [
        node_factory.one(
            name=host.name,
            ip_addr=host.address,
            wrapper=host.wrapper,
            port=port,
            env={"NODE_TAG": host.name},
            extra_args=["--ext_ip_addr", public],
            wait=False,
        )
        for port, host in zip(PORTS, hidden, strict=True)
    ]
    for node in nodes:
        node.wait_ready()

    numbers = list(range(16))
    client = where_client(
        tmp_path / "client",
        wrapper=client_host.wrapper,
        ip_addr=client_host.address,
        nodes=[(public, port) for port in PORTS],
        secret=secret,
        expect_nodes=2,
        jobs=[(n, 0.2) for n in numbers],
    )
    client.wait_line("closed", 60)
    assert client.wait(10) == 0, client.stderr_text()

    joined = sorted((ip, port) for ip, port, _name in json.loads(events(client, "nodes")[0]))
    assert joined == [(public, port) for port in PORTS]
    records = done(client)
    assert sorted(r["n"] for r in records) == numbers, records
    for record in records:
        assert record["status"] == DispyJob.Finished, record
        n, _tag, value = record["result"]
        assert (n, value) == (record["n"], n * n + 7), record
        assert record["ip"] == public, record
    assert {r["result"][1] for r in records} == {"n1", "n2"}
    for node in nodes:
        # The node saw the client at its own address (the DNAT keeps the source), and
        # reached it through the gateway.
        node.wait_log(f"serving client where at {client_host.address}:", timeout=5)
