"""A plain TCP forwarder process, like ``ssh -L``/``-R`` or a TCP proxy: no UDP at all.

``python forwarder.py LISTEN_HOST LISTEN_PORT TO_HOST TO_PORT STATS_FILE`` accepts TCP on
the listen address and copies each connection's bytes both ways to a new connection to the
target, writing the counts (``up``: towards the target, ``down``: back, ``connections``) to
``STATS_FILE`` as JSON after each chunk, so that a test sees what went through it. It
prints ``ready`` once listening and runs until killed. :class:`Forwarder` runs one from a
test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 10.0


class _Counts:
    def __init__(self, path: str) -> None:
        self.path = path
        self.data = {"up": 0, "down": 0, "connections": 0}

    def add(self, key: str, n: int) -> None:
        self.data[key] += n
        tmp = self.path + ".tmp"
        with open(tmp, "w") as out:
            json.dump(self.data, out)
        os.replace(tmp, self.path)  # a reader never sees half a file


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: _Counts, key: str
) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            counts.add(key, len(chunk))
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _main(listen: tuple[str, int], target: tuple[str, int], stats: str) -> None:
    counts = _Counts(stats)
    counts.add("connections", 0)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.add("connections", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer, counts, "up"), _pipe(up_reader, writer, counts, "down")
        )

    server = await asyncio.start_server(forward, *listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class Forwarder:
    """A forwarder process from ``listen`` to ``target``; its counts; kill it at the end.

    ``wrapper``: a command the forwarder's command line is appended to (``ip netns exec``).
    """

    def __init__(
        self,
        workdir: Path,
        listen: tuple[str, int],
        target: tuple[str, int],
        wrapper: Sequence[str] = (),
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.listen = listen
        self.stats_path = workdir / f"forwarder-{listen[1]}.json"
        self.proc = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                __file__,
                *map(str, (*listen, *target)),
                str(self.stats_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.stats_path.exists() or self.proc.poll() is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"forwarder on {listen} did not start")
            time.sleep(0.05)
        line = self.proc.stdout.readline()  # bounded: "ready" follows the stats file
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"forwarder on {listen} said {line!r}")

    def counts(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stats_path.read_text())
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    lhost, lport, thost, tport, stats_file = sys.argv[1:6]
    asyncio.run(_main((lhost, int(lport)), (thost, int(tport)), stats_file))
