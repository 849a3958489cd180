"""A fake dispy-scheduler for SharedJobCluster's tests: the server side of PROTOCOL.md 13.

It runs on its own event loop thread (a SharedJobCluster's constructor blocks until the
scheduler accepts its computation) and serves real, authenticated loopback connections
made with :mod:`dispy_core.aio`. It answers as the real scheduler would: ``accepted``, one
``sched.offer`` per node it has, ``sched.node initialized`` for an allocation, and (with
``auto_run``) ``sched.running`` and ``sched.done`` for every job, the replies made by
:mod:`dispy_core.results` from the job's real arguments. Tests read what the client sent
with :meth:`FakeScheduler.expect` and send anything with :meth:`FakeScheduler.send`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dispy_core import serialize
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationClosed,
    ComputationStart,
    FileAck,
    JobCancel,
    JobReport,
    Message,
    NodeAllocation,
    NodeOffer,
    SharedComputation,
    SharedDone,
    SharedEnded,
    SharedFilePut,
    SharedNode,
    SharedRunning,
    SharedStatus,
    SharedSubmit,
    _Message,
)
from dispy_core.results import pack_reply
from dispy_core.security import TLSConfig

SECRET = "shared-test-secret"


@dataclass
class FakeNode:
    ip_addr: str
    port: int = 51348
    name: str = "node"
    cpus: int = 2


@dataclass
class Client:
    """One client connection as the fake sees it."""

    conn: Connection
    comp_id: int = 0
    allocated: dict[tuple[str, int], int] = field(default_factory=dict)
    waiting: list[tuple[int, tuple[str, int] | None, bytes]] = field(default_factory=list)


class FakeScheduler:
    """See the module docstring."""

    def __init__(
        self,
        *,
        secret: str = SECRET,
        nodes: list[FakeNode] | None = None,
        compute: Callable[..., Any] | None = None,
        auto_run: bool = True,
        refuse: str | None = None,
        sched_id: int = 77,
        tls: TLSConfig | None = None,
    ) -> None:
        self.secret = secret
        self.nodes = nodes if nodes is not None else [FakeNode("127.0.0.1", name="n1")]
        self.compute = compute
        self.auto_run = auto_run
        self.refuse = refuse
        self.sched_id = sched_id
        self.tls = tls
        self.clients: list[Client] = []
        self.log: list[tuple[int, Message, bytes]] = []  # (client index, message, payload)
        self._cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._run(self._start())

    # -- driving it from the test's thread ------------------------------------------------

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def send(self, message: _Message, payload: bytes | list[bytes] = b"", client: int = -1) -> None:
        async def go() -> None:
            self.clients[client].conn.send_nowait(message, payload)

        self._run(go())

    def expect(
        self,
        kind: type[Any],
        where: Callable[[Any], bool] = lambda m: True,
        timeout: float = 5.0,
        client: int | None = None,
    ) -> tuple[Any, bytes]:
        """The first message of ``kind`` (from ``client``) for which ``where`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, msg, payload in self.log:
                    if isinstance(msg, kind) and where(msg) and client in (None, index):
                        return msg, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.type for _, m, _ in self.log]
                    raise AssertionError(f"no {kind.__name__} within {timeout} s; got {seen}")
                self._cond.wait(left)

    def received(self, kind: type[Any]) -> list[Any]:
        with self._cond:
            return [m for _, m, _ in self.log if isinstance(m, kind)]

    def drop(self, client: int = -1) -> None:
        """Cut a client's connection, as a scheduler killed with -9 would."""

        async def go() -> None:
            self.clients[client].conn._transport.abort()

        self._run(go())

    def close(self) -> None:
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # -- the server -----------------------------------------------------------------------

    async def _start(self) -> int:
        self.tasks = TaskOwner("fake scheduler")
        self.admission = Admission()
        self.server = await start_server(
            self._accept,
            tasks=self.tasks,
            host="127.0.0.1",
            port=0,
            ssl_context=self.tls.server if self.tls is not None else None,
            handshake_timeout=5,
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        self.server.close()
        for client in self.clients:
            await client.conn.close()
        await self.tasks.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = await self.admission.accept(
            reader,
            writer,
            logger=_log(),
            secret=self.secret,
            role="scheduler",
            name="fake-scheduler",
            timeout=5,
        )
        if conn is None:
            return
        client = Client(conn)
        self.clients.append(client)
        index = len(self.clients) - 1
        try:
            while True:
                msg, payload = await conn.recv()
                with self._cond:
                    self.log.append((index, msg, bytes(payload)))
                    self._cond.notify_all()
                self._auto(client, msg, bytes(payload))
        except (ConnectionClosed, ProtocolError):
            pass
        finally:
            await conn.close()

    def _auto(self, client: Client, msg: Message, payload: bytes) -> None:
        conn = client.conn
        if isinstance(msg, SharedComputation):
            client.comp_id = msg.comp_id
        elif isinstance(msg, ComputationStart):
            if self.refuse is not None:
                self.tasks.start(conn.refuse(self.refuse))
                return
            conn.send_nowait(
                SharedStatus(comp_id=client.comp_id, state="accepted", sched_id=self.sched_id)
            )
            for node in self.nodes:
                conn.send_nowait(
                    NodeOffer(
                        comp_id=client.comp_id,
                        name=node.name,
                        ip_addr=node.ip_addr,
                        port=node.port,
                        cpus=node.cpus,
                        platform="test",
                    )
                )
        elif isinstance(msg, NodeAllocation) and msg.cpus > 0:
            key = (msg.ip_addr, msg.port)
            node = next(n for n in self.nodes if (n.ip_addr, n.port) == key)
            cpus = min(msg.cpus, node.cpus)
            client.allocated[key] = cpus
            conn.send_nowait(
                SharedNode(
                    comp_id=client.comp_id,
                    ip_addr=key[0],
                    port=key[1],
                    status="initialized",
                    cpus=cpus,
                )
            )
            waiting, client.waiting = client.waiting, []
            for uid, pin, part in waiting:  # jobs that came before any node
                self.run_job(client, uid, pin or key, part)
        elif isinstance(msg, SharedSubmit) and self.auto_run:
            self._run_jobs(client, msg, payload)
        elif isinstance(msg, JobCancel) and self.auto_run:
            ended = [(uid, "cancelled", "Cancelled") for uid in msg.job_ids]
            conn.send_nowait(SharedEnded(comp_id=client.comp_id, jobs=ended))  # type: ignore[arg-type]
        elif isinstance(msg, SharedFilePut):
            conn.send_nowait(FileAck(comp_id=client.comp_id, req=msg.req))
        elif isinstance(msg, CloseComputation):
            conn.send_nowait(ComputationClosed(comp_id=client.comp_id))

    def _run_jobs(self, client: Client, msg: SharedSubmit, payload: bytes) -> None:
        pinned = {uid: (ip, port) for uid, ip, port in msg.pinned}
        offset = 0
        for uid, length in msg.jobs:
            part = payload[offset : offset + length]
            offset += length
            key = pinned.get(uid) or next(iter(client.allocated), None)
            if key is None:
                client.waiting.append((uid, None, part))
            else:
                self.run_job(client, uid, key, part)

    def run_job(self, client: Client, uid: int, key: tuple[str, int], arguments: bytes) -> None:
        """Run one job "on" node ``key``: sched.running, then sched.done with its reply."""
        conn = client.conn
        conn.send_nowait(
            SharedRunning(comp_id=client.comp_id, ip_addr=key[0], port=key[1], job_ids=[uid])
        )
        start = time.time()
        args, kwargs = serialize.loads(arguments)[:2]
        try:
            result, exc = (self.compute or _identity)(*args, **kwargs), None
        except Exception as error:
            result, exc = None, f"{type(error).__name__}: {error}"
        ok, data = pack_reply(result, "out", "", exc)
        reply = data if isinstance(data, bytes) else b"".join(bytes(d) for d in data)
        outcome = "finished" if ok and exc is None else "terminated"
        self.done(client, key, [(uid, outcome, reply, start)])

    def done(
        self, client: Client, key: tuple[str, int], replies: list[tuple[int, str, bytes, float]]
    ) -> None:
        reports = [
            JobReport(job_id=uid, outcome=outcome, start=start, end=time.time(), size=len(data))  # type: ignore[arg-type]
            for uid, outcome, data, start in replies
        ]
        message = SharedDone(comp_id=client.comp_id, ip_addr=key[0], port=key[1], jobs=reports)
        client.conn.send_nowait(message, [data for _, _, data, _ in replies])


def _identity(*args: Any, **kwargs: Any) -> Any:
    return args[0] if len(args) == 1 else args


def _log() -> Any:
    import logging

    return logging.getLogger("fake-scheduler")


class Factory:
    """What the ``fake_scheduler`` fixture gives: call it to start a FakeScheduler."""

    Node = FakeNode
    secret = SECRET

    def __init__(self) -> None:
        self.started: list[FakeScheduler] = []

    def __call__(self, **kwargs: Any) -> FakeScheduler:
        sched = FakeScheduler(**kwargs)
        self.started.append(sched)
        return sched


@pytest.fixture
def fake_scheduler() -> Iterator[Factory]:
    """Start fake schedulers (arguments: those of FakeScheduler); all stopped at the end."""
    factory = Factory()
    yield factory
    for sched in factory.started:
        sched.close()
