"""The node harness itself: a node whose free port was taken before it could bind is started
again on another one (test suites on 2 cores race for ports), instead of failing the test."""

from __future__ import annotations

import socket

from harness.node import NodeProcess


def test_a_node_whose_port_was_taken_starts_again_on_another(tmp_path, secret):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        node = NodeProcess(tmp_path / "racer", name="racer", secret=secret)
        node.port = taken  # as if another process won the race for its free port
        try:
            node.start(timeout=20)
            assert node.port != taken
            assert node.running()
            assert node.log_text().count("===== start #") == 2  # the first one could not bind
            assert "address already in use" in node.log_text()
        finally:
            node.stop()
            node.cleanup()
