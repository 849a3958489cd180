"""CPU per job of each process on one job's round trip (a real node, as in run.py).

    hatch run bench:python benchmarks/job_cpu.py [JOBS]

Submits one no-op job at a time (after 200 warm-ups) and reports, per job, the CPU time of
the client process (all its threads), of the node daemon and of its workers, with the wall
time and the p50 latency. CPU per job moves much less than latency on a shared machine, so
it tells two versions of the code apart where the latency benchmark cannot.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Node
from workloads import noop

WARMUP = 200


def cpu_seconds(proc: psutil.Process) -> tuple[float, float]:
    """(the process's CPU, its children's CPU), user + system, in seconds."""
    own = proc.cpu_times()
    children = 0.0
    for child in proc.children(recursive=True):
        times = child.cpu_times()
        children += times.user + times.system
    return own.user + own.system, children


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    node = Node(2, "/tmp/dispy-bench-job-cpu")
    try:
        cluster = node.cluster(noop)
        try:
            for i in range(WARMUP):
                cluster.submit(i)()
            daemon = psutil.Process(node.proc.pid)
            daemon0, workers0 = cpu_seconds(daemon)
            client0, wall0 = time.process_time(), time.perf_counter()
            latency = []
            for i in range(jobs):
                start = time.perf_counter()
                cluster.submit(i)()
                latency.append(time.perf_counter() - start)
            client1, wall1 = time.process_time(), time.perf_counter()
            daemon1, workers1 = cpu_seconds(daemon)
        finally:
            cluster.close()
    finally:
        node.stop()
    us = 1e6 / jobs
    print(
        f"per job: client {(client1 - client0) * us:.1f} us CPU, "
        f"node daemon {(daemon1 - daemon0) * us:.1f} us, "
        f"workers {(workers1 - workers0) * us:.1f} us; "
        f"wall {(wall1 - wall0) * us:.1f} us, p50 {statistics.median(latency) * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
