"""Pings leave from the address they name (nodes connect back only to a ping's source)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from dispy._pinger import Pinger
from dispy.nodes import NodeAllocate
from dispy_core.protocol.discovery import Ping, RelayAnnounce, decode_ping, encode_relay
from dispy_core.protocol.fanout import Target


def test_each_ping_leaves_from_a_socket_bound_to_its_reply_address():
    opts = SimpleNamespace(ip_addrs=["127.0.0.1", "127.0.0.2"], ext_ip_addrs=[])
    pinger = Pinger(opts, "token-0123456789")  # type: ignore[arg-type]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node:
        node.bind(("127.0.0.1", 0))
        node.settimeout(5)
        pinger.start(4242)
        try:
            for reply in ("127.0.0.2", "127.0.0.1", "127.0.0.9"):
                ping = Ping(cluster="token-0123456789", reply_addr=reply, reply_port=4242)
                pinger._send(ping, node.getsockname())
                data, source = node.recvfrom(2048)
                assert decode_ping(data).reply_addr == reply
                # an address the client does not listen on leaves from the first one
                assert source[0] == (reply if reply != "127.0.0.9" else "127.0.0.1")
        finally:
            pinger.close()
    assert pinger._socks == {}


def test_relays_heard_of_are_pinged_with_the_listed_nodes_once_each():
    nodes = [NodeAllocate("*"), NodeAllocate("10.0.0.1", port=51348)]
    opts = SimpleNamespace(ip_addrs=[], ext_ip_addrs=[], nodes=nodes, node_port=51348)
    pinger = Pinger(opts, "token-0123456789")  # type: ignore[arg-type]
    for source, port in (("10.0.0.1", 51348), ("10.0.0.2", 4000)):
        announce = RelayAnnounce(relay_addr="172.16.3.2", relay_port=port)
        pinger.relays._heard(encode_relay(announce), source)  # no sender yet: no ping
    # the relay listed already is not pinged twice; the other is pinged at its source
    assert pinger.targets() == [Target("*"), Target("10.0.0.1", 51348), Target("10.0.0.2", 4000)]
