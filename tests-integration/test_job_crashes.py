"""A job that fails or kills its own process ends Terminated with a clear reason; the node
carries on (loky's crash-point idea, on the job-execution side)."""

from __future__ import annotations

import pytest
from harness import History
from harness.computations import crash

from dispy import DispyJob

pytestmark = pytest.mark.timeout(60)

# mode -> text the job's exception must contain
FAILURES = {
    "exit": "exited with status 3",
    "segv": "SIGSEGV",
    "sysexit": "SystemExit: 5",
    "unpicklable": "lock",
}


def _expected(mode, n=0):
    return ("ok", n)


@pytest.mark.parametrize("cpus", [1, 2])
def test_job_crashes_terminated_and_node_keeps_serving(node_factory, cluster_factory, cpus):
    node = node_factory.one(cpus=cpus, name="crashy")
    history = History()
    cluster = cluster_factory(
        crash, [node], callback=history.callback, cluster_status=history.cluster_status
    )
    ok_jobs = []
    failed = {}
    n = 0
    for mode in FAILURES:
        for _ in range(3):
            ok_jobs.append(history.submit(cluster, "ok", n))
            n += 1
        failed[mode] = history.submit(cluster, mode, 100 + n)
    assert cluster.wait(timeout=30), history.summary()

    for mode, text in FAILURES.items():
        job = failed[mode]
        assert job.status == DispyJob.Terminated, (mode, job, job.exception)
        assert job.result is None, mode
        assert text in (job.exception or ""), (mode, job.exception)
    for job in ok_jobs:
        assert job.status == DispyJob.Finished, (job, job.exception)

    # The node replaced the dead workers and still serves this cluster.
    more = [history.submit(cluster, "ok", i) for i in range(n, n + 20)]
    assert cluster.wait(timeout=30), history.summary()
    assert [job.result for job in more] == [("ok", i) for i in range(n, n + 20)]
    history.check(_expected, allowed={DispyJob.Finished, DispyJob.Terminated})
    assert history.by_status() == {"Finished": n + 20, "Terminated": len(FAILURES)}
    node.wait_log("exited with status 3")
    node.wait_log("SIGSEGV")
    assert node.running()
    cluster.close()
