"""Authenticated connections (dispy_core.aio.connection) over in-memory streams and loopback."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dispy_core.aio.connection import (
    Connection,
    ConnectionClosed,
    PeerRefused,
    accept_connection,
    open_connection,
)
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.framing import FrameEncoder
from dispy_core.protocol.handshake import HandshakeFailed
from dispy_core.protocol.messages import (
    ComputationClosed,
    JobCancel,
    Notice,
    Welcome,
    encode,
)
from dispy_core.testing import (
    PairHandshakeError,
    async_test,
    memory_connection_pair,
    memory_stream_pair,
)

SECRET = "a secret only these two share"


# --- messages and payloads -------------------------------------------------------------------


@async_test()
async def test_messages_with_payloads_cross_in_both_directions():
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="from node"), b"\x00binary\xff")
        await client.send(JobCancel(comp_id=3, job_ids=[1, 2]))
        assert await client.recv() == (Notice(text="from node"), b"\x00binary\xff")
        assert await node.recv() == (JobCancel(comp_id=3, job_ids=[1, 2]), b"")


@async_test()
async def test_ten_mib_payload_crosses_intact():
    payload = bytes(range(256)) * (10 * 4096)  # 10 MiB: several chunks
    async with memory_connection_pair(SECRET) as pair:
        await pair.connector.send(ComputationClosed(comp_id=1), memoryview(payload))
        message, received = await pair.acceptor.recv()
    assert message == ComputationClosed(comp_id=1)
    assert received == payload
    assert pair.to_acceptor.delivered > len(payload)  # prefixes and MACs on top


@async_test()
async def test_many_queued_messages_arrive_in_order():
    async with memory_connection_pair(SECRET) as (node, client):
        for i in range(500):
            node.send_nowait(ComputationClosed(comp_id=i), str(i).encode())
        await node.drain()
        for i in range(500):
            assert await client.recv() == (ComputationClosed(comp_id=i), str(i).encode())


@async_test()
async def test_peer_identity_is_known_after_the_handshake():
    pair = await memory_connection_pair(
        SECRET, role_a="node", role_b="scheduler", name_a="node-7", name_b="sched"
    )
    try:
        assert (pair.connector.peer_role, pair.connector.peer_name) == ("scheduler", "sched")
        assert (pair.acceptor.peer_role, pair.acceptor.peer_name) == ("node", "node-7")
        assert "node-7" in repr(pair.acceptor)
    finally:
        await pair.aclose()


@async_test()
async def test_empty_secret_connects():
    async with memory_connection_pair("") as (node, client):
        await node.send(Notice(text="x"))
        assert (await client.recv())[0] == Notice(text="x")


@async_test()
async def test_message_over_the_size_limit_is_refused():
    async with memory_connection_pair(SECRET, max_message=1024) as (node, client):
        await node.send(Notice(text="big"), b"x" * 2048)
        with pytest.raises(RemoteProtocolError, match="exceeds the limit of 1024"):
            await client.recv()


# --- handshake failures ------------------------------------------------------------------------


@async_test()
async def test_wrong_secret_fails_on_both_ends():
    with pytest.raises(PairHandshakeError) as info:
        await memory_connection_pair("right", "wrong")
    assert isinstance(info.value.connector_error, HandshakeFailed)
    assert isinstance(info.value.acceptor_error, HandshakeFailed)
    assert "secret" in str(info.value.connector_error)
    assert "secret" in str(info.value.acceptor_error)  # it received the refusal


async def accept_after(data: bytes = b"", *, close: bool = False, timeout: float = 5.0):
    """Run the acceptor's handshake against a peer that sends ``data`` (then maybe EOF)."""
    (_, peer), (reader, writer), _ = memory_stream_pair()
    try:
        if data:
            peer.write(data)
        if close:
            peer.close()
        return await accept_connection(
            reader, writer, secret=SECRET, role="client", name="c", timeout=timeout
        )
    finally:
        peer.close()
        writer.close()


@async_test()
async def test_garbage_before_the_handshake_is_rejected():
    with pytest.raises(RemoteProtocolError, match="not a dispy frame"):
        await accept_after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@async_test()
async def test_payload_during_the_handshake_is_rejected():
    frame = b"".join(FrameEncoder().encode(encode(Welcome()), b"unauthenticated bytes"))
    with pytest.raises(RemoteProtocolError, match="exceeds 0"):
        await accept_after(frame)


@async_test()
async def test_session_message_before_authentication_is_rejected():
    frame = b"".join(bytes(p) for p in FrameEncoder().encode(encode(Notice(text="let me in"))))
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        await accept_after(frame)


@async_test()
async def test_peer_closing_during_the_handshake_raises_connection_closed():
    with pytest.raises(ConnectionClosed, match="during the handshake"):
        await accept_after(close=True)


