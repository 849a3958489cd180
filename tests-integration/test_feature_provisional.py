"""``dispy_provisional_result``: intermediate results reach the callback while the job runs."""

from __future__ import annotations

import threading
import time

import pytest
from harness import wait_for
from harness.features import Recorder, provisional_then_wait, search

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


def test_provisional_results_in_order_then_final(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="provisional")
    recorder = Recorder()
    cluster = cluster_factory(
        provisional_then_wait,
        [node],
        callback=recorder.callback,
        cluster_status=recorder.cluster_status,
    )
    release = tmp_path / "release"
    job = cluster.submit(str(release), 4)
    job.id = "p4"
    wait_for(lambda: len(recorder.calls_for("p4")) >= 4, 20, "4 provisional callbacks")

    # The job is still running (it waits for `release`), and the callback saw every value.
    assert not job.finish.is_set()
    assert job.status == DispyJob.ProvisionalResult
    steps = [(DispyJob.ProvisionalResult, ("step", i)) for i in range(4)]
    assert recorder.calls_for("p4") == steps
    provisional_events = [
        j.result for s, _n, j in recorder.events if s == DispyJob.ProvisionalResult
    ]
    assert provisional_events == [("step", i) for i in range(4)]

    release.touch()
    assert job() == ("final", 4)
    assert cluster.wait(timeout=10)
    assert job.status == DispyJob.Finished
    assert recorder.calls_for("p4") == [*steps, (DispyJob.Finished, ("final", 4))]
    cluster.close()


def test_callback_cancels_jobs_on_good_provisional_result(node_factory, cluster_factory, tmp_path):
    """The reference's example: stop every job once one reports a good enough result."""
    node = node_factory.one(cpus=2, name="optimiser")
    jobs = []
    seen = []
    good = threading.Event()

    def job_callback(job):
        if job.status == DispyJob.ProvisionalResult:
            seen.append((job.id, job.result))
            if job.result < 0.005:
                good.set()
                for j in jobs:
                    if j.status in (
                        DispyJob.Created,
                        DispyJob.Running,
                        DispyJob.ProvisionalResult,
                    ):
                        cluster.cancel(j)

    cluster = cluster_factory(search, [node], callback=job_callback)
    started = [tmp_path / f"started-{i}" for i in range(3)]
    # Two CPUs: jobs 0 and 1 run, job 2 waits; job 1 reports a good result.
    for i, flag in enumerate([False, True, False]):
        job = cluster.submit(flag, str(started[i]))
        job.id = i
        jobs.append(job)
    assert good.wait(20), f"no good provisional result; seen {seen}"
    assert cluster.wait(timeout=15), "every job should end soon after the cancels"
    assert [j.status for j in jobs] == [DispyJob.Cancelled] * 3
    assert (1, 0.001) in seen
    assert started[0].exists()
    assert started[1].exists()
    started_close = time.monotonic()
    cluster.close()
    assert time.monotonic() - started_close < 3
    node.wait_log("free again", 5)
