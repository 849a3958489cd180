"""Two programs share the same nodes through dispy-scheduler.

Run it with ``hatch run python examples/shared.py`` (or ``python examples/shared.py`` where
dispy is installed). It starts, on 127.0.0.1 with free ports, two ``dispy-node`` processes
and one ``dispy-scheduler serve``, then two clients at once: a big one with 2,000 jobs and
a small one with 20 jobs submitted a moment later. The scheduler shares the nodes' CPUs
fairly, so the small client finishes long before the big one.

In real use only the clients are programs of yours: ``dispy-node`` runs on every machine,
``dispy-scheduler serve`` on one, and each program creates
``SharedJobCluster(compute, scheduler_node='that-host')``.
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
import threading
import time

import dispy


def compute(n: int) -> tuple[str, int]:
    import time as _time

    _time.sleep(0.01)
    return "done", n * n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_client(name: str, jobs: int, port: int, secret: str, finished: dict[str, float]) -> None:
    cluster = dispy.SharedJobCluster(
        compute,
        scheduler_node="127.0.0.1",
        scheduler_port=port,
        ip_addr="127.0.0.1",
        port=0,  # several clients on one machine: each its own port
        secret=secret,
    )
    t0 = time.monotonic()
    submitted = [cluster.submit(i) for i in range(jobs)]
    wrong = sum(1 for i, job in enumerate(submitted) if job() != ("done", i * i))
    finished[name] = time.monotonic() - t0
    print(f"{name}: {jobs} jobs in {finished[name]:.2f} s, {wrong} wrong")
    cluster.close()


def main() -> int:
    node_secret, cluster_secret = secrets.token_hex(8), secrets.token_hex(8)
    port, scheduler_port = free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="dispy-shared-")
    quiet = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The scheduler first: nodes given --scheduler_node offer themselves to it at start
        # (on a LAN it would find them by broadcast instead).
        procs.append(
            subprocess.Popen(
                ["dispy-scheduler", "serve", "-i", "127.0.0.1", "-p", str(port),
                 "--scheduler_port", str(scheduler_port),
                 "--dest_path_prefix", os.path.join(workdir, "scheduler")],
                env={**os.environ, "DISPY_NODE_SECRET": node_secret,
                     "DISPY_CLUSTER_SECRET": cluster_secret},
                **quiet,
            )
        )  # fmt: skip
        time.sleep(1.0)
        for n in range(2):
            procs.append(
                subprocess.Popen(
                    ["dispy-node", "run", "-i", "127.0.0.1", "-p", str(free_port()),
                     "--cpus", "2", "--name", f"node-{n}",
                     "--scheduler_node", "127.0.0.1", "--scheduler_port", str(port),
                     "--dest_path_prefix", os.path.join(workdir, f"node-{n}")],
                    env={**os.environ, "DISPY_SECRET": node_secret},
                    **quiet,
                )
            )  # fmt: skip
        finished: dict[str, float] = {}
        big = threading.Thread(
            target=run_client, args=("big", 2000, scheduler_port, cluster_secret, finished)
        )
        small = threading.Thread(
            target=run_client, args=("small", 20, scheduler_port, cluster_secret, finished)
        )
        big.start()
        time.sleep(1.0)
        small.start()
        big.join(600)
        small.join(600)
        ok = len(finished) == 2 and finished["small"] < finished["big"]
        print("the small client finished first" if ok else "unexpected: see above")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
