"""Large arguments and results through real nodes: intact, of the right type, never mixed up.

Large bytes objects travel out of band and land in reused buffers on the node and the client;
these tests send many distinct payloads at once so a buffer handed out while still in use, or
a result matched to the wrong job, would show.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from harness import wait_for
from harness.computations import echo_len, reshape

from dispy import DispyJob

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
DONE = (DispyJob.Finished, DispyJob.Terminated, DispyJob.Cancelled, DispyJob.Abandoned)


def distinct(i: int, size: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (size // 32) + os.urandom(size % 32)


def test_large_arguments_and_results_round_trip_in_every_shape(node_factory, cluster_factory):
    (node,) = node_factory(1, cpus=2, name="large")
    cluster = cluster_factory(reshape, [node])
    sizes = [0, 1, (64 << 10) - 1, 64 << 10, MiB + 3, 5 * MiB]
    jobs = []
    for i, size in enumerate(sizes):
        data = distinct(i, size)
        jobs.append((cluster.submit(data, extra={"n": i, "blob": data[:100]}), data))
    mutable = bytearray(distinct(99, 2 * MiB))
    jobs.append((cluster.submit(mutable), bytes(mutable)))
    for job, data in jobs:
        result = job()
        assert job.status == DispyJob.Finished, job.exception
        same, wrapped, deep, digest = result
        assert same == data
        assert wrapped["again"] == data
        assert deep == [[[data]]]
        assert digest == hashlib.sha256(data).hexdigest()
    # a bytearray argument stays a bytearray (copied when submitted, not sent by reference)
    assert type(jobs[-1][0].result[0]) is bytearray
    assert all(type(job.result[0]) is bytes for job, _ in jobs[:-1])


def test_many_distinct_large_payloads_at_once_are_never_mixed_up(node_factory, cluster_factory):
    nodes = node_factory(2, cpus=2, name="mix")
    cluster = cluster_factory(echo_len, nodes)
    wait_for(lambda: len(cluster.nodes()) == 2, 20, "both nodes should join the cluster")
    payloads = [distinct(i, 2 * MiB + 17 * i) for i in range(40)]
    jobs = [cluster.submit(i, data) for i, data in enumerate(payloads)]
    for i, (job, data) in enumerate(zip(jobs, payloads, strict=True)):
        tag, length, echoed = job()
        assert job.status == DispyJob.Finished, job.exception
        assert (tag, length) == (i, len(data))
        assert echoed == data, f"job {i} got another job's bytes back"
    assert {job.ip_addr for job in jobs} == {"127.0.0.1"}


def test_a_node_is_not_flooded_with_large_jobs(node_factory, cluster_factory):
    """Jobs with large arguments are queued on a node only a few at a time."""
    (node,) = node_factory(1, cpus=1, name="flood")
    cluster = cluster_factory(echo_len, [node])
    assert cluster.submit(0, b"warm up")()[0] == 0  # teaches the client that jobs are short
    data = distinct(1, 16 * MiB)
    jobs = [cluster.submit(i, data) for i in range(8)]
    core = cluster._core
    key = next(iter(core.sessions))

    def placed() -> int:
        alloc = core.engine.allocation(core.comp_id, key)  # read on another thread: a peek
        return len(alloc.placed) if alloc is not None else 0

    peak = 0
    deadline = time.monotonic() + 90
    while any(job.status not in DONE for job in jobs) and time.monotonic() < deadline:
        peak = max(peak, placed())
        time.sleep(0.005)
    assert all(job()[1] == len(data) for job in jobs)
    # one running plus one queued ahead, not all eight (128 MiB) at once
    assert 1 <= peak <= 2, peak
