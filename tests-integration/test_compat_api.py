"""dispy 4.15 programs run unchanged (issue 13): the client's API surface.

Each program in ``compat/`` is run as its own process against real ``dispy-node`` processes;
the test gives it the nodes (``DISPY_TEST_NODES``), a free client port (``DISPY_TEST_PORT``)
and the secret (``DISPY_SECRET``), and checks what it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.ports import free_port

COMPAT = Path(__file__).resolve().parent / "compat"


def program(name: str, nodes: list[Any], secret: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.update(
        DISPY_TEST_NODES=json.dumps([[node.ip_addr, node.port] for node in nodes]),
        DISPY_TEST_PORT=str(free_port()),
        DISPY_SECRET=secret,
        PYTHONUNBUFFERED="1",
    )
    return subprocess.Popen(
        [sys.executable, str(COMPAT / name)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> dict[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"program did not end in {timeout}s:\n{out}\n{err}") from None
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err}"
    return {line.split(" ", 1)[0]: line.partition(" ")[2] for line in out.splitlines()}


def test_compat_job_status_bounds_pending_jobs(node_factory, secret, tmp_path):
    nodes = node_factory(2, cpus=2)
    out = finish(program("job_status_bounded.py", nodes, secret, tmp_path))
    assert out["ids"] == "in-order"  # default ids: unique, in submission order
    assert 1 <= int(out["max_pending"]) <= 8  # the callback kept the bound
    assert out["results"] == f"60 {sum(i * i for i in range(60))}"
    assert out["status"] == "2 0"  # status(): both nodes, nothing pending
    assert out["fields"] == "3481 True"
    assert out["node"].split(" ", 1)[0] in {node.name for node in nodes}
    assert "closed" in out


def test_compat_discover_nodes_finds_a_node_started_late(node_factory, secret, tmp_path):
    first = node_factory.one(name="first")
    proc = program("discover_late.py", [first], secret, tmp_path)
    assert proc.stdout is not None
    assert proc.stdin is not None
    seen = []
    for line in proc.stdout:  # bounded: the program ends (and closes stdout) on its own
        seen.append(line)
        if line.startswith("ready"):
            break
    assert seen, "the program printed nothing"
    assert seen[-1].startswith("ready"), seen
    late = node_factory.one(name="late")
    proc.stdin.write(json.dumps([late.ip_addr, late.port]) + "\n")
    proc.stdin.flush()
    out = finish(proc)
    assert out["discover"] == "0"
    assert out["nodes"] == "2"
    assert out["late"] == "[100, 101, 102] ['127.0.0.1'] True"
    assert out["on"] == "True"
    assert "shutdown" in out
    first_line = "".join(seen)
    assert "['first-0', 'first-1', 'first-2', 'first-3'] [0, 1, 2, 3]" in first_line


def test_compat_deallocate_and_close_node(node_factory, secret, tmp_path):
    nodes = node_factory(2, cpus=1)
    out = finish(program("close_nodes.py", nodes, secret, tmp_path))
    assert out["nodes"] == "2"
    assert out["name"] == "compute"  # cluster.name() was a method in 4.15
    assert out["deallocate"] == "0"
    first = min(
        nodes, key=lambda node: node.name
    )  # as the program picks it (4.15 nodes have no port)
    assert out["done"] == "0 6"  # the deallocated node got none of the six jobs
    assert out["allocate"] == "0"
    assert out["back"] == "[True, True]"  # allocate_node took it back
    assert out["close"] == "0"
    assert out["long"] == "1.5 True"  # its running job ended first
    # jobs waiting for it alone end Cancelled, each with a cluster_status event, as in 4.15
    assert out["waiting"] == "[True, True]"
    assert out["why"] == "[True, True]"
    assert out["cancelled"] == "True"
    assert out["after-close"] == f"['{first.name}'] [0.05, 0.05, 0.05, 0.05]"
    assert "closed" in out


def test_compat_shared_cluster_with_job_status(
    node_factory, scheduler_factory, cluster_secret, tmp_path
):
    node = node_factory.one(cpus=2, name="shared")
    sched = scheduler_factory([node])
    env = dict(os.environ)
    env.update(
        DISPY_TEST_SCHEDULER="127.0.0.1",
        DISPY_TEST_PORT=str(sched.scheduler_port - 2),  # 4.15: the scheduler is on P + 2
        DISPY_SECRET=cluster_secret,
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, str(COMPAT / "shared_job_status.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = finish(proc)
    assert out["done"] == f"True {sum(range(1000, 1010))}"
    assert out["status"] == "True 0"
    assert out["deallocate"] == "-1"  # the scheduler places a shared cluster's jobs
    assert "closed" in out
