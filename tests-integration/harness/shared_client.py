"""A fake SharedJobCluster written on ``dispy_core.aio``: the client side of PROTOCOL.md 13.

It speaks the section's messages one by one, so scheduler tests do not depend on the real
SharedJobCluster (and show the wire plainly). It opens one computation, takes every node
offered (or those ``allocate`` says), submits jobs by id, collects and acknowledges
results, and records everything else the scheduler says, in order, in ``events``.

    client = await FakeSharedClient.connect(sched.scheduler_port, cluster_secret)
    await client.open("squares", square_plus)
    client.submit({1: args(3), 2: args(4)})
    await client.wait_done(2)
    await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispy_core import serialize
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused, open_connection
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationStart,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    Message,
    NodeAllocation,
    NodeOffer,
    SharedComputation,
    SharedFilePut,
    SharedSubmit,
)
from dispy_core.results import iter_replies, read_reply
from harness.ports import LOOPBACK

Node = tuple[str, int]


def args(*values: Any, **kwargs: Any) -> bytes:
    """A job's arguments as ``sched.submit`` carries them."""
    return bytes(serialize.dumps((values, kwargs)))


@dataclass
class Result:
    job_id: int
    outcome: str
    node: Node
    value: Any
    exception: str | None
    start: float
    end: float


class FakeSharedClient:
    """See the module docstring. One computation per client."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.comp_id = int.from_bytes(os.urandom(4), "big")
        self.sched_id = 0
        self.state = ""
        self.events: list[Message] = []
        self.results: dict[int, Result] = {}
        self.ended: dict[int, tuple[str, str]] = {}
        self.running: dict[int, Node] = {}
        self.requeued: list[int] = []
        self.nodes: dict[Node, str] = {}  # node -> its last sched.node status
        self.offers: list[NodeOffer] = []
        self.provisional: list[tuple[int, Any]] = []
        self.files: dict[str, bytes] = {}  # sent by jobs (file.put), by path
        self.file_acks: dict[int, str | None] = {}  # req -> error of our sched.file
        self.notices: list[str] = []
        self.closed = asyncio.Event()
        self.lost: BaseException | None = None
        self.allocate: Callable[[NodeOffer], int] = lambda offer: offer.cpus
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, port: int, secret: str, *, name: str = "fake-client", ssl_context: Any = None
    ) -> FakeSharedClient:
        conn = await open_connection(
            LOOPBACK,
            port,
            secret=secret,
            role="client",
            name=name,
            timeout=10,
            ssl_context=ssl_context,
        )
        client = cls(conn)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        return client

    # -- what the client sends ----------------------------------------------------------------

    async def open(
        self,
        name: str,
        function: Any,
        *,
        reentrant: bool = False,
        exclusive: bool = False,
        hosts: list[str] | None = None,
        files: dict[str, bytes] | None = None,
        wait_accepted: bool = True,
    ) -> None:
        self.conn.send_nowait(
            SharedComputation(
                comp_id=self.comp_id,
                name=name,
                kind="function",
                reentrant=reentrant,
                exclusive=exclusive,
                hosts=hosts or [],
            )
        )
        for path, data in (files or {}).items():
            self.conn.send_nowait(FilePut(comp_id=self.comp_id, path=path, size=len(data)), data)
        bundle = serialize.dumps(
            {"computation": function, "setup": None, "cleanup": None, "depends": []}
        )
        await self.conn.send(ComputationStart(comp_id=self.comp_id), bundle)
        if wait_accepted:
            await self.wait(lambda: self.sched_id != 0, 20, "sched.status accepted")

    def submit(self, jobs: dict[int, bytes], pinned: dict[int, Node] | None = None) -> None:
        spec = [(job_id, len(data)) for job_id, data in jobs.items()]
        pins = [(job_id, host, port) for job_id, (host, port) in (pinned or {}).items()]
        self.conn.send_nowait(
            SharedSubmit(comp_id=self.comp_id, jobs=spec, pinned=pins), b"".join(jobs.values())
        )

    def send_file(self, node: Node, path: str, data: bytes, req: int) -> None:
        """``cluster.send_file``: the answer lands in ``file_acks[req]``."""
        self.conn.send_nowait(
            SharedFilePut(
                comp_id=self.comp_id,
                ip_addr=node[0],
                port=node[1],
                path=path,
                size=len(data),
                req=req,
            ),
            data,
        )

    def cancel(self, job_ids: list[int]) -> None:
        self.conn.send_nowait(JobCancel(comp_id=self.comp_id, job_ids=job_ids))

    async def close(self, *, terminate: bool = False, timeout: float = 30) -> None:
        await self.conn.send(CloseComputation(comp_id=self.comp_id, terminate=terminate))
        await self.wait(self.closed.is_set, timeout, "computation.closed")
        await self.disconnect()

    async def disconnect(self) -> None:
        await self.conn.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    # -- waiting ------------------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.lost is not None and not predicate():
                        raise AssertionError(f"connection lost waiting for {what}: {self.lost}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout} s; results {sorted(self.results)}, ended "
                f"{self.ended}, nodes {self.nodes}, state {self.state!r}, lost {self.lost}"
            ) from None

    async def wait_done(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` jobs have ended (with a result or ended by the scheduler)."""
        await self.wait(
            lambda: len(self.results) + len(self.ended) >= count, timeout, f"{count} job ends"
        )

    # -- what the scheduler sends -------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                msg, payload = await self.conn.recv()
                self.events.append(msg)
                self._on(msg, payload)
                self._changed.set()
        except (ConnectionClosed, PeerRefused, Exception) as exc:
            self.lost = exc
            self._changed.set()

    def _on(self, msg: Message, payload: Any) -> None:
        if msg.type == "sched.status":
            self.state = msg.state
            if msg.state == "accepted":
                self.sched_id = msg.sched_id
        elif msg.type == "sched.offer":
            self.offers.append(msg)
            cpus = self.allocate(msg)
            self.conn.send_nowait(
                NodeAllocation(comp_id=self.comp_id, ip_addr=msg.ip_addr, port=msg.port, cpus=cpus)
            )
        elif msg.type == "sched.node":
            self.nodes[msg.ip_addr, msg.port] = msg.status
        elif msg.type == "sched.running":
            for job_id in msg.job_ids:
                self.running[job_id] = (msg.ip_addr, msg.port)
        elif msg.type == "sched.requeued":
            self.requeued.extend(msg.job_ids)
        elif msg.type == "sched.done":
            for report, data in iter_replies(msg, payload):
                _status, value, _out, _err, exc = read_reply(report.outcome, data)
                assert report.job_id not in self.results, f"job {report.job_id} ended twice"
                self.results[report.job_id] = Result(
                    report.job_id,
                    report.outcome,
                    (msg.ip_addr, msg.port),
                    value,
                    exc,
                    report.start,
                    report.end,
                )
            ids = [r.job_id for r in msg.jobs]
            self.conn.send_nowait(JobAck(comp_id=self.comp_id, job_ids=ids))
        elif msg.type == "sched.ended":
            for job_id, status, reason in msg.jobs:
                self.ended[job_id] = (status, reason)
        elif msg.type == "jobs.provisional":
            self.provisional.append((msg.job_id, serialize.loads(bytes(payload))))
        elif msg.type == "file.put":
            self.files[msg.path] = bytes(payload)
            if msg.req:
                self.conn.send_nowait(FileAck(comp_id=self.comp_id, req=msg.req))
        elif msg.type == "file.ack":
            self.file_acks[msg.req] = msg.error
        elif msg.type == "notice":
            self.notices.append(msg.text)
        elif msg.type == "computation.closed":
            self.closed.set()
