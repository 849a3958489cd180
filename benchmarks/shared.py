"""SharedJobCluster through dispy-scheduler, against JobCluster and ProcessPoolExecutor(2).

    hatch run bench:shared              # the full comparison (a few minutes)
    hatch run bench:shared --smoke      # tiny sizes; proves it works (CI)

In one run, on 127.0.0.1 with free ports: a JobCluster on one real node with 2 CPUs, a
SharedJobCluster on another node with 2 CPUs through a real ``dispy-scheduler serve``, and
the local pool, each timed on the same no-op jobs: latency p50 (one job at a time),
throughput (10,000 jobs), scale (100,000 jobs) and 4 client processes x 10,000 jobs at once
through the one scheduler (every result checked; the figure is all jobs over the time the
slowest client took). Ratios are of medians in this run: shared/JobCluster and
JobCluster/pool. Results go to ``benchmarks/results/<date>-<host>-shared.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run
import workloads
from run import Node, free_port, interleaved_latency, pool_throughput, wait_ready
from workloads import noop

import dispy

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Sizes:
    latency: int = 300
    warmup: int = 20
    throughput: int = 10_000
    scale: int = 100_000
    clients: int = 4
    client_jobs: int = 10_000


SMOKE = Sizes(latency=20, warmup=5, throughput=300, scale=1_000, clients=2, client_jobs=200)


class Scheduler:
    """A real ``dispy-scheduler serve`` on 127.0.0.1 that uses one node."""

    def __init__(self, node: Node, store: str) -> None:
        self.port = free_port()
        self.scheduler_port = free_port()
        self.secret = secrets.token_hex(8)
        self.proc = subprocess.Popen(
            [
                "dispy-scheduler",
                "serve",
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--scheduler_port",
                str(self.scheduler_port),
                "--node_port",
                str(node.port),
                "-n",
                "127.0.0.1",
                "--dest_path_prefix",
                store,
            ],
            env={
                **os.environ,
                "DISPY_NODE_SECRET": node.secret,
                "DISPY_CLUSTER_SECRET": self.secret,
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.scheduler_port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("dispy-scheduler did not start") from None
                time.sleep(0.05)

    def cluster(self, **kwargs: Any) -> dispy.SharedJobCluster:
        return dispy.SharedJobCluster(
            noop,
            scheduler_node="127.0.0.1",
            scheduler_port=self.scheduler_port,
            ip_addr="127.0.0.1",
            port=0,
            secret=self.secret,
            depends=[workloads],
            **kwargs,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def latency(
    sched: Scheduler, own: Node, pool: cf.ProcessPoolExecutor, sizes: Sizes
) -> dict[str, float]:
    """p50 (ms) of the three, their jobs timed in turns (see run.interleaved_latency)."""
    shared, mine = sched.cluster(), own.cluster(noop)
    try:
        took = interleaved_latency(
            {
                "shared": lambda i: shared.submit(i)(),
                "jobcluster": lambda i: mine.submit(i)(),
                "pool": lambda i: pool.submit(noop, i).result(),
            },
            run.Sizes(latency=sizes.latency, warmup=sizes.warmup),
        )
    finally:
        shared.close()
        mine.close()
    return {name: p50 for name, (p50, _p99) in took.items()}


def throughput(cluster: Any, count: int) -> float:
    try:
        wait_ready(cluster, 60)
        t0 = time.perf_counter()
        jobs = [cluster.submit(i) for i in range(count)]
        results = [job() for job in jobs]
        elapsed = time.perf_counter() - t0
        bad = sum(1 for i, r in enumerate(results) if r != i)
        if bad:
            raise AssertionError(f"{bad} wrong results")
    finally:
        cluster.close()
    return count / elapsed


# One client of the concurrent run, as its own process: prints "<seconds> <wrong results>".
CLIENT = """
import sys, time
sys.path.insert(0, {here!r})
import dispy, workloads
from workloads import noop
count = {count}
cluster = dispy.SharedJobCluster(noop, scheduler_node="127.0.0.1", scheduler_port={port},
    ip_addr="127.0.0.1", port=0, secret={secret!r}, depends=[workloads])
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.perf_counter()
jobs = [cluster.submit(i) for i in range(count)]
bad = sum(1 for i, job in enumerate(jobs) if job() != i)
print(time.perf_counter() - t0, bad, flush=True)
cluster.close()
"""


def concurrent_clients(sched: Scheduler, sizes: Sizes) -> float:
    source = CLIENT.format(
        here=HERE, count=sizes.client_jobs, port=sched.scheduler_port, secret=sched.secret
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(sizes.clients)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # start together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        took = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            seconds, bad = out.split()
            if int(bad):
                raise AssertionError(f"a client got {bad} wrong results")
            took.append(float(seconds))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sizes.clients * sizes.client_jobs / max(took)


@dataclass
class Row:
    name: str
    unit: str
    better: str
    runs: dict[str, list[float]] = field(
        default_factory=lambda: {"shared": [], "jobcluster": [], "pool": []}
    )

    def median(self, key: str) -> float | None:
        values = self.runs[key]
        return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else Sizes()
    repeat = 1 if args.smoke else max(1, args.repeat)
    prefix = os.path.join(HERE, "results", ".shared")
    rows = {
        "latency_p50": Row("latency p50", "ms", "lower"),
        "throughput": Row(f"throughput ({sizes.throughput} jobs)", "jobs/s", "higher"),
        "scale": Row(f"scale ({sizes.scale} jobs)", "jobs/s", "higher"),
        "concurrent": Row(
            f"{sizes.clients} clients x {sizes.client_jobs} jobs at once", "jobs/s", "higher"
        ),
    }
    own = Node(2, prefix + "-jobcluster")
    shared_node = Node(2, prefix + "-node")
    sched = Scheduler(shared_node, prefix + "-scheduler")
    try:
        sched.wait_listening()
        with cf.ProcessPoolExecutor(2) as pool:
            for n in range(repeat):
                print(f"run {n + 1}/{repeat}", file=sys.stderr)
                for name, p50 in latency(sched, own, pool, sizes).items():
                    rows["latency_p50"].runs[name].append(p50)
                for key, count in (("throughput", sizes.throughput), ("scale", sizes.scale)):
                    rows[key].runs["shared"].append(throughput(sched.cluster(), count))
                    rows[key].runs["jobcluster"].append(throughput(own.cluster(noop), count))
                    rows[key].runs["pool"].append(pool_throughput(pool, count)[0])
                rows["concurrent"].runs["shared"].append(concurrent_clients(sched, sizes))
    finally:
        sched.stop()
        shared_node.stop()
        own.stop()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "smoke": args.smoke,
        "repeat": repeat,
        "rows": {
            key: {"unit": row.unit, "better": row.better, **row.runs} for key, row in rows.items()
        },
    }
    print_table(rows)
    out = args.output or os.path.join(
        HERE,
        "results",
        time.strftime("%Y%m%d-%H%M%S")
        + f"-{socket.gethostname()}-shared{'-smoke' if args.smoke else ''}.json",
    )
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"results written to {out}", file=sys.stderr)
    return 0


def print_table(rows: dict[str, Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SharedJobCluster vs JobCluster vs ProcessPoolExecutor(2), same run")
    for col in ("metric", "shared", "JobCluster", "pool", "shared/JobCluster", "JobCluster/pool"):
        table.add_column(col, justify="left" if col == "metric" else "right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in rows.values():
        shared, own, pool = (row.median(k) for k in ("shared", "jobcluster", "pool"))
        table.add_row(
            f"{row.name} [{row.unit}]",
            fmt(shared),
            fmt(own),
            fmt(pool),
            f"{shared / own:.2f}x" if shared and own else "-",
            f"{own / pool:.2f}x" if own and pool else "-",
        )
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
