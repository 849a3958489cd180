"""``cluster.cancel``, ``cluster.wait``, ``job.finish``, callbacks before ``wait`` returns,
and ``cluster.close(timeout, terminate=True)``."""

from __future__ import annotations

import threading
import time

import pytest
from harness import wait_for
from harness.features import Recorder, block_until, interval, process_gone, whereami

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)


def _started(path, timeout=20):
    wait_for(path.exists, timeout, f"job should start ({path.name})")
    return int(path.read_text())


def test_cancel_queued_and_running_jobs(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="canceller")
    recorder = Recorder()
    cluster = cluster_factory(
        block_until, [node], callback=recorder.callback, cluster_status=recorder.cluster_status
    )
    release = tmp_path / "release"  # never created: the jobs would wait 30 s
    running = cluster.submit(str(release), str(tmp_path / "started-1"))
    pid = _started(tmp_path / "started-1")
    # Behind the running job on the only CPU: these never start.
    queued = [cluster.submit(str(release), str(tmp_path / f"started-{i}")) for i in (2, 3, 4)]
    for job in queued:
        assert cluster.cancel(job) == 0
    for job in queued:
        assert job.finish.wait(10), f"{job} should end once cancelled"
        assert job.status == DispyJob.Cancelled
    assert running.status == DispyJob.Running

    cancelled_at = time.monotonic()
    assert cluster.cancel(running) == 0
    assert running.finish.wait(10)
    assert running.status == DispyJob.Cancelled
    wait_for(lambda: process_gone(pid), 10, f"the cancelled job's process {pid} should die")

    # The CPU is free at once: a new job starts and ends well within a few seconds.
    release.touch()
    follow = cluster.submit(str(release), str(tmp_path / "started-5"))
    assert follow.finish.wait(10)
    assert follow.status == DispyJob.Finished
    assert time.monotonic() - cancelled_at < 4, "the node should run the next job at once"
    assert cluster.wait(timeout=10)
    cluster.close()

    # The queued jobs never ran; every job got its callback once.
    for i in (2, 3, 4):
        assert not (tmp_path / f"started-{i}").exists(), f"cancelled job {i} ran"
    for job in [running, *queued]:
        assert cluster.cancel(job) == -1  # already ended
    assert sorted(s for _i, s, _r in recorder.calls) == sorted(
        [DispyJob.Cancelled] * 4 + [DispyJob.Finished]
    )


def test_close_right_after_cancel_frees_node(node_factory, cluster_factory, tmp_path):
    """Regression: close() while the node replaced killed workers took 5 s and left the node
    busy for good (_template._kill_children missed a worker not yet in its own group)."""
    node = node_factory.one(cpus=2, name="closer")
    free = node.log_count("free again")
    for round_ in range(8):  # a race: several tries make it (nearly) certain to show
        cluster = cluster_factory(block_until, [node])
        release = tmp_path / "never"
        jobs = [
            cluster.submit(str(release), str(tmp_path / f"started-{round_}-{i}")) for i in (1, 2)
        ]
        for i in (1, 2):
            _started(tmp_path / f"started-{round_}-{i}")
        for job in jobs:
            cluster.cancel(job)
        for job in jobs:
            assert job.finish.wait(10)
        started = time.monotonic()
        cluster.close()
        took = time.monotonic() - started
        assert took < 3, f"round {round_}: close() took {took:.1f} s"
        free += 1
        node.wait_log("free again", 5, count=free)


def test_wait_timeout_and_finish_event(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="waiter")
    cluster = cluster_factory(block_until, [node])
    release = tmp_path / "release"
    job = cluster.submit(str(release), str(tmp_path / "started"))
    assert isinstance(job.finish, threading.Event)
    _started(tmp_path / "started")

    before = time.monotonic()
    assert cluster.wait(timeout=0.5) is False
    assert 0.4 <= time.monotonic() - before < 3
    assert not job.finish.is_set()
    assert job.status == DispyJob.Running

    release.touch()
    assert job.finish.wait(10)
    assert job.status == DispyJob.Finished
    assert job.result is not None  # the result is in when finish is set
    assert cluster.wait(timeout=5) is True
    cluster.close()


def test_wait_returns_after_every_callback_ran(node_factory, cluster_factory):
    node = node_factory.one(cpus=2, name="slow-callbacks")
    recorder = Recorder(callback_delay=0.2)
    cluster = cluster_factory(whereami, [node], callback=recorder.callback)
    jobs = [cluster.submit() for _ in range(6)]
    for i, job in enumerate(jobs):
        job.id = i
    assert cluster.wait(timeout=30)
    # Every callback has run (6 x 0.2 s), not merely every job ended.
    assert sorted(i for i, _s, _r in recorder.calls) == list(range(6))
    assert all(s == DispyJob.Finished for _i, s, _r in recorder.calls)
    cluster.close()


def test_close_with_terminate_cancels_running_jobs(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=2, name="terminator")
    recorder = Recorder()
    cluster = cluster_factory(block_until, [node], callback=recorder.callback)
    release = tmp_path / "never"
    jobs = [cluster.submit(str(release), str(tmp_path / f"started-{i}")) for i in range(3)]
    pids = [_started(tmp_path / f"started-{i}") for i in range(2)]
    started = time.monotonic()
    cluster.close(timeout=1, terminate=True)
    assert time.monotonic() - started < 5, "close(terminate=True) should not wait for jobs"
    assert [j.status for j in jobs] == [DispyJob.Cancelled] * 3, jobs
    for pid in pids:
        wait_for(lambda pid=pid: process_gone(pid), 10, f"job process {pid} should die")
    assert not (tmp_path / "started-2").exists()
    assert len(recorder.calls) == 3
    node.wait_log("free again")


def test_close_timeout_without_terminate(node_factory, cluster_factory):
    """close(timeout) waits up to timeout for running jobs; finished jobs keep results."""
    node = node_factory.one(cpus=1, name="patient")
    cluster = cluster_factory(interval, [node])
    quick = cluster.submit(0.1)
    slow = cluster.submit(30)
    assert quick.finish.wait(10)
    started = time.monotonic()
    assert cluster.close(timeout=0.5) is False  # jobs still running after the timeout
    assert time.monotonic() - started < 5
    assert quick.status == DispyJob.Finished
    assert slow.status in (DispyJob.Cancelled, DispyJob.Abandoned)
