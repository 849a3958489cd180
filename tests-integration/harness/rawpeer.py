"""A hostile but authenticated client: talks to a real node message by message.

It authenticates with the node's secret like a real client (connecting to the node's TCP
port as role ``client``), then sends whatever the test wants, including headers that no
schema would let a real client build (a NUL in a path, NaN, ids outside u64): those are
written as raw JSON through the connection's own encoder, so they carry a valid MAC.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dispy_core import serialize
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused, open_connection
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.messages import ComputationSetup, ComputationStart, NodeInfo
from harness.computations import square_plus
from harness.ports import LOOPBACK

COMP_ID = 4242


async def connect(port: int, secret: str, *, timeout: float = 10.0) -> tuple[Connection, NodeInfo]:
    """An authenticated client connection to the node at 127.0.0.1:``port``, and its
    introduction."""
    conn = await open_connection(
        LOOPBACK, port, secret=secret, role="client", name="rawpeer", timeout=timeout
    )
    async with asyncio.timeout(timeout):
        msg, _ = await conn.recv()
    assert isinstance(msg, NodeInfo), msg
    return conn, msg


async def start_computation(conn: Connection, *, timeout: float = 20.0) -> None:
    """Set up and start a real function computation (``square_plus``) and wait until ready."""
    conn.send_nowait(ComputationSetup(comp_id=COMP_ID, name="rawpeer", kind="function", cpus=1))
    bundle = serialize.dumps(
        {"computation": square_plus, "setup": None, "cleanup": None, "depends": []}
    )
    await conn.send(ComputationStart(comp_id=COMP_ID), bundle)
    async with asyncio.timeout(timeout):
        while True:
            msg, _ = await conn.recv()
            if msg.type == "computation.ready":
                return
            assert msg.type != "computation.failed", msg


def send_raw(conn: Connection, header: dict[str, Any] | bytes, payload: bytes = b"") -> None:
    """Send ``header`` as it is (``dict``: as JSON, NaN allowed), authenticated."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    buffers = conn._encoder.encode(raw, payload)
    conn._transport.write(b"".join(bytes(b) for b in buffers))


async def ending(conn: Connection, timeout: float) -> str:
    """Read until the node ends the session; return how (``refused: <reason>`` or
    ``closed``). Raises TimeoutError if it keeps the session open."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await conn.recv()
        except PeerRefused as exc:
            return f"refused: {exc.reason}"
        except (ConnectionClosed, ProtocolError):
            return "closed"
        finally:
            await conn.close()
