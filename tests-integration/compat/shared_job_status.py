"""A dispy 4.15 style program for a shared scheduler: SharedJobCluster found with
scheduler_host and dispy_port, a job_status callback, submit_job_id and status().

Run unchanged by tests-integration/test_compat_api.py; the first lines read where the
scheduler is (a 4.15 user would write its host name and leave dispy_port alone).
"""

import os

SCHEDULER = os.environ["DISPY_TEST_SCHEDULER"]
PORT = int(os.environ["DISPY_TEST_PORT"])
SECRET = os.environ["DISPY_SECRET"]  # the scheduler's cluster secret

# --- from here on, what a dispy 4.15 user writes ---------------------------------------
import threading  # noqa: E402

import dispy  # noqa: E402


def compute(n):
    return n + 1000


def job_status(job):
    if job.status == dispy.DispyJob.Finished:
        with lock:
            done[job.id] = job.result
            lock.notify()


lock = threading.Condition()
done = {}
cluster = dispy.SharedJobCluster(
    compute,
    nodes=["*"],
    job_status=job_status,
    scheduler_host=SCHEDULER,
    dispy_port=PORT,
    secret=SECRET,
    loglevel=dispy.logger.WARNING,
)
jobs = [cluster.submit_job_id(f"job-{i}", i) for i in range(10)]
with lock:
    lock.wait_for(lambda: len(done) == 10, timeout=60)
cluster.wait()
print("done", sorted(done) == sorted(f"job-{i}" for i in range(10)), sum(done.values()))
status = cluster.status()
print("status", len(status.nodes) >= 1, status.jobs_pending)
print("deallocate", cluster.deallocate_node(status.nodes[0]))
cluster.close()
print("closed")
