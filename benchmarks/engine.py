"""The scheduling engine alone (dispy_core.engine): events per second and memory per job.

Drives one Engine with virtual nodes (default 1,000 of 64 CPUs) and jobs (default 1,000,000):
jobs are submitted in batches, each node reports its running jobs done in one frame per round
and starts the jobs waiting in its queue, as a real node would. No sockets, no processes:
this measures the decisions only. Memory per queued job is measured with tracemalloc on jobs
submitted with no node to run them.

    python benchmarks/engine.py                 # the full run
    python benchmarks/engine.py --jobs 20000    # a quick one

Prints a table and writes JSON to benchmarks/results/engine-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

from dispy_core.engine import (
    ComputationOpened,
    Engine,
    Event,
    JobReport,
    JobsDone,
    JobSpec,
    JobsStarted,
    JobsSubmitted,
    NodeReady,
    SendJobs,
)

COMP = 1


@dataclass
class VirtualNode:
    key: tuple[str, int]
    cpus: int
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)


def memory_per_job(count: int) -> float:
    """Bytes the engine keeps per queued job (its record, its queue entry, its id)."""
    engine = Engine()
    engine.handle(ComputationOpened(COMP), 0.0)
    # Ids above the small-int cache, as real job ids are; events built before measuring.
    base = 1 << 40
    event = JobsSubmitted(COMP, tuple(JobSpec(base + i, 100) for i in range(count)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine.handle(event, 0.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert engine.pending(COMP) == count
    return (after - before) / count


def throughput(nodes: int, cpus: int, jobs: int, batch: int, job_time: float) -> dict[str, float]:
    engine = Engine()
    keys = [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 51348) for i in range(nodes)]
    by_key = {key: VirtualNode(key, cpus) for key in keys}
    spent = 0.0
    calls = 0
    job_events = 0

    def handle(*events: Event) -> None:
        nonlocal spent, calls
        t0 = time.perf_counter()
        cmds = engine.handle_many(events, 0.0) if len(events) > 1 else engine.handle(events[0], 0.0)
        spent += time.perf_counter() - t0
        calls += len(events)
        for cmd in cmds:
            if isinstance(cmd, SendJobs):
                node = by_key[cmd.node]
                ahead = cmd.ahead
                for jid in cmd.job_ids:
                    (node.waiting if jid in ahead else node.running).append(jid)

    wall = time.perf_counter()
    handle(ComputationOpened(COMP))
    for key in by_key:
        handle(NodeReady(key, COMP, cpus, cpus))
    submitted = done = 0
    while done < jobs:
        while submitted < jobs and engine.pending(COMP) < batch:  # keep every node busy
            count = min(batch, jobs - submitted)
            specs = tuple(JobSpec(i, 100) for i in range(submitted, submitted + count))
            handle(JobsSubmitted(COMP, specs))
            submitted += count
            job_events += count
        for node in by_key.values():
            if not node.running:
                continue
            # As a real node: its running jobs end, the jobs waiting in its queue take their
            # CPUs, and both reports reach the engine together (one placement after them).
            finished = node.running
            reports = tuple(JobReport(i, "finished", 0.0, job_time) for i in finished)
            start, node.waiting = node.waiting[: node.cpus], node.waiting[node.cpus :]
            node.running = list(start)
            if start:
                handle(JobsDone(node.key, COMP, reports), JobsStarted(node.key, COMP, tuple(start)))
            else:
                handle(JobsDone(node.key, COMP, reports))
            done += len(finished)
            job_events += len(finished) + len(start)
    wall = time.perf_counter() - wall
    assert engine.live(COMP) == 0
    return {
        "jobs": jobs,
        "events": calls,
        "job_events": job_events,
        "engine_seconds": spent,
        "wall_seconds": wall,
        "events_per_s": calls / spent,
        "job_events_per_s": job_events / spent,
        "jobs_per_s": jobs / spent,
        "us_per_job": spent / jobs * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--cpus", type=int, default=64, help="CPUs per virtual node")
    parser.add_argument("--batch", type=int, default=10_000, help="jobs per submit event")
    parser.add_argument(
        "--job-time", type=float, default=0.01, help="seconds each job reports (sets depth)"
    )
    parser.add_argument(
        "--output", help="JSON file (default benchmarks/results/engine-DATE-HOST.json)"
    )
    args = parser.parse_args(argv)

    per_job = memory_per_job(min(args.jobs, 200_000))
    run = throughput(args.nodes, args.cpus, args.jobs, args.batch, args.job_time)
    rows = [
        ("virtual nodes x CPUs", f"{args.nodes} x {args.cpus}"),
        ("jobs (submitted, started, done)", f"{args.jobs:,}"),
        ("engine time", f"{run['engine_seconds']:.2f} s (wall {run['wall_seconds']:.2f} s)"),
        ("events handled", f"{run['events']:,}"),
        ("events / s (frames: submit, started, done)", f"{run['events_per_s']:,.0f}"),
        ("job events / s (per job: submitted, started, done)", f"{run['job_events_per_s']:,.0f}"),
        ("jobs / s (all their events)", f"{run['jobs_per_s']:,.0f}"),
        ("engine time per job", f"{run['us_per_job']:.2f} us"),
        ("memory per queued job", f"{per_job:.0f} bytes"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "args": vars(args),
        "metrics": {**run, "bytes_per_queued_job": per_job},
    }
    out = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
