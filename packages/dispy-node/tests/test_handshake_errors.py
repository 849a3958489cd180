"""An unexpected error in a handshake frees the node and is logged once (no sockets)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispy_core.aio import admission as admission_module
from dispy_core.protocol.discovery import Ping
from dispy_node import node as node_module
from dispy_node.config import NodeConfig
from dispy_node.node import Node


class _Bug(TypeError):
    pass


async def _raise(*_args: object, **_kwargs: object) -> None:
    raise _Bug("comparing strings with non-ASCII characters is not supported")


class _Writer:
    closed = False

    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.7", 4242) if name == "peername" else None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def node(tmp_path: object) -> Node:
    return Node(NodeConfig(name="n", node_port=0, dest_path_prefix=str(tmp_path)))


def test_unexpected_error_in_connect_back_frees_the_node(node, monkeypatch, caplog):
    monkeypatch.setattr(node_module, "open_connection", _raise)
    ping = Ping(cluster="cluster-0001", reply_addr="127.0.0.1", reply_port=9)
    node._connecting = True  # as _on_ping leaves it
    with caplog.at_level(logging.WARNING, logger="dispy_node"):
        asyncio.run(node._connect_back(ping))
    assert not node._connecting
    assert not node._busy
    errors = [r for r in caplog.records if "unexpected error in the handshake" in r.getMessage()]
    assert len(errors) == 1
    assert "127.0.0.1:9" in errors[0].getMessage()


def test_unexpected_error_in_accept_closes_only_that_connection(node, monkeypatch, caplog):
    monkeypatch.setattr(admission_module, "accept_connection", _raise)
    writer = _Writer()
    with caplog.at_level(logging.WARNING, logger="dispy_node"):
        asyncio.run(node._accept(None, writer))  # type: ignore[arg-type]
    assert writer.closed
    assert not node._busy
    errors = [r for r in caplog.records if "unexpected error in the handshake" in r.getMessage()]
    assert len(errors) == 1
