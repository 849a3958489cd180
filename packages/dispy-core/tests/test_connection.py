"""Authenticated connections (dispy_core.aio.connection) over in-memory streams and loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import pytest

from dispy_core.aio.connection import (
    Connection,
    ConnectionClosed,
    PeerRefused,
    accept_connection,
    open_connection,
)
from dispy_core.protocol.errors import RemoteProtocolError, VersionMismatchError
from dispy_core.protocol.framing import FrameDecoder, FrameEncoder
from dispy_core.protocol.handshake import HandshakeFailed, parse_handshake
from dispy_core.protocol.messages import (
    PROTOCOL_VERSION,
    ComputationClosed,
    JobCancel,
    Notice,
    Refused,
    Welcome,
    encode,
)
from dispy_core.testing import (
    PairHandshakeError,
    async_test,
    async_wait_for,
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


async def _loopback_pair(allocate=None) -> tuple[Connection, Connection, asyncio.Server]:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = await accept_connection(
            reader, writer, secret=SECRET, role="client", name="c", timeout=5.0, allocate=allocate
        )
        await accepted.put(conn)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = await open_connection(
        "127.0.0.1", port, secret=SECRET, role="node", name="n", timeout=5.0
    )
    client = await asyncio.wait_for(accepted.get(), 5.0)
    return node, client, server


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh-buffers", "buffer-pool"])
@async_test(timeout=60)
async def test_large_payloads_in_parts_cross_loopback_between_small_messages(pooled):
    from dispy_core.buffers import BufferPool

    pool = BufferPool() if pooled else None
    node, client, server = await _loopback_pair(pool.take if pool else None)
    try:
        expected = []
        for i in range(12):
            # distinct contents each time: a reused receive buffer must not leak old bytes
            big = hashlib.sha256(str(i).encode()).digest() * ((3 << 20) // 32 + i)
            parts = [b"head", big, memoryview(b"tail-%d" % i)]
            node.send_nowait(ComputationClosed(comp_id=i), parts)
            node.send_nowait(Notice(text=f"small {i}"))
            expected.append((ComputationClosed(comp_id=i), b"".join(bytes(p) for p in parts)))
            expected.append((Notice(text=f"small {i}"), b""))
        drained = asyncio.ensure_future(node.drain())
        for want in expected:
            message, payload = await asyncio.wait_for(client.recv(), 30)
            assert (message, bytes(payload)) == want
            del payload  # lets the pool hand its buffer out again
        await asyncio.wait_for(drained, 30)
        if pool is not None:
            # each payload went into a buffer the previous ones had used
            assert 0 < pool.kept_bytes <= 2 * (4 << 20)
    finally:
        await node.close()
        await client.close()
        server.close()


@async_test(timeout=60)
async def test_messages_sent_while_a_large_payload_streams_wait_their_turn():
    node, client, server = await _loopback_pair()
    # As over TLS: no MAC follows the payload, so nothing is left queued behind it while
    # its last slices are written.
    node._encoder.authenticator = None
    client._decoder.authenticator = None
    try:
        big = hashlib.sha256(b"big").digest() * ((24 << 20) // 32)
        node.send_nowait(ComputationClosed(comp_id=0), big)
        received = asyncio.ensure_future(asyncio.wait_for(client.recv(), 30))
        sent = 0
        # The window that matters: the transport has just drained (writing resumed) but the
        # task streaming the large payload has not yet written its next slice. A message
        # sent then must wait for the rest of the payload, not slip in between its slices.
        for _ in range(100_000):
            if node._streamer is None:
                break
            if not node._outq and not node._paused_writing:
                node.send_nowait(Notice(text=f"small {sent}"))
                sent += 1
            await asyncio.sleep(0)
        assert sent > 0, "the large payload went out before any small message was sent"
        message, payload = await received
        assert (message, bytes(payload) == big) == (ComputationClosed(comp_id=0), True)
        for i in range(sent):
            assert await asyncio.wait_for(client.recv(), 10) == (Notice(text=f"small {i}"), b"")
    finally:
        await node.close()
        await client.close()
        server.close()


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
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 0 bytes"):
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


async def refusal_after_hello(hello: dict) -> tuple[BaseException, list]:
    """Send a raw hello to an acceptor; return its error and the frames it sent back."""
    (peer_reader, peer), (reader, writer), _ = memory_stream_pair()
    peer.writelines(FrameEncoder().encode(json.dumps(hello).encode()))
    try:
        await accept_connection(reader, writer, secret=SECRET, role="client", name="c", timeout=5.0)
    except Exception as exc:
        error = exc
    else:
        raise AssertionError("the acceptor took a hello of another version")
    finally:
        writer.close()
    decoder = FrameDecoder(max_message=0)
    frames = decoder.frames(await peer_reader.read())
    peer.close()
    return error, [parse_handshake(f.header) for f in frames]


@async_test()
async def test_hello_of_another_version_is_refused_naming_both_versions():
    hello = {
        "type": "hello",
        "protocol": 999,
        "role": "node",
        "name": "n",
        "nonce": "a" * 64,
        "pake": "41" + "a" * 64,
    }
    error, replies = await refusal_after_hello(hello)
    assert isinstance(error, HandshakeFailed)
    assert [type(r) for r in replies] == [Refused]
    assert "version 999" in replies[0].reason
    assert f"version {PROTOCOL_VERSION}" in replies[0].reason


@async_test()
async def test_unparsable_hello_of_another_version_gets_a_refusal_naming_both_versions():
    hello = {"type": "hello", "protocol": 999, "features": ["x"], "nonce": "a" * 64}
    error, replies = await refusal_after_hello(hello)
    assert isinstance(error, VersionMismatchError)
    assert [type(r) for r in replies] == [Refused]
    assert "version 999" in replies[0].reason


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
    forms = [raw]
    for algo in (hashlib.sha256, hashlib.sha1):
        forms += [algo(raw).digest(), algo(raw).hexdigest().encode()]
    for form in forms:
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


async def _tcp_pair() -> tuple[asyncio.Server, Connection, Connection]:
    accepted: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(
            await accept_connection(
                reader, writer, secret=SECRET, role="client", name="cluster", timeout=5.0
            )
        )

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = await open_connection(
        "127.0.0.1", port, secret=SECRET, role="node", name="n1", timeout=5.0
    )
    return server, node, await asyncio.wait_for(accepted, 5)


PAST_THE_PAUSE_MARK = bytes(range(256)) * (48 * 4096)  # 48 MiB, over PAUSE_READING_AT


@async_test(timeout=30)
async def test_a_message_larger_than_the_pause_mark_reaches_recv():
    # Reading paused at 32 MiB of a 48 MiB payload and never resumed: the payload's own
    # buffer was counted as backlog, and it only shrinks once the whole message is in.
    server, node, client = await _tcp_pair()
    async with server:
        # The reader waits while the writer sends, as a real peer does (nobody reading at
        # all would rightly stop the writer once 32 MiB wait unread).
        receiving = asyncio.ensure_future(client.recv())
        await node.send(Notice(text="big"), memoryview(PAST_THE_PAUSE_MARK))
        message, payload = await asyncio.wait_for(receiving, 20)
        assert message == Notice(text="big")
        assert bytes(payload) == PAST_THE_PAUSE_MARK
        await node.close()
        await client.close()


@async_test(timeout=30)
async def test_a_large_message_behind_a_blocked_handler_arrives_once_it_unblocks():
    server, node, client = await _tcp_pair()
    release = asyncio.Event()
    seen: list[tuple[str, int]] = []

    async def blocked() -> None:
        await release.wait()

    def handler(message, payload):
        seen.append((message.text, len(payload)))
        if message.text == "big":
            client.finish("done")
            return None
        return blocked()

    async with server:
        node.send_nowait(Notice(text="first"))
        node.send_nowait(Notice(text="big"), memoryview(PAST_THE_PAUSE_MARK))
        serving = asyncio.ensure_future(client.serve(handler))
        await async_wait_for(lambda: seen == [("first", 0)], timeout=5)
        await asyncio.sleep(0.5)  # the big one arrives while the handler is blocked
        release.set()
        assert await asyncio.wait_for(serving, 20) == "done"
        assert seen == [("first", 0), ("big", len(PAST_THE_PAUSE_MARK))]
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


# --- serve(): messages handed to a handler in order ---------------------------------------------


@async_test()
async def test_serve_hands_messages_to_the_handler_in_order_and_returns_finish_value():
    async with memory_connection_pair(SECRET) as (node, client):
        seen: list[int] = []

        async def slow_first(comp_id: int) -> None:
            await asyncio.sleep(0.01)  # later messages must wait for this one
            seen.append(comp_id)

        def handler(message, payload):
            assert isinstance(message, ComputationClosed)
            if message.comp_id == 0:
                return slow_first(0)
            seen.append(message.comp_id)
            if message.comp_id == 4:
                client.finish("done")
            return None

        for i in range(6):
            node.send_nowait(ComputationClosed(comp_id=i))
        assert await client.serve(handler) == "done"
        assert seen == [0, 1, 2, 3, 4]
        assert await client.recv() == (ComputationClosed(comp_id=5), b"")  # left for recv


@async_test()
async def test_serve_raises_what_the_handler_raised():
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="boom"))

        def handler(message, payload):
            raise ValueError(f"cannot handle {message.type}")

        with pytest.raises(ValueError, match="cannot handle notice"):
            await client.serve(handler)


@async_test()
async def test_serve_ends_with_peer_refused_when_the_peer_refuses():
    async with memory_connection_pair(SECRET) as (node, client):
        serving = asyncio.ensure_future(client.serve(lambda message, payload: None))
        await asyncio.sleep(0)
        await node.refuse("node shutting down")
        with pytest.raises(PeerRefused, match="node shutting down"):
            await serving


@async_test()
async def test_serve_until_end_says_why_and_refuses_the_peer_after_a_bug_here(caplog):
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="boom"))

        def handler(message, payload):
            raise ValueError("cannot handle it")

        log = logging.getLogger("test-serve-until-end")
        reason = await client.serve_until_end(handler, log=log, peer="node n", side="client")
        assert reason == "client error: ValueError: cannot handle it"
        with pytest.raises(PeerRefused, match="client error: ValueError: cannot handle it"):
            await node.recv()
        assert "node n: error while handling its messages" in caplog.text


@async_test()
async def test_serve_until_end_returns_the_peers_refusal():
    async with memory_connection_pair(SECRET) as (node, client):
        serving = asyncio.ensure_future(
            client.serve_until_end(
                lambda message, payload: None,
                log=logging.getLogger("t"),
                peer="node n",
                side="client",
            )
        )
        await asyncio.sleep(0)
        await node.refuse("node shutting down")
        assert await serving == "node shutting down"


@async_test()
async def test_recv_reads_messages_that_arrived_before_the_peer_closed():
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="last words"))
        await node.refuse("bye")
        await async_wait_for(lambda: client.closed, timeout=5.0, message="the close to arrive")
        assert await client.recv() == (Notice(text="last words"), b"")
        with pytest.raises(PeerRefused, match="bye"):
            await client.recv()


@async_test()
async def test_serve_reads_messages_that_arrived_before_the_peer_closed():
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="last words"))
        await node.refuse("bye")
        await async_wait_for(lambda: client.closed, timeout=5.0, message="the close to arrive")
        seen = []
        with pytest.raises(PeerRefused, match="bye"):
            await client.serve(lambda message, payload: seen.append(message))
        assert seen == [Notice(text="last words")]


@async_test()
async def test_serve_finishes_queued_messages_when_the_peer_closes_during_a_handler():
    async with memory_connection_pair(SECRET) as (node, client):
        seen: list[int] = []
        release = asyncio.Event()

        async def wait_then_record(comp_id: int) -> None:
            await release.wait()
            seen.append(comp_id)

        def handler(message, payload):
            if message.comp_id == 1:
                return wait_then_record(1)
            seen.append(message.comp_id)
            return None

        serving = asyncio.ensure_future(client.serve(handler))
        node.send_nowait(ComputationClosed(comp_id=1))
        node.send_nowait(ComputationClosed(comp_id=2))
        await node.close()
        await async_wait_for(lambda: client.closed, timeout=5.0, message="the close to arrive")
        release.set()
        with pytest.raises(ConnectionClosed):
            await serving
        await async_wait_for(lambda: 1 in seen, timeout=5.0, message="the first handler")
        assert seen == [1, 2]  # the message queued behind the handler was handled too


@async_test(timeout=30)
async def test_buffers_stay_small_until_the_handshake_succeeds():
    from dispy_core.aio.admission import start_server
    from dispy_core.aio.connection import HANDSHAKE_READ_LIMIT
    from dispy_core.aio.tasks import TaskOwner
    from dispy_core.protocol.framing import HANDSHAKE_SCRATCH, SCRATCH_SIZE

    seen: list[int] = []
    accepted: asyncio.Queue[Connection] = asyncio.Queue()
    original = FrameDecoder.__init__

    def spy(self, *args, **kwargs):  # every decoder a handshake creates
        original(self, *args, **kwargs)
        seen.append(len(self._buf))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert reader._limit == HANDSHAKE_READ_LIMIT
        conn = await accept_connection(
            reader, writer, secret=SECRET, role="client", name="c", timeout=5.0
        )
        await accepted.put(conn)

    tasks = TaskOwner("test")
    server = await start_server(
        on_client, tasks=tasks, host="127.0.0.1", port=0, ssl_context=None, handshake_timeout=5.0
    )
    FrameDecoder.__init__ = spy  # type: ignore[method-assign]
    try:
        port = server.sockets[0].getsockname()[1]
        node = await open_connection(
            "127.0.0.1", port, secret=SECRET, role="node", name="n", timeout=5.0
        )
        client = await asyncio.wait_for(accepted.get(), 5.0)
    finally:
        FrameDecoder.__init__ = original  # type: ignore[method-assign]
    assert seen == [HANDSHAKE_SCRATCH, HANDSHAKE_SCRATCH]
    for conn in (node, client):
        assert len(conn._decoder._buf) == SCRATCH_SIZE  # sessions read in large pieces
    await node.close()
    await client.close()
    server.close()
    await tasks.close()


# --- expect(): the first message of a session --------------------------------------------


@async_test()
async def test_expect_returns_the_first_message_of_the_expected_type():
    log = logging.getLogger("test.expect")
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(ComputationClosed(comp_id=4))
        assert await client.expect(ComputationClosed, 5.0, log, "close") == ComputationClosed(
            comp_id=4
        )


@async_test()
async def test_expect_refuses_another_message_naming_what_it_expected():
    log = logging.getLogger("test.expect")
    async with memory_connection_pair(SECRET) as (node, client):
        await node.send(Notice(text="hello"))
        assert await client.expect(ComputationClosed, 5.0, log, "close") is None
        with pytest.raises(PeerRefused, match=r"expected computation\.closed, got notice"):
            await node.recv()


@async_test()
async def test_expect_gives_up_on_a_silent_peer_once_with_one_log_line(caplog):
    log = logging.getLogger("test.expect")
    async with memory_connection_pair(SECRET) as (_node, client):
        with caplog.at_level(logging.WARNING, logger="test.expect"):
            assert await client.expect(ComputationClosed, 0.05, log, "close") is None
        assert [r.getMessage().split(" failed")[0] for r in caplog.records] == [
            f"close from {client.peer_name}"
        ]
        assert client.closed
