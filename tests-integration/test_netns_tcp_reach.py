"""A node on another LAN reachable only through a TCP forwarder, in namespaces (issue 12).

The router between LAN A (the client) and LAN B (the node) forwards nothing between them
(nftables drops every packet, UDP and TCP, that would cross it); the only way across is a
plain TCP forwarder process on the router, listening on its LAN A address. The client lists
that address and port: its UDP pings there reach nothing, so the node is found only by the
client's TCP dial, and every message of the session goes through the forwarder.
"""

from __future__ import annotations

import json

import pytest
from harness.forwarder import Forwarder
from harness.where_client import done, events, where_client

from dispy import DispyJob

pytestmark = pytest.mark.timeout(90)

NODE_PORT = 9821
FORWARD_PORT = 9822


def test_a_node_behind_a_tcp_only_forward_on_the_router(topology, node_factory, secret, tmp_path):
    lan_a = topology.lan("a")
    lan_b = topology.lan("b")
    client_host = topology.host("client", lan_a)
    node_host = topology.host("node", lan_b)
    router = topology.router("r", [lan_a, lan_b])
    router.ns.nft(
        "table ip dispytest {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        "  }\n"
        "}\n"
    )
    node = node_factory.one(
        name="far",
        ip_addr=node_host.address,
        wrapper=node_host.wrapper,
        port=NODE_PORT,
        env={"NODE_TAG": "far"},
        wait=False,
    )
    node.wait_ready()
    forwarder = Forwarder(
        tmp_path / "forwarder",
        (lan_a.gateway, FORWARD_PORT),
        (node_host.address, NODE_PORT),
        wrapper=router.ns.wrapper,
    )
    try:
        numbers = list(range(8))
        client = where_client(
            tmp_path / "client",
            wrapper=client_host.wrapper,
            ip_addr=client_host.address,
            nodes=[(lan_a.gateway, FORWARD_PORT)],
            secret=secret,
            expect_nodes=1,
            jobs=[(n, 0.1) for n in numbers],
        )
        client.wait_line("closed", 60)
        assert client.wait(10) == 0, client.stderr_text()
        counts = forwarder.counts()
    finally:
        forwarder.kill()

    joined = [(ip, port) for ip, port, _name in json.loads(events(client, "nodes")[0])]
    assert joined == [(lan_a.gateway, FORWARD_PORT)]  # where the client reaches the node
    records = done(client)
    assert sorted(r["n"] for r in records) == numbers, records
    for record in records:
        assert record["status"] == DispyJob.Finished, record
        assert record["result"][1] == "far", record
        assert record["ip"] == lan_a.gateway, record
    assert counts["up"] > 0, counts
    assert counts["down"] > 0, counts
    assert counts["connections"] == 1, counts
    # The node saw only the router's LAN B address (the forwarder), never the client.
    node.wait_log(f"serving client where at {lan_b.gateway}:", timeout=5)
    assert client_host.address not in node.log_text()
