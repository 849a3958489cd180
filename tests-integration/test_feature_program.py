"""Program computations: ``JobCluster("/path/to/program", ...)`` runs the program per job."""

from __future__ import annotations

import stat

import psutil
import pytest
from harness import wait_for
from harness.features import process_gone

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

PY_SCRIPT = """\
import sys
print("args", sys.argv[1:])
print("warning from", sys.argv[1], file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""

SH_SCRIPT = """\
#!/bin/sh
echo "shell got $# args: $1|$2"
echo "shell stderr" >&2
exit "$1"
"""

# Sleeps, with a child that sleeps too; tells the test both pids through the file $1.
TREE_SCRIPT = """\
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def test_python_script_exit_status_and_output(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=2, name="prog-py")
    script = tmp_path / "exit_with.py"
    script.write_text(PY_SCRIPT)
    cluster = cluster_factory(str(script), [node])
    jobs = {code: cluster.submit(code, "two words") for code in ("0", "7", "42")}
    assert all(job is not None for job in jobs.values())
    assert cluster.wait(timeout=30)
    for code, job in jobs.items():
        assert job.status == DispyJob.Finished, (job, job.exception)
        assert job.result == int(code)  # the exit status
        assert job.stdout == f"args ['{code}', 'two words']\n".encode()
        assert job.stderr == f"warning from {code}\n".encode()
        assert job.ip_addr == "127.0.0.1"
    # Only strings (and numbers, which become strings) are accepted as program arguments.
    assert cluster.submit(["not", "a", "string"]) is None
    cluster.close()


def test_shell_script_with_shebang(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="prog-sh")
    script = tmp_path / "exit_sh"
    script.write_text(SH_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cluster = cluster_factory(str(script), [node])
    ok = cluster.submit("0", "x y")
    bad = cluster.submit("5", "z")
    assert cluster.wait(timeout=30)
    assert (ok.status, ok.result) == (DispyJob.Finished, 0)
    assert ok.stdout == b"shell got 2 args: 0|x y\n"
    assert ok.stderr == b"shell stderr\n"
    assert (bad.status, bad.result) == (DispyJob.Finished, 5)
    assert bad.stdout == b"shell got 2 args: 5|z\n"
    cluster.close()


def test_cancel_running_program_kills_it_and_its_children(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="prog-tree")
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    cluster = cluster_factory(str(script), [node])
    marker = tmp_path / "pids"
    job = cluster.submit(str(marker))
    wait_for(marker.exists, 20, "the program should start")
    pids = [int(p) for p in marker.read_text().split()]
    procs = [psutil.Process(pid) for pid in pids]
    assert all(p.is_running() for p in procs)
    assert "sleep" in procs[1].cmdline()[0]

    assert cluster.cancel(job) == 0
    assert job.finish.wait(10), "a cancelled program job should end"
    assert job.status == DispyJob.Cancelled
    for pid in pids:
        wait_for(lambda pid=pid: process_gone(pid), 10, f"process {pid} should be killed")
    # The CPU is free again: the next job runs.
    after = cluster.submit(str(tmp_path / "again"))
    wait_for((tmp_path / "again").exists, 20, "the next program should run")
    cluster.close(terminate=True)
    assert after.status == DispyJob.Cancelled
    again = [int(p) for p in (tmp_path / "again").read_text().split()]
    for pid in again:
        wait_for(lambda pid=pid: process_gone(pid), 10, f"process {pid} should be killed")
