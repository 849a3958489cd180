"""Pings leave from the address they name (nodes connect back only to a ping's source)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from dispy._pinger import Pinger
from dispy_core.protocol.discovery import Ping, decode_ping


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
