"""A real local cluster: one dispy-node on 127.0.0.1 and a JobCluster running many jobs.

Run it with ``hatch run demo`` (or ``python examples/demo.py`` where dispy is installed).
Everything binds to 127.0.0.1 on free ports, so it is safe to run on any machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import dispy


def compute(n: int) -> tuple[str, int]:
    # Runs on the node, in a warm worker process.
    import socket as _socket

    return _socket.gethostname(), n * n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(jobs: int = 1000) -> int:
    port = free_port()
    secret = secrets.token_hex(8)
    workdir = tempfile.mkdtemp(prefix="dispy-demo-")
    node = subprocess.Popen(
        [
            "dispy-node",
            "run",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "--cpus",
            "2",
            "--name",
            "demo-node",
            "--dest_path_prefix",
            workdir,
        ],
        env={**os.environ, "DISPY_SECRET": secret},
        stdin=subprocess.DEVNULL,
    )
    try:
        started = time.perf_counter()
        cluster = dispy.JobCluster(
            compute,
            nodes=[("127.0.0.1", port)],
            ip_addr="127.0.0.1",
            port=0,
            secret=secret,
            ping_interval=1,
        )
        submitted = [cluster.submit(i) for i in range(jobs)]
        results = [job() for job in submitted if job is not None]
        elapsed = time.perf_counter() - started
        wrong = [i for i, (_, sq) in enumerate(results) if sq != i * i]
        print(
            f"{len(results)} jobs done in {elapsed:.2f} s; first results: "
            f"{[r[1] for r in results[:8]]}; wrong: {len(wrong)}"
        )
        cluster.print_status()
        cluster.close()
        return 0 if not wrong and len(results) == jobs else 1
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
