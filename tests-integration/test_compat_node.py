"""4.15-style programs (tests-integration/compat) run unchanged against real nodes: what jobs
see and do on a node (its names among their globals, setup's globals, functions sent as
dependencies found with ``globals()``, a program's output as bytes, a cancel that lets the
job return its best partial result)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.ports import free_port

pytestmark = pytest.mark.timeout(120)

COMPAT = Path(__file__).resolve().parent / "compat"
PARTIAL_LINES = {"provisional", "status", "next"}


def run_program(name: str, nodes: list, secret: str, workdir: Path, timeout: float = 60) -> str:
    """Run compat/<name>.py as its own process with the nodes and secret in its environment;
    its stdout, after checking it exited 0."""
    env = dict(os.environ)
    env["DISPY_TEST_NODES"] = json.dumps([[n.ip_addr, n.port] for n in nodes])
    env["DISPY_SECRET"] = secret
    env["DISPY_TEST_PORT"] = str(free_port())  # the client's dispy_port, loopback only
    env["PYTHONUNBUFFERED"] = "1"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(COMPAT / f"{name}.py")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-4000:])
    return proc.stdout


def test_compat_node_globals_and_setup(node_factory, secret, tmp_path):
    node = node_factory.one(cpus=2, name="compat-globals")
    out = run_program("node_globals", [node], secret, tmp_path)
    lines = out.splitlines()
    # job.id defaults to the submission number (1, 2, ...), as in 4.15
    expected = [f"job {n + 1} on compat-globals at 127.0.0.1: {n * n * 3}" for n in range(5)]
    assert lines == expected, out


def test_compat_program_output_is_bytes(node_factory, secret, tmp_path):
    node = node_factory.one(cpus=1, name="compat-prog")
    out = run_program("program_output", [node], secret, tmp_path)
    assert out.splitlines() == [
        f"job 0: caf\u00e9 {i} | b'raw \\xff\\xfe' | done {i} | bytes" for i in range(3)
    ], out


def test_compat_delegate_calls_functions_sent_as_dependencies(node_factory, secret, tmp_path):
    node = node_factory.one(cpus=1, name="compat-delegate")
    out = run_program("delegate", [node], secret, tmp_path)
    assert out.splitlines() == [
        "job 1: square 1",
        "job 2: negate -2",
        "job 3: square 9",
        "job 4: negate -4",
        "job 5: doubled 42",
        "job 6: failed KeyError: 'square'",
    ], out


def test_compat_cancel_returns_partial_result(node_factory, secret, tmp_path):
    node = node_factory.one(cpus=1, name="compat-cancel")
    out = run_program("cancel_partial", [node], secret, tmp_path)
    # only the program's own lines (4.15 logs callback's deprecation to stdout)
    lines = [line for line in out.splitlines() if line.split(" ")[0] in PARTIAL_LINES]
    assert lines[0] == "provisional ('searching', 3)", out
    status, _, result = lines[1].partition(" result ")
    assert status == "status Cancelled", out
    # the job was interrupted (not killed) about a second in: its best so far came back
    kind, best = eval(result)  # a tuple the program printed
    assert kind == "interrupted", out
    assert 5 < best < 1000000, out
    assert lines[2] == "next ('complete', 2)", out


def test_compat_provisional_results_name_the_node(node_factory, secret, tmp_path):
    node = node_factory.one(cpus=2, name="compat-prov")
    out = run_program("provisional_best", [node], secret, tmp_path)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["names"] == "compat-prov", out  # dispy_node_name in every provisional result
    assert lines["winner"] == "[1]", out
    # the winner ran on: a missing file is -1 (reason on stderr), its log arrived (0)
    assert lines["first"] == "True (-1, 0)", out
    assert lines["refused"] == "True", out
    expected = ["%.4f" % (1.0 / (i + 2)) for i in range(25)]
    assert lines["log"] == repr(expected), out
    assert lines["second"] == "True", out  # cancelled by the callback