@async_test()
async def test_silent_peer_times_out_the_handshake():
    with pytest.raises(TimeoutError):
        await accept_after(timeout=0.05)


# --- the wire after the handshake -----------------------------------------------------------


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x80])


@async_test()
async def test_frame_tampered_on_the_wire_raises_remote_protocol_error():
    async with memory_connection_pair(SECRET) as pair:
        pair.to_acceptor.intercept = _flip_last_byte
        await pair.connector.send(Notice(text="pay 10"), b"10")
        with pytest.raises(RemoteProtocolError, match="authentication failed"):
            await pair.acceptor.recv()


@async_test()
async def test_frame_replayed_on_the_wire_raises_remote_protocol_error():
    async with memory_connection_pair(SECRET) as pair:
        pair.to_acceptor.intercept = lambda data: data + data
        await pair.connector.send(Notice(text="once"))
        assert (await pair.acceptor.recv())[0] == Notice(text="once")
        with pytest.raises(RemoteProtocolError, match="replayed"):
            await pair.acceptor.recv()


@async_test()
async def test_frame_dropped_on_the_wire_is_detected_at_the_next_frame():
    async with memory_connection_pair(SECRET) as pair:
        dropped: list[bytes] = []

        def drop_first(data: bytes) -> bytes:
            if not dropped:
                dropped.append(data)
                return b""
            return data

        pair.to_connector.intercept = drop_first
        await pair.acceptor.send(Notice(text="first"))
        await pair.acceptor.send(Notice(text="second"))
        with pytest.raises(RemoteProtocolError, match="authentication failed"):
            await pair.connector.recv()


@async_test()
async def test_secret_never_crosses_the_wire():
    secret = "correct horse battery staple 42"
    async with memory_connection_pair(secret, record=True) as pair:
        await pair.connector.send(Notice(text="hello"), b"payload")
        await pair.acceptor.recv()
    wire = bytes(pair.to_acceptor.record or b"") + bytes(pair.to_connector.record or b"")
    assert b"payload" in wire  # the recording works
    raw = secret.encode()
    for form in (raw, hashlib.sha256(raw).digest(), hashlib.sha256(raw).hexdigest().encode(),
                 hashlib.sha1(raw).digest(), hashlib.sha1(raw).hexdigest().encode()):  # fmt: skip
        assert form not in wire


# --- ending a session ---------------------------------------------------------------------------


@async_test()
async def test_refuse_ends_the_session_with_a_reason():
    async with memory_connection_pair(SECRET) as (node, client):
        await client.refuse("node not used by this cluster")
        with pytest.raises(PeerRefused) as info:
            await node.recv()
        assert info.value.reason == "node not used by this cluster"
        assert client.closed


@async_test()
async def test_close_makes_the_peer_see_connection_closed():
    async with memory_connection_pair(SECRET) as (node, client):
        await node.close()
        with pytest.raises(ConnectionClosed, match="closed the connection"):
            await client.recv()
        assert client.closed


@async_test()
async def test_send_after_close_raises_connection_closed():
    async with memory_connection_pair(SECRET) as (node, _client):
        await node.close()
        with pytest.raises(ConnectionClosed, match="is closed"):
            await node.send(Notice(text="too late"))


# --- the same over TCP on loopback ----------------------------------------------------------------


@async_test()
async def test_tcp_loopback_connection_round_trips():
    accepted: asyncio.Queue[Connection | BaseException] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await accept_connection(
                reader, writer, secret=SECRET, role="client", name="cluster", timeout=5.0
            )
        except Exception as exc:  # surfaced by the test below
            await accepted.put(exc)
        else:
            await accepted.put(conn)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        node = await open_connection(
            "127.0.0.1", port, secret=SECRET, role="node", name="n1", timeout=5.0
        )
        client = await accepted.get()
        assert isinstance(client, Connection)
        await node.send(Notice(text="over tcp"), b"x" * 100_000)
        assert await client.recv() == (Notice(text="over tcp"), b"x" * 100_000)
        assert client.peer[0] == "127.0.0.1"
        await node.close()
        await client.close()


@async_test()
async def test_tcp_connect_with_wrong_secret_fails_on_both_ends():
    accepted: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await accept_connection(
                reader, writer, secret="one", role="client", name="c", timeout=5.0
            )
        except Exception as exc:
            await accepted.put(exc)
        else:
            await accepted.put(None)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(HandshakeFailed, match="secret"):
            await open_connection(
                "127.0.0.1", port, secret="other", role="node", name="n", timeout=5.0
            )
        err = await accepted.get()
        assert isinstance(err, HandshakeFailed)
        assert "secret" in str(err)


@async_test()
async def test_tcp_server_speaking_garbage_is_rejected_by_the_connector():
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(RemoteProtocolError, match="not a dispy frame"):
            await open_connection(
                "127.0.0.1", port, secret=SECRET, role="node", name="n", timeout=5.0
            )
