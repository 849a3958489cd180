"""The public test helpers (dispy_core.testing) do what they promise."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

import dispy_core.testing as testing
from dispy_core.protocol.handshake import HandshakeFailed
from dispy_core.protocol.messages import Notice
from dispy_core.testing import (
    HandshakePair,
    async_test,
    async_wait_for,
    free_port,
    memory_connection_pair,
    memory_stream_pair,
    open_memory_connection_pair,
    wait_for,
)


def test_all_is_importable_and_sorted():
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert hasattr(testing, name)


# --- free_port ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "types"),
    [
        ("tcp", [socket.SOCK_STREAM]),
        ("udp", [socket.SOCK_DGRAM]),
        ("both", [socket.SOCK_STREAM, socket.SOCK_DGRAM]),
    ],
)
def test_free_port_can_be_bound(kind, types):
    port = free_port(kind=kind)
    assert 1024 <= port < 65536
    socks = [socket.socket(socket.AF_INET, t) for t in types]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", port))  # all at once: free for every kind asked
    finally:
        for sock in socks:
            sock.close()


def test_free_port_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be"):
        free_port(kind="sctp")  # type: ignore[arg-type]


# --- wait_for ----------------------------------------------------------------------------------


def test_wait_for_returns_the_true_value():
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "ready", timeout=5.0, interval=0) == "ready"


def test_wait_for_names_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"waiting for the node to join .*last value: 0"):
        wait_for(lambda: 0, timeout=0.05, message="the node to join")


def test_wait_for_names_the_predicate_without_a_message():
    def node_joined():
        return False

    with pytest.raises(AssertionError, match="node_joined"):
        wait_for(node_joined, timeout=0.01)


def test_wait_for_lets_predicate_errors_through():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5.0)


@async_test()
async def test_async_wait_for_accepts_sync_and_async_predicates():
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await async_wait_for(event.is_set, timeout=5.0)

    async def ready():
        return "yes"

    assert await async_wait_for(ready, timeout=5.0) == "yes"


@async_test()
async def test_async_wait_for_times_out_with_a_message():
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for nothing"):
        await async_wait_for(lambda: None, timeout=0.05, message="nothing")


def test_async_test_enforces_its_timeout():
    @async_test(timeout=0.05)
    async def hangs():
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        hangs()


# --- memory streams ------------------------------------------------------------------------------


@async_test()
async def test_memory_stream_pair_carries_bytes_both_ways_and_eof():
    (ra, wa), (rb, wb), (a_to_b, b_to_a) = memory_stream_pair(record=True)
    wa.write(b"ping")
    wb.write(b"pong")
    await wa.drain()
    assert await rb.readexactly(4) == b"ping"
    assert await ra.readexactly(4) == b"pong"
    assert (bytes(a_to_b.record or b""), bytes(b_to_a.record or b"")) == (b"ping", b"pong")
    assert wa.get_extra_info("peername") == ("memory-b", 2)
    wa.close()
    await wa.wait_closed()
    assert await rb.read() == b""  # EOF
    wb.close()
    await wb.wait_closed()


@async_test()
async def test_memory_wire_intercept_can_change_and_drop_bytes():
    (_, wa), (rb, wb), (a_to_b, _) = memory_stream_pair()
    a_to_b.intercept = lambda data: b"" if data == b"drop" else data.upper()
    wa.write(b"drop")
    wa.write(b"keep")
    assert await rb.readexactly(4) == b"KEEP"
    assert a_to_b.delivered == 4
    wa.close()
    wb.close()


@async_test()
async def test_memory_stream_applies_back_pressure_while_the_reader_waits():
    (_, wa), (rb, wb), _ = memory_stream_pair(limit=1024)
    wa.transport.set_write_buffer_limits(high=4096)
    for _ in range(10):
        wa.write(b"x" * 10_000)
    drain = asyncio.ensure_future(wa.drain())
    for _ in range(5):
        await asyncio.sleep(0)  # let every scheduled delivery run
    assert not drain.done()  # the reader paused: the writer must wait
    assert wa.transport.get_write_buffer_size() > 4096
    assert len(await rb.readexactly(100_000)) == 100_000
    await asyncio.wait_for(drain, 5.0)
    assert wa.transport.get_write_buffer_size() == 0
    wa.close()
    wb.close()


@async_test()
async def test_open_memory_connection_pair_returns_a_connected_pair():
    pair = await open_memory_connection_pair("s", name_a="node", name_b="client")
    try:
        await pair.acceptor.send(Notice(text="to node"))
        assert (await pair.connector.recv())[0] == Notice(text="to node")
        assert pair.connector.peer_name == "client"
    finally:
        await pair.aclose()
    assert pair.connector.closed
    assert pair.acceptor.closed


@async_test()
async def test_memory_connection_pair_context_closes_both_ends():
    async with memory_connection_pair("s") as pair:
        pass
    assert pair.connector.closed
    assert pair.acceptor.closed


# --- HandshakePair -----------------------------------------------------------------------------


def test_handshake_pair_records_both_failures_without_raising():
    pair = HandshakePair("a", "b")
    connector, acceptor = pair.run(check=False)
    assert connector.state == acceptor.state == "failed"
    assert all(isinstance(e, HandshakeFailed) for e in pair.errors.values())
    assert [m.type for m in pair.messages("connector")] == ["hello", "refused"]
    assert [m.type for m in pair.messages("acceptor")] == ["challenge"]
