"""dispy benchmark suite: a real node process and a client, against ProcessPoolExecutor(2).

    hatch run bench:all                 # the full suite (a few minutes)
    hatch run bench:all --smoke         # a quick pass that only proves it works (CI)

Every figure is measured ``--repeat`` times (min and median) and also given as a ratio to
``concurrent.futures.ProcessPoolExecutor(2)`` measured in the same run, since absolute
numbers drift between runs on shared machines. Results go to
``benchmarks/results/<date>-<host>.json``. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gc
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads
from workloads import busy, echo_bytes, noop

import dispy

MiB = 1 << 20


@dataclass
class Sizes:
    latency: int = 300
    warmup: int = 20
    throughput: int = 10_000
    scale: int = 100_000
    data_jobs: int = 20
    data_size: int = 16 * MiB
    data_warmup: int = 4
    cpu_jobs: int = 16
    cpu_seconds: float = 0.25
    queued: int = 10_000


SMOKE = Sizes(
    latency=30,
    warmup=5,
    throughput=500,
    scale=2_000,
    data_jobs=4,
    data_size=1 * MiB,
    data_warmup=1,
    cpu_jobs=4,
    cpu_seconds=0.05,
    queued=500,
)


@dataclass
class Metric:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    dispy: list[float] = field(default_factory=list)
    pool: list[float] = field(default_factory=list)

    def best(self, values: list[float]) -> float:
        if not values:
            return float("nan")
        return min(values) if self.better == "lower" else max(values)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "better": self.better}
        for label, values in (("dispy", self.dispy), ("pool", self.pool)):
            if values:
                out[label] = {
                    "best": self.best(values),
                    "median": statistics.median(values),
                    "runs": values,
                }
        if self.dispy and self.pool:
            out["ratio"] = statistics.median(self.dispy) / statistics.median(self.pool)
        return out


def free_port() -> int:
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class Node:
    """A real ``dispy-node`` process on 127.0.0.1."""

    def __init__(self, cpus: int, prefix: str) -> None:
        self.port = free_port()
        self.secret = secrets.token_hex(8)
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                "dispy-node",
                "run",
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-c",
                str(cpus),
                "--dest_path_prefix",
                prefix,
                "--name",
                "bench",
            ],
            env={**os.environ, "DISPY_SECRET": self.secret},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def rss(self, with_children: bool = True) -> int:
        try:
            proc = psutil.Process(self.proc.pid)
            total = proc.memory_info().rss
            if with_children:
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
            return total
        except psutil.Error:
            return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cluster(self, computation: Callable[..., Any], **kwargs: Any) -> dispy.JobCluster:
        return dispy.JobCluster(
            computation,
            nodes=[("127.0.0.1", self.port)],
            ip_addr="127.0.0.1",
            port=0,
            secret=self.secret,
            depends=[workloads],
            **kwargs,
        )


def wait_ready(cluster: dispy.JobCluster, timeout: float = 30) -> None:
    job = cluster.submit(0) if cluster.name == "noop" else None
    if job is not None:
        job()
        return
    deadline = time.monotonic() + timeout
    while not cluster.nodes():
        if time.monotonic() > deadline:
            raise RuntimeError("no node joined")
        time.sleep(0.01)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` after ``stop``."""

    def __init__(self, extra: Callable[[], int] | None = None) -> None:
        self.peak = 0
        self.extra_peak = 0
        self._extra = extra
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._me.memory_info().rss)
            if self._extra is not None:
                self.extra_peak = max(self.extra_peak, self._extra())
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._me.memory_info().rss)


# -- the measurements -------------------------------------------------------------------


