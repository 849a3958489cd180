"""Time one handshake: the sans-I/O exchange alone, and a real connection on 127.0.0.1.

Run with ``hatch run python benchmarks/handshake_time.py [rounds]``. The handshake is paid
once per connection (a node and a client keep one connection for a whole computation), so
this is a cost per connection, never per job.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from dispy_core.aio.connection import Connection, accept_connection, open_connection
from dispy_core.testing import HandshakePair


def _sans_io(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        HandshakePair("a secret").run()
        times.append(time.perf_counter() - start)
    return times


async def _loopback(rounds: int) -> list[float]:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = await accept_connection(
            reader, writer, secret="a secret", role="client", name="c", timeout=5.0
        )
        await accepted.put(conn)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    times = []
    async with server:
        for _ in range(rounds):
            start = time.perf_counter()
            conn = await open_connection(
                "127.0.0.1", port, secret="a secret", role="node", name="n", timeout=5.0
            )
            peer = await accepted.get()
            times.append(time.perf_counter() - start)
            await conn.close()
            await peer.close()
    return times


def _report(label: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(
        f"{label:<32} median {statistics.median(ms):7.2f} ms   "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:7.2f} ms   ({len(ms)} rounds)"
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    _sans_io(5)  # warm up imports and caches
    _report("sans-I/O, both sides", _sans_io(rounds))
    _report("loopback TCP, connect to accept", asyncio.run(_loopback(rounds)))


if __name__ == "__main__":
    main()
