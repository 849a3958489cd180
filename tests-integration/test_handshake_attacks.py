"""Attacks on the handshake of a real node: it refuses them, logs why, and serves a real client.

The hostile peer here is a bare socket in the test: the node connects back to it after a
UDP ping, exactly as it would to a client, and gets bytes no real client sends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct

import pytest
from harness import History
from harness.computations import square_plus

from dispy import DispyJob
from dispy_core.protocol.discovery import Ping, encode_ping
from dispy_core.protocol.messages import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(90)

PREFIX = struct.Struct("!BBII")  # magic, flags, header length, payload length
MAGIC = 0xD5
HEX64 = "ab" * 32
PAKE = "42" + "00" * 32  # the shape of an acceptor's SPAKE2 message


def _frame(header: dict[str, object]) -> bytes:
    data = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, 0, len(data), 0) + data


def _read_frame(sock: socket.socket) -> dict[str, object]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed before a whole frame")
            buf += chunk
        return buf

    _magic, _flags, hlen, plen = PREFIX.unpack(exactly(PREFIX.size))
    header = json.loads(exactly(hlen))
    exactly(plen)
    assert isinstance(header, dict)
    return header


def _drain_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the peer sends until it closes (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _ping(node_address: tuple[str, int], reply_port: int, cluster: str) -> None:
    ping = Ping(cluster=cluster, reply_addr="127.0.0.1", reply_port=reply_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.sendto(encode_ping(ping), node_address)


def _challenge(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "challenge",
        "protocol": PROTOCOL_VERSION,
        "role": "client",
        "name": "fake",
        "nonce": HEX64,
    }
    return {**base, **fields}


# Answers a fake client gives to the node's hello. The first is the attack of the security
# review (a non-ASCII proof made hmac.compare_digest raise TypeError inside the node); the
# others are the same idea on every field of the challenge, with and without a SPAKE2 message.
MALFORMED_CHALLENGES = {
    "non-ASCII proof": _challenge(proof="é" * 64),
    "non-ASCII proof beside a key-exchange message": _challenge(pake=PAKE, proof="é" * 64),
    "non-hex nonce": _challenge(nonce="zz" * 32, pake=PAKE, proof=HEX64),
    "short proof": _challenge(pake=PAKE, proof="ab"),
    "non-ASCII key-exchange message": _challenge(pake="é" * 66, proof=HEX64),
    "key-exchange message not on the curve": _challenge(pake="42" + "ff" * 32, proof=HEX64),
}


def test_malformed_challenges_do_not_wedge_the_node(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="target")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen(4)
        fake.settimeout(10)
        fake_port = fake.getsockname()[1]
        for i, (label, challenge) in enumerate(MALFORMED_CHALLENGES.items()):
            warned = node.log_count(f"client at 127.0.0.1:{fake_port}")
            # A fresh cluster id each time: the node declines a cluster whose handshake failed.
            _ping(node.address, fake_port, f"fake-cluster-{i:04d}")
            conn, _ = fake.accept()
            with conn:
                conn.settimeout(10)
                hello = _read_frame(conn)
                assert hello["type"] == "hello", hello
                conn.sendall(_frame(challenge))
                answer = _drain_until_closed(conn, 10)
            assert b"welcome" not in answer, label
            node.wait_log(f"client at 127.0.0.1:{fake_port}", count=warned + 1)
            assert node.running(), label
    assert not node.log_contains("Traceback"), node.log_text()

    # The node is free: a real client with the right secret gets it.
    history = History()
    cluster = cluster_factory(
        square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    for i in range(5):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary() + "\n" + node.log_text()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()


def test_ping_naming_the_nodes_own_port_does_not_make_it_serve_itself(
    node_factory, cluster_factory
):
    node = node_factory.one(cpus=1, name="target")
    # Anyone may send this datagram: "a client waits at <the node's own address and port>".
    _ping(node.address, node.address[1], "loop-cluster-0001")
    # Both ends of the looped connection refuse it: the acceptor (its own connector's nonce)
    # and the connector (told so by the refusal).
    node.wait_log("a connection to itself", count=2)
    assert node.log_contains("connection from 127.0.0.1"), node.log_text()
    assert node.log_contains(f"client at 127.0.0.1:{node.address[1]}: the peer refused")
    assert not node.log_contains("serving client target"), node.log_text()

    history = History()
    cluster = cluster_factory(
        square_plus, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    for i in range(5):
        history.submit(cluster, i)
    assert cluster.wait(timeout=30), history.summary() + "\n" + node.log_text()
    history.check(square_plus, allowed={DispyJob.Finished})
    cluster.close()
    assert not node.log_contains("serving client target")