def interleaved_latency(
    runners: dict[str, Callable[[int], Any]], sizes: Sizes
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of one job's round trip for each runner (a function that submits job
    ``i``, waits for it and returns its result), timed in turns: job i of every runner, then
    job i + 1 of every runner. Load on the machine changes by the second on a shared host;
    in turns, every runner meets the same load, so their ratio is what differs, not when
    each happened to run."""
    for i in range(sizes.warmup):
        for run_one in runners.values():
            assert run_one(i) == i
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(sizes.latency):
        for name, run_one in runners.items():
            t0 = time.perf_counter()
            assert run_one(i) == i
            times[name].append(time.perf_counter() - t0)
    return {
        name: (percentile(values, 50) * 1e3, percentile(values, 99) * 1e3)
        for name, values in times.items()
    }


def latency(
    node: Node, pool: cf.ProcessPoolExecutor, sizes: Sizes
) -> dict[str, tuple[float, float]]:
    cluster = node.cluster(noop)
    try:
        return interleaved_latency(
            {
                "dispy": lambda i: cluster.submit(i)(),  # type: ignore[union-attr]
                "pool": lambda i: pool.submit(noop, i).result(),
            },
            sizes,
        )
    finally:
        cluster.close()


def dispy_throughput(node: Node, count: int) -> tuple[float, int]:
    cluster = node.cluster(noop)
    try:
        wait_ready(cluster)
        gc.collect()
        peak = PeakRSS()
        t0 = time.perf_counter()
        jobs = [cluster.submit(i) for i in range(count)]
        results = [job() for job in jobs]  # type: ignore[union-attr]
        elapsed = time.perf_counter() - t0
        peak.stop()
        bad = sum(1 for i, r in enumerate(results) if r != i)
        if bad:
            raise AssertionError(f"{bad} wrong results")
    finally:
        cluster.close()
    return count / elapsed, peak.peak


def pool_throughput(pool: cf.ProcessPoolExecutor, count: int) -> tuple[float, int]:
    gc.collect()
    peak = PeakRSS()
    t0 = time.perf_counter()
    futures = [pool.submit(noop, i) for i in range(count)]
    results = [f.result() for f in futures]
    elapsed = time.perf_counter() - t0
    peak.stop()
    assert results == list(range(count))
    return count / elapsed, peak.peak


def dispy_data(node: Node, sizes: Sizes) -> float:
    blob = os.urandom(sizes.data_size)
    cluster = node.cluster(echo_bytes)
    try:
        # Unmeasured warm-up round (as for the pool): the cluster's workers are new
        # processes, the pool's are warm from earlier runs.
        warm = [cluster.submit(blob) for _ in range(sizes.data_warmup)]
        for job in warm:
            assert job() == blob  # type: ignore[union-attr]
        del warm
        t0 = time.perf_counter()
        jobs = [cluster.submit(blob) for _ in range(sizes.data_jobs)]
        for job in jobs:
            assert job() == blob  # type: ignore[union-attr]
        elapsed = time.perf_counter() - t0
    finally:
        cluster.close()
    return 2 * sizes.data_jobs * sizes.data_size / MiB / elapsed


def pool_data(pool: cf.ProcessPoolExecutor, sizes: Sizes) -> float:
    blob = os.urandom(sizes.data_size)
    warm = [pool.submit(echo_bytes, blob) for _ in range(sizes.data_warmup)]
    for f in warm:
        assert f.result() == blob
    del warm
    t0 = time.perf_counter()
    futures = [pool.submit(echo_bytes, blob) for _ in range(sizes.data_jobs)]
    for f in futures:
        assert f.result() == blob
    return 2 * sizes.data_jobs * sizes.data_size / MiB / (time.perf_counter() - t0)


def cpu_single() -> float:
    t0 = time.perf_counter()
    busy(SIZES.cpu_seconds)
    return time.perf_counter() - t0


def dispy_cpu(node: Node, sizes: Sizes) -> float:
    single = cpu_single()
    cluster = node.cluster(busy)
    try:
        cluster.submit(0.001)()  # type: ignore[union-attr]
        t0 = time.perf_counter()
        jobs = [cluster.submit(sizes.cpu_seconds) for _ in range(sizes.cpu_jobs)]
        for job in jobs:
            job()  # type: ignore[union-attr]
        wall = time.perf_counter() - t0
    finally:
        cluster.close()
    return sizes.cpu_jobs * single / (2 * wall)


def pool_cpu(pool: cf.ProcessPoolExecutor, sizes: Sizes) -> float:
    single = cpu_single()
    pool.submit(busy, 0.001).result()
    t0 = time.perf_counter()
    for f in [pool.submit(busy, sizes.cpu_seconds) for _ in range(sizes.cpu_jobs)]:
        f.result()
    return sizes.cpu_jobs * single / (2 * (time.perf_counter() - t0))


def dispy_startup(prefix: str) -> tuple[float, int]:
    """(seconds from launching a node to the first result, that node's RSS once idle)."""
    node = Node(2, prefix)
    try:
        cluster = node.cluster(noop)
        try:
            assert cluster.submit(1)() == 1  # type: ignore[union-attr]
            took = time.perf_counter() - node.launched
        finally:
            cluster.close()
        time.sleep(0.2)
        return took, node.rss(with_children=False)
    finally:
        node.stop()


def pool_startup() -> float:
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(2) as pool:
        assert pool.submit(noop, 1).result() == 1
        return time.perf_counter() - t0


def dispy_memory(node: Node, sizes: Sizes) -> tuple[int, int, int, int]:
    """(client bytes before, client bytes with jobs queued, node RSS idle, node RSS queued)."""
    cluster = node.cluster(busy)
    try:
        cluster.submit(0.001)()  # type: ignore[union-attr]
        idle_node = node.rss(with_children=False)
        blockers = [cluster.submit(1.5) for _ in range(4)]
        gc.collect()
        # tracemalloc counts what the queued jobs hold (RSS would hide it behind memory the
        # allocator kept from earlier measurements).
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        jobs = [cluster.submit(0) for _ in range(sizes.queued)]
        time.sleep(0.3)
        during = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        node_during = node.rss(with_children=False)
        for job in blockers + jobs:
            job()  # type: ignore[union-attr]
    finally:
        cluster.close()
    return before, during, idle_node, node_during


# -- driver -------------------------------------------------------------------------------

SIZES = Sizes()


def main() -> int:
    global SIZES
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; proves the suite works")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run only these (latency throughput ...)")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/DATE-HOST.json)")
    args = parser.parse_args()
    SIZES = SMOKE if args.smoke else Sizes()
    repeat = 1 if args.smoke else max(1, args.repeat)
    only = set(args.only or [])
    prefix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", ".node")
    metrics: dict[str, Metric] = {
        "latency_p50": Metric("latency p50", "ms", "lower"),
        "latency_p99": Metric("latency p99", "ms", "lower"),
        "throughput": Metric(f"throughput ({SIZES.throughput} jobs)", "jobs/s", "higher"),
        "scale": Metric(f"scale ({SIZES.scale} jobs)", "jobs/s", "higher"),
        "scale_client_peak": Metric("scale: client peak RSS", "MiB", "lower"),
        "data": Metric(
            f"data ({SIZES.data_jobs} x {SIZES.data_size // MiB} MiB each way)", "MiB/s", "higher"
        ),
        "cpu": Metric(f"cpu efficiency ({SIZES.cpu_jobs} x {SIZES.cpu_seconds}s)", "", "higher"),
        "startup": Metric("startup: node launch to first result", "s", "lower"),
        "node_idle_rss": Metric("node RSS idle (fresh daemon, one job served)", "MiB", "lower"),
        "node_queued_rss": Metric(f"node RSS, {SIZES.queued} queued", "MiB", "lower"),
        "client_per_job": Metric("client memory per queued job", "KiB", "lower"),
    }

    def want(name: str) -> bool:
        return not only or name in only

    node = Node(2, prefix)
    try:
        wait_cluster = node.cluster(noop)
        wait_ready(wait_cluster)
        wait_cluster.close()
        with cf.ProcessPoolExecutor(2) as pool:
            for run in range(repeat):
                print(f"run {run + 1}/{repeat}", file=sys.stderr)
                if want("latency"):
                    took = latency(node, pool, SIZES)
                    metrics["latency_p50"].dispy.append(took["dispy"][0])
                    metrics["latency_p99"].dispy.append(took["dispy"][1])
                    metrics["latency_p50"].pool.append(took["pool"][0])
                    metrics["latency_p99"].pool.append(took["pool"][1])
                if want("throughput"):
                    rate, _ = dispy_throughput(node, SIZES.throughput)
                    metrics["throughput"].dispy.append(rate)
                    metrics["throughput"].pool.append(pool_throughput(pool, SIZES.throughput)[0])
                if want("scale"):
                    rate, peak = dispy_throughput(node, SIZES.scale)
                    metrics["scale"].dispy.append(rate)
                    metrics["scale_client_peak"].dispy.append(peak / MiB)
                    rate, peak = pool_throughput(pool, SIZES.scale)
                    metrics["scale"].pool.append(rate)
                    metrics["scale_client_peak"].pool.append(peak / MiB)
                if want("data"):
                    metrics["data"].dispy.append(dispy_data(node, SIZES))
                    metrics["data"].pool.append(pool_data(pool, SIZES))
                if want("cpu"):
                    metrics["cpu"].dispy.append(dispy_cpu(node, SIZES))
                    metrics["cpu"].pool.append(pool_cpu(pool, SIZES))
                if want("memory"):
                    # A node of its own: the shared one keeps receive buffers from the data
                    # workload for a while, which says nothing about queued no-op jobs.
                    mem_node = Node(2, prefix + "-memory")
                    try:
                        warm = mem_node.cluster(noop)
                        wait_ready(warm)
                        warm.close()
                        before, during, _idle, queued = dispy_memory(mem_node, SIZES)
                    finally:
                        mem_node.stop()
                    metrics["client_per_job"].dispy.append((during - before) / 1024 / SIZES.queued)
                    metrics["node_queued_rss"].dispy.append(queued / MiB)
        if want("startup"):
            for _ in range(repeat):
                took, idle_rss = dispy_startup(prefix + "-startup")
                metrics["startup"].dispy.append(took)
                metrics["node_idle_rss"].dispy.append(idle_rss / MiB)
                metrics["startup"].pool.append(pool_startup())
    finally:
        node.stop()

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "smoke": args.smoke,
        "repeat": repeat,
        "metrics": {k: m.summary() for k, m in metrics.items() if m.dispy},
    }
    print_table(metrics)
    out = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        time.strftime("%Y%m%d-%H%M%S")
        + f"-{socket.gethostname()}{'-smoke' if args.smoke else ''}.json",
    )
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"results written to {out}", file=sys.stderr)
    return 0


def print_table(metrics: dict[str, Metric]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dispy vs ProcessPoolExecutor(2), same run")
    for col in ("metric", "dispy best", "dispy median", "pool median", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for m in metrics.values():
        if not m.dispy:
            continue
        ratio = f"{statistics.median(m.dispy) / statistics.median(m.pool):.2f}x" if m.pool else "-"
        pool = f"{statistics.median(m.pool):.3f}" if m.pool else "-"
        table.add_row(
            f"{m.name} [{m.unit}]" if m.unit else m.name,
            f"{m.best(m.dispy):.3f}",
            f"{statistics.median(m.dispy):.3f}",
            pool,
            ratio,
        )
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
