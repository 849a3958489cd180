"""The ``dispy`` user CLI against real nodes."""

from __future__ import annotations

import os
import subprocess
import sys

DISPY = [sys.executable, "-m", "dispy.cli"]


def _run(args: list[str], secret: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DISPY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DISPY_SECRET": secret, "COLUMNS": "200"},
    )


def test_dispy_nodes_lists_a_running_node_and_leaves_it_free(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="listed-node")
    proc = _run(["nodes", "127.0.0.1", "--node_port", str(node.port)], secret=node.secret)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "listed-node" in proc.stdout
    assert f"127.0.0.1:{node.port}" in proc.stdout
    # the node was told it is not needed: a real cluster gets it at once
    from harness.computations import square_plus

    cluster = cluster_factory(square_plus, [node])
    job = cluster.submit(3)
    assert job is not None
    assert job() == square_plus(3)


def test_dispy_nodes_reports_a_wrong_secret(node_factory):
    node = node_factory.one(cpus=1, name="other-secret")
    proc = _run(["nodes", "127.0.0.*", "--node_port", str(node.port)], secret="not-it")
    assert "same secret" in proc.stdout, proc.stdout + proc.stderr


def test_dispy_nodes_exits_1_when_nobody_answers():
    from harness.ports import free_port

    proc = _run(["nodes", "127.0.0.1", "--node_port", str(free_port()), "--timeout", "0.5"])
    assert proc.returncode == 1
    assert "no node answered" in proc.stdout


def test_dispy_recover_names_a_missing_file(tmp_path):
    proc = _run(["recover", str(tmp_path / "nope")])
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_dispy_version():
    proc = _run(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("dispy ")
