"""A node's own set-up on the scheduler (PROTOCOL.md 13, "Per-node set-up"): what a
client's ``sched.allocate`` carries is kept for that node and used there instead of the
common start payload and files; refused with a clear reason when it cannot be."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dispy_core.protocol.messages import (
    ComputationSetup,
    ComputationStart,
    FilePut,
    Message,
    NodeAllocation,
    SharedNode,
)
from dispy_scheduler import _clients
from dispy_scheduler._state import SharedComp

NODE_A = ("10.0.0.1", 51348)
NODE_B = ("10.0.0.2", 51348)


class Link:
    """A node's or the client's link: what was sent on it."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.name = f"{key[0]}:{key[1]}"
        self.info = SimpleNamespace(cpus=4, name=key[0])
        self.conn = SimpleNamespace(closed=False)
        self.sent: list[tuple[Message, bytes]] = []
        self.notices: list[str] = []

    def send(self, message: Message, payload: Any = b"") -> None:
        self.sent.append((message, bytes(payload)))

    def notice(self, text: str) -> None:
        self.notices.append(text)

    def of(self, kind: type) -> list[tuple[Any, bytes]]:
        return [(m, p) for m, p in self.sent if isinstance(m, kind)]


class Tasks:
    def __init__(self) -> None:
        self.coros: list[Any] = []

    def start(self, coro: Any, name: str = "") -> None:
        self.coros.append(coro)

    def run(self) -> None:
        coros, self.coros = self.coros, []
        for coro in coros:
            asyncio.run(coro)


def _setup(max_file_size: int = 0) -> tuple[Any, SharedComp, Link, dict[Any, Link]]:
    links = {key: Link(key) for key in (NODE_A, NODE_B)}
    sched = SimpleNamespace(
        nodes=links,
        settings=SimpleNamespace(max_file_size=max_file_size, pulse_interval=1.0),
        tasks=Tasks(),
    )
    client = Link(("client", 0))
    comp = SharedComp(
        sched_id=77,
        comp_id=5,
        name="c",
        kind="function",
        dest_path=None,
        cleanup=True,
        reentrant=False,
        exclusive=False,
        client=client,  # type: ignore[arg-type]
        record=SimpleNamespace(files_dir=Path("/nonexistent")),  # type: ignore[arg-type]
        start=b"common bundle",
        opened=True,
    )
    return sched, comp, client, links


def _allocate(sched: Any, comp: SharedComp, client: Link, msg: NodeAllocation, data: bytes) -> None:
    _clients._allocate(sched, client, comp, msg, data)  # type: ignore[arg-type]
    sched.tasks.run()


def _own(key: tuple[str, int], start: bytes | None, files: list[tuple[str, bytes]]) -> Any:
    msg = NodeAllocation(
        comp_id=5,
        ip_addr=key[0],
        port=key[1],
        cpus=2,
        start=None if start is None else len(start),
        files=[(path, len(data), 0o600, 12.5) for path, data in files],
    )
    return msg, (start or b"") + b"".join(data for _, data in files)


def test_a_nodes_own_start_and_files_are_used_there_and_the_common_ones_elsewhere() -> None:
    sched, comp, client, links = _setup()
    msg, data = _own(NODE_A, b"bundle for A", [("own.txt", b"A's file")])
    _allocate(sched, comp, client, msg, data)
    _allocate(
        sched,
        comp,
        client,
        NodeAllocation(comp_id=5, ip_addr=NODE_B[0], port=NODE_B[1], cpus=2),
        b"",
    )
    a, b = links[NODE_A], links[NODE_B]
    assert [type(m) for m, _ in a.sent] == [ComputationSetup, FilePut, ComputationStart]
    (put, put_data), (start, start_data) = a.sent[1], a.sent[2]
    assert (put.comp_id, put.path, put.size, put.mode, put.mtime) == (77, "own.txt", 8, 0o600, 12.5)
    assert put_data == b"A's file"
    assert (start.comp_id, start_data) == (77, b"bundle for A")
    assert [type(m) for m, _ in b.sent] == [ComputationSetup, ComputationStart]
    assert b.sent[1][1] == b"common bundle"
    assert NODE_A in comp.own
    assert NODE_B not in comp.own
    assert not client.notices


def test_the_own_set_up_is_kept_for_a_re_setup_and_an_answer_without_it_drops_it() -> None:
    sched, comp, client, links = _setup()
    msg, data = _own(NODE_A, None, [("only-files.txt", b"x")])  # files, the common start
    _allocate(sched, comp, client, msg, data)
    a = links[NODE_A]
    assert a.of(ComputationStart)[0][1] == b"common bundle"
    assert [m.path for m, _ in a.of(FilePut)] == ["only-files.txt"]
    # the node left and came back: the client answers its new offer again
    comp.setup.pop(NODE_A)
    a.sent.clear()
    msg, data = _own(NODE_A, b"again", [])
    _allocate(sched, comp, client, msg, data)
    assert a.of(ComputationStart)[0][1] == b"again"
    assert not a.of(FilePut)
    # while it is set up, another answer changes nothing there
    _allocate(
        sched,
        comp,
        client,
        NodeAllocation(comp_id=5, ip_addr=NODE_A[0], port=NODE_A[1], cpus=2),
        b"",
    )
    assert comp.own[NODE_A].start == b"again"
    comp.setup.pop(NODE_A)
    a.sent.clear()
    _allocate(
        sched,
        comp,
        client,
        NodeAllocation(comp_id=5, ip_addr=NODE_A[0], port=NODE_A[1], cpus=2),
        b"",
    )
    assert a.of(ComputationStart)[0][1] == b"common bundle"
    assert NODE_A not in comp.own


def test_a_per_node_file_over_max_file_size_is_refused_with_a_clear_reason() -> None:
    sched, comp, client, links = _setup(max_file_size=4)
    msg, data = _own(NODE_A, b"bundle", [("big.bin", b"12345")])
    _allocate(sched, comp, client, msg, data)
    assert not links[NODE_A].sent
    assert NODE_A not in comp.setup
    assert NODE_A not in comp.own
    ((status, _),) = client.of(SharedNode)
    assert (status.ip_addr, status.status) == (NODE_A[0], "setup_failed")
    assert "'big.bin' of 5 bytes is over the scheduler's --max_file_size of 4" in status.reason
    assert any("big.bin" in text for text in client.notices)


def test_a_payload_that_does_not_match_its_sizes_is_refused() -> None:
    sched, comp, client, links = _setup()
    msg, data = _own(NODE_A, b"bundle", [("f", b"abc")])
    _allocate(sched, comp, client, msg, data[:-1])
    assert not links[NODE_A].sent
    ((status, _),) = client.of(SharedNode)
    assert status.status == "setup_failed"
    assert "does not match" in status.reason
