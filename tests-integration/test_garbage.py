"""Hostile or broken peers on the node's ports: logged, survived, and real clients still served."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct

import pytest
from harness import History, free_port, wait_for
from harness.computations import square_plus

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

PREFIX = struct.Struct("!BBII")  # magic, flags, header length, payload length
MAGIC = 0xD5


def _random_garbage():
    data = bytearray(os.urandom(4096))
    data[0] = 0x42  # anything but the frame magic
    return bytes(data)


TCP_GARBAGE = {
    "random bytes": (_random_garbage(), "not a dispy frame"),
    "huge header length": (PREFIX.pack(MAGIC, 0, 0xFFFFFFF0, 0xFFFFFFFF), "exceeds"),
    "huge payload length": (PREFIX.pack(MAGIC, 0, 16, 0xFFFFFFFF) + b"x" * 16, "exceeds"),
    "malformed handshake": (
        PREFIX.pack(MAGIC, 0, 17, 0) + b'{"type": "hello"}',
        "malformed handshake",
    ),
}


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer closed (EOF or reset); False while the connection is open."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def test_garbage_on_node_ports_logged_and_survived(node_factory, cluster_factory):
    # A long message timeout keeps the half-open connection pending during the whole test.
    node = node_factory.one(cpus=1, name="target", extra_args=["--msg_timeout", "20"])

    half_open = socket.create_connection(node.address, timeout=5)
    try:
        for label, (data, expected) in TCP_GARBAGE.items():
            seen = node.log_count(expected)
            with socket.create_connection(node.address, timeout=5) as sock:
                # The node may refuse (and reset) before reading everything.
                with contextlib.suppress(ConnectionResetError):
                    sock.sendall(data)
                wait_for(lambda s=sock: _closed_by_peer(s), 10, f"node should hang up on {label}")
            node.wait_log(expected, count=seen + 1)
            assert node.log_contains("refused:"), node.log_text()

        # A client that connects and leaves without a word.
        socket.create_connection(node.address, timeout=5).close()
        node.wait_log("dropped before authentication", count=1)

        pong = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pong:
            pong.bind(("127.0.0.1", 0))
            nowhere = free_port()  # a well-formed ping asking the node to call a dead port
            datagrams = [
                os.urandom(512),
                b"\x00" * 4000,  # larger than any ping
                b'{"type": "ping"}',
                json.dumps(
                    {"type": "ping", "protocol": 999, "cluster": "c" * 16,
                     "reply_addr": "127.0.0.1", "reply_port": 9}
                ).encode(),
                json.dumps(
                    {"type": "ping", "cluster": "dead-client-0001", "reply_addr": "127.0.0.1",
                     "reply_port": nowhere}
                ).encode(),
                b"",
            ]  # fmt: skip
            for datagram in datagrams:
                pong.sendto(datagram, node.address)
        node.wait_log("ignoring datagram")
        node.wait_log("too large")
        node.wait_log("protocol version")
        node.wait_log(f"cannot reach client at 127.0.0.1:{nowhere}")
        assert node.running()

        # A real client is served while the half-open connection is still pending.
        history = History()
        cluster = cluster_factory(
            square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
        )
        for i in range(50):
            history.submit(cluster, i)
        assert cluster.wait(timeout=30), history.summary()
        history.check(square_plus, allowed={DispyJob.Finished})
        cluster.close()
        assert _still_open(half_open), "the node closed the silent connection early"
    finally:
        half_open.close()
    node.wait_log("dropped before authentication", count=2)
    assert node.running()
