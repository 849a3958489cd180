"""Programs written for dispy 4.15 that give nodes their own setup (issue 13): a NodeAllocate
subclass whose ``allocate()`` sets per-node ``depends`` and ``setup_args``.

Each program under ``compat/`` runs unchanged as its own process against real nodes; the
nodes and the secret reach it through DISPY_TEST_NODES and DISPY_SECRET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.polling import wait_for
from harness.ports import free_port

pytestmark = pytest.mark.timeout(90)

COMPAT = Path(__file__).resolve().parent / "compat"


def run_compat(name: str, nodes, secret: str, cwd: Path, timeout: float = 60) -> list[str]:
    """Run compat/<name> in ``cwd``; its stdout lines (the test fails with its stderr)."""
    env = dict(
        os.environ,
        DISPY_TEST_NODES=json.dumps([list(node.address) for node in nodes]),
        DISPY_SECRET=secret,
        DISPY_TEST_PORT=str(free_port()),  # the client's dispy_port, loopback only
    )
    proc = subprocess.run(
        [sys.executable, str(COMPAT / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.splitlines()


def test_node_setup_args_and_depends_per_node(node_factory, secret, tmp_path):
    nodes = [node_factory.one(cpus=1, name="alloc-a"), node_factory.one(cpus=1, name="alloc-b")]
    lines = run_compat("node_setup_args.py", nodes, secret, tmp_path)
    results = [line.split() for line in lines if line.startswith("result ")]
    assert len(results) == 8, lines
    seen = {}
    for _, job_id, _ip, data, scaled, files in results:
        # setup's arguments and the data file came from that node's own allocation
        scale = {"alloc-a": 10, "alloc-b": 100}[data]
        assert int(scaled) == int(job_id) * scale
        # only that node's file was sent to it
        assert files == f"data-{data}.txt"
        seen[data] = seen.get(data, 0) + 1
    assert set(seen) == {"alloc-a", "alloc-b"}, seen
    # cleanup got the arguments setup had on each node
    for name, scale in (("alloc-a", 10), ("alloc-b", 100)):
        done = tmp_path / f"cleanup-data-{name}.txt"
        wait_for(done.exists, 20, f"cleanup on {name}")
        assert done.read_text() == f"data-{name}.txt {scale}"


def test_resetup_node_reruns_setup_with_new_args_and_keeps_queued_jobs(
    node_factory, secret, tmp_path
):
    nodes = [node_factory.one(cpus=1, name="resetup-a"), node_factory.one(cpus=1, name="resetup-b")]
    lines = run_compat("node_resetup.py", nodes, secret, tmp_path)
    assert "resetup 0" in lines, lines
    rows = [line.split() for line in lines if line.startswith("phase")]
    by_phase: dict[str, list[tuple[int, str, int]]] = {}
    for phase, job_id, tag, pid in rows:
        by_phase.setdefault(phase, []).append((int(job_id), tag, int(pid)))
    # every job ran, the queued ones too
    assert sorted(j for p in by_phase.values() for j, _, _ in p) == list(range(23)), lines
    # each node had its own setup_args before
    assert {tag for _, tag, _ in by_phase["phase1"]} <= {"first-0", "first-1"}
    # jobs submitted after resetup_node returned never see the first node's old setup
    assert all(tag != "first-0" for _, tag, _ in by_phase["phase3"]), lines
    # jobs on the node once it is back: the new setup_args, in a new process (fresh globals)
    pinned = by_phase["phase4"]
    assert {tag for _, tag, _ in pinned} == {"second"}, lines
    old_pids = {pid for _, _, tag, pid in rows if tag == "first-0"}
    assert old_pids, lines
    assert not old_pids & {str(pid) for _, _, pid in pinned}, lines


def test_shared_cluster_node_setup_args_and_depends_per_node(
    node_factory, scheduler_factory, cluster_secret, tmp_path
):
    nodes = [node_factory.one(cpus=1, name="shared-a"), node_factory.one(cpus=1, name="shared-b")]
    sched = scheduler_factory(nodes)
    env = dict(
        os.environ,
        DISPY_TEST_SCHEDULER="127.0.0.1",
        DISPY_TEST_PORT=str(sched.scheduler_port - 2),  # 4.15: the scheduler is on P + 2
        DISPY_SECRET=cluster_secret,
    )
    proc = subprocess.run(
        [sys.executable, str(COMPAT / "shared_setup_args.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    results = [line.split() for line in lines if line.startswith("result ")]
    assert len(results) == 8, lines
    seen = set()
    for _, job_id, n, name, data, greeting, files in results:
        assert job_id == n
        # setup's arguments and the data file came from that node's own allocation
        assert (data, greeting) == (name, name)
        assert files == f"data-{name}.txt"  # only that node's file was sent to it
        seen.add(name)
    assert seen == {"shared-a", "shared-b"}, seen
    assert "closed" in lines
