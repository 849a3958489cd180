"""A local process cannot take a worker's place (issue 9, item 3).

The attack: another user on the node's machine reads what ``ps`` shows of the computation
process, connects to the daemon's worker endpoint as the next worker, and so receives the
next job's arguments (and could answer with a pickle the client unpickles). Here the test
plays that user. The race with the real worker is made deterministic by pausing the
computation process while the daemon waits for its replacement worker.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

import psutil
import pytest
from harness import History, wait_for
from harness.computations import block_on

from dispy import DispyJob

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

TOKEN = re.compile(r"^[0-9a-f]{32}$")


def _computation_process(node) -> psutil.Process:
    for proc in node.descendants():
        if "dispy_node._template" in " ".join(proc.cmdline()):
            return proc
    raise AssertionError("no computation process under the node")


def _listening_unix_sockets(pids: list[int]) -> list[str]:
    """Unix sockets in the listening state held by ``pids`` (from /proc/net/unix)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    with open("/proc/net/unix") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            flags, inode = int(fields[3], 16), fields[6]
            if inode in inodes and flags & 0x10000:  # __SO_ACCEPTCON: listening
                found.append(fields[7] if len(fields) > 7 else f"inode {inode}")
    return found


def _endpoints_from_ps(cmdline: list[str]) -> list[tuple[str, bytes]]:
    """What a local user learns from ``ps``: a socket address and a token next to it."""
    out = []
    for i, arg in enumerate(cmdline[:-1]):
        if (arg.startswith("@") or arg.endswith(".sock")) and TOKEN.match(cmdline[i + 1]):
            path = "\0" + arg[1:] if arg.startswith("@") else arg
            out.append((path, bytes.fromhex(cmdline[i + 1])))
    return out


def _impostor(path: str, token: bytes, stolen: list[bytes], stop: threading.Event) -> None:
    """Offer ourselves as every plausible worker number; keep what the daemon accepts."""
    held = []
    for wid in range(1, 33):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            sock.sendall(token + wid.to_bytes(4, "big"))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        for sock in list(held):
            sock.settimeout(0.05)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if data:
                stolen.append(data)
            else:
                held.remove(sock)
                sock.close()
    for sock in held:
        sock.close()


def test_a_local_process_cannot_receive_a_workers_job(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="victim")
    history = History()
    cluster = cluster_factory(
        block_on, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    marker = tmp_path / "first"
    first = history.submit(cluster, str(marker), 60)
    wait_for(marker.exists, 20, "the first job should start")
    template = _computation_process(node)
    cmdline = template.cmdline()

    # The attack as it worked before: pose as the replacement worker.
    stolen: list[bytes] = []
    stop = threading.Event()
    template.send_signal(signal.SIGSTOP)  # the real replacement cannot fork yet
    try:
        assert cluster.cancel(first) == 0
        assert first.finish.wait(10)
        time.sleep(0.5)  # the daemon now waits for the replacement
        attackers = [
            threading.Thread(target=_impostor, args=(path, token, stolen, stop), daemon=True)
            for path, token in _endpoints_from_ps(cmdline)
        ]
        for thread in attackers:
            thread.start()
        time.sleep(0.5)
    finally:
        template.send_signal(signal.SIGCONT)
    second = history.submit(cluster, str(tmp_path / "second"), 0)
    finished = second.finish.wait(20)
    stop.set()
    for thread in attackers:
        thread.join(10)

    assert not stolen, f"an impostor received a job: {b''.join(stolen)[:80]!r}"
    assert finished, "the next job should run on the real replacement worker"
    assert first.status == DispyJob.Cancelled
    assert second.status == DispyJob.Finished, (second.status, second.exception)
    assert cluster.wait(timeout=10)
    history.check(allowed={DispyJob.Cancelled, DispyJob.Finished})

    # Nor could another attempt work: what ps shows carries no secret, and no process of
    # the node listens for workers.
    assert not [arg for arg in template.cmdline() if TOKEN.match(arg)], template.cmdline()
    tree = [node.pid, *(p.pid for p in node.descendants())]
    assert _listening_unix_sockets(tree) == []
    cluster.close()
