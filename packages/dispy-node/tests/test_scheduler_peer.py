"""A node serving a scheduler: which peers it refuses, and what its pings do meanwhile.

The node is not started: its active session is set by hand and pings are handed to
``Node._on_ping`` directly, so no socket is opened. (The whole path, with a real node and a
fake scheduler peer, is tests-integration/test_node_scheduler_peer.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dispy_core.protocol.discovery import Ping
from dispy_core.protocol.messages import BUSY, SERVING_SCHEDULER
from dispy_core.testing import async_test
from dispy_node.config import NodeConfig
from dispy_node.node import SCHEDULER_COMPUTATIONS, Node


def _node(tmp_path: Path) -> Node:
    return Node(NodeConfig(name="n", node_port=0, dest_path_prefix=str(tmp_path)))


def _ping(cluster: str, role: Any = "client") -> Ping:
    return Ping(cluster=cluster, reply_addr="127.0.0.1", reply_port=9, role=role)


def _conn(role: str) -> Any:
    return SimpleNamespace(peer_role=role)


@async_test()
async def test_refusals_name_what_the_node_is_doing(tmp_path):
    node = _node(tmp_path)
    node._active = SimpleNamespace(role="scheduler")  # type: ignore[assignment]
    assert node._refusal(_conn("client")) == SERVING_SCHEDULER
    assert node._refusal(_conn("scheduler")) == SERVING_SCHEDULER
    node._active = SimpleNamespace(role="client")  # type: ignore[assignment]
    assert node._refusal(_conn("client")) == BUSY
    assert node._refusal(_conn("scheduler")) == BUSY
    assert node._refusal(_conn("relay")) == "a node does not serve a relay"
    assert SCHEDULER_COMPUTATIONS > 1


@async_test()
async def test_client_pings_to_a_scheduler_node_are_refused_once_not_remembered(tmp_path):
    node = _node(tmp_path)
    refused: list[tuple[str, str]] = []

    async def refuse_back(ping: Ping, reason: str) -> None:
        refused.append((ping.cluster, reason))

    node._refuse_back = refuse_back  # type: ignore[method-assign]
    node._active = SimpleNamespace(role="scheduler")  # type: ignore[assignment]
    for _ in range(3):
        node._on_ping(_ping("client-aaaaaaaa"), ("127.0.0.1", 9))
    node._on_ping(_ping("sched-bbbbbbbb", "scheduler"), ("127.0.0.1", 9))
    await asyncio.sleep(0.01)
    assert refused == [("client-aaaaaaaa", SERVING_SCHEDULER)]  # once, then ignored
    assert node._pings.remembered == 1  # only the other scheduler's ping waits for the node

    # When the scheduler's session ends the refused client may have the node again.
    session = node._active
    node.session_ended(session)  # type: ignore[arg-type]
    assert not node._pings.declined("client-aaaaaaaa", 0.0)
    if node._retry is not None:
        node._retry.cancel()
    await node.tasks.close()


@async_test()
async def test_a_client_nodes_pings_are_remembered_as_before(tmp_path):
    node = _node(tmp_path)
    node._active = SimpleNamespace(role="client")  # type: ignore[assignment]
    node._on_ping(_ping("client-aaaaaaaa"), ("127.0.0.1", 9))
    node._on_ping(_ping("sched-bbbbbbbb", "scheduler"), ("127.0.0.1", 9))
    assert node._pings.remembered == 2
    await node.tasks.close()
