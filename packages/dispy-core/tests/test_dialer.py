"""The TCP dial of listed nodes (dispy_core.aio.dialer): when it dials, and one session per
node. The connections are fakes; real ones through a forwarder are in
tests-integration/test_tcp_reach.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from dispy_core.aio import dialer as dialer_module
from dispy_core.aio.connection import PeerRefused
from dispy_core.aio.dialer import DIAL_AFTER, Dialer
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.messages import BUSY, SERVING_SCHEDULER, Message, NodeInfo, Pulse
from dispy_core.testing import async_test

A = ("10.0.0.5", 51348)
B = ("127.0.0.1", 40000)


class FakeConn:
    """What the dialer uses of a Connection: the first message or a refusal."""

    def __init__(self, name: str, first: Message | PeerRefused) -> None:
        self.peer_name = name
        self._first = first
        self.closed = False
        self.refused: str | None = None

    async def recv(self) -> tuple[Any, memoryview]:
        if isinstance(self._first, PeerRefused):
            raise self._first
        return self._first, memoryview(b"")

    async def close(self) -> None:
        self.closed = True

    async def refuse(self, reason: str) -> None:
        self.refused = reason


def info(name: str, key: tuple[str, int]) -> NodeInfo:
    return NodeInfo(name=name, ip_addr=key[0], port=key[1], cpus=2, platform="x", version="1")


class Owner:
    """A client or scheduler as the dialer sees it: what it holds and what it was given."""

    def __init__(self, answers: dict[tuple[str, int], Any]) -> None:
        self.answers = answers
        self.dials: list[tuple[str, int]] = []
        self.served: list[tuple[Any, tuple[str, int], NodeInfo]] = []
        self.held: dict[tuple[str, int], str] = {}  # key -> node name
        self.refusals: dict[str, str] = {}
        self.tasks = TaskOwner("test dialer")
        self.dialer = Dialer(
            tasks=self.tasks,
            logger=logging.getLogger("test.dialer"),
            connect=self.connect,
            serve=self.serve,
            held=lambda key: key in self.held,
            held_as=lambda name: next((k for k, n in self.held.items() if n == name), None),
            refused=self.refusals.__setitem__,
            timeout=1.0,
        )
        self.dialer._started = time.monotonic() - DIAL_AFTER  # dials allowed from now

    async def connect(self, host: str, port: int) -> Any:
        self.dials.append((host, port))
        answer = self.answers[(host, port)]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def serve(self, conn: Any, target: tuple[str, int], node: NodeInfo) -> None:
        # As a client or scheduler does: a dialed node is held under its target.
        self.served.append((conn, target, node))
        self.held[target] = node.name

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


@async_test(timeout=10)
async def test_nothing_is_dialed_in_the_first_second_nor_a_target_already_held():
    owner = Owner({A: FakeConn("a", info("a", A)), B: FakeConn("b", info("b", B))})
    owner.dialer.start()  # just started: connect-back has its second first
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.dials == []
    owner.dialer._started -= DIAL_AFTER
    owner.held[A] = "a"  # A connected back
    owner.dialer.dial_all([A, B, B])
    await owner.settle()
    assert owner.dials == [B]
    await owner.tasks.close()


@async_test(timeout=10)
async def test_a_forwarded_node_is_served_under_its_target_and_not_redialed_while_held():
    # Behind a forward, the node reports its own address: the owner keys the node by the
    # target (where it reaches it), so two such nodes reporting one address are two nodes.
    reported = ("127.0.0.1", 51348)
    c1, c2 = FakeConn("far-1", info("far-1", reported)), FakeConn("far-2", info("far-2", reported))
    owner = Owner({A: c1, B: c2})
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert [(c, t, n.name) for c, t, n in owner.served] == [(c1, A, "far-1"), (c2, B, "far-2")]
    assert owner.held == {A: "far-1", B: "far-2"}
    owner.dialer._next.clear()  # past the retry delay
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.dials == [A, B]  # both held
    del owner.held[B]  # its session ended: the next round dials it again
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.dials == [A, B, B]
    await owner.tasks.close()


@pytest.mark.parametrize("reason", [BUSY, SERVING_SCHEDULER])
@async_test(timeout=10)
async def test_a_node_already_served_refusing_the_dial_is_that_node_quietly(reason):
    owner = Owner({B: FakeConn("both", PeerRefused(reason))})
    owner.held[A] = "both"  # it connected back as A
    owner.dialer.dial_all([B])
    await owner.settle()
    assert owner.dials == [B]
    assert owner.served == []
    assert owner.refusals == {}
    owner.dialer._next.clear()
    owner.dialer.dial_all([B])
    await owner.settle()
    assert owner.dials == [B]  # not again while A is held
    await owner.tasks.close()


@async_test(timeout=10)
async def test_refusals_and_unreachable_targets_are_kept_and_retried_after_a_delay(monkeypatch):
    owner = Owner({A: FakeConn("other", PeerRefused(BUSY)), B: ConnectionRefusedError(111, "no")})
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.refusals == {"10.0.0.5:51348": BUSY}  # busy with someone else: for the warning
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.dials == [A, B]  # within DIAL_RETRY: not yet
    monkeypatch.setattr(dialer_module, "DIAL_RETRY", 0.0)
    owner.dialer._next.clear()
    owner.dialer.dial_all([A, B])
    await owner.settle()
    assert owner.dials == [A, B, A, B]
    await owner.tasks.close()


@async_test(timeout=10)
async def test_a_peer_that_sends_something_else_first_is_refused():
    conn = FakeConn("odd", Pulse())
    owner = Owner({A: conn})
    owner.dialer.dial_all([A])
    await owner.settle()
    assert owner.served == []
    assert conn.refused == "expected node.info, got pulse"
    await owner.tasks.close()
