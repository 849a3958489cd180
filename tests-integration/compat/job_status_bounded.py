"""A dispy 4.15 style program: keep a bounded number of jobs in flight, driven by a
job_status callback that counts the pending jobs by their id.

Run unchanged by tests-integration/test_compat_api.py; only the first lines read where the
nodes are (a 4.15 user would write nodes=['*']).
"""

import json
import os

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
PORT = int(os.environ["DISPY_TEST_PORT"])
SECRET = os.environ["DISPY_SECRET"]

# --- from here on, what a dispy 4.15 user writes ---------------------------------------
import threading  # noqa: E402

import dispy  # noqa: E402


def compute(n):
    import time

    time.sleep(0.02)
    return n * n


def job_status(job):
    # called with each job whose result came in; a job is no longer pending then
    if job.status in (dispy.DispyJob.Finished, dispy.DispyJob.Terminated, dispy.DispyJob.Abandoned):
        with lock:
            pending.pop(job.id)
            if job.status == dispy.DispyJob.Finished:
                results[job.id] = job.result
            if len(pending) <= LOWER:
                lock.notify()


LOWER, UPPER, TOTAL = 3, 8, 60
lock = threading.Condition()
pending = {}
results = {}
most = 0

cluster = dispy.JobCluster(
    compute,
    nodes=NODES,
    job_status=job_status,
    host="127.0.0.1",
    dispy_port=PORT,
    secret=SECRET,
    loglevel=dispy.logger.WARNING,
)
ids = []
for i in range(TOTAL):
    with lock:
        job = cluster.submit(i)
        ids.append(job.id)
        pending[job.id] = job
        most = max(most, len(pending))
        if len(pending) >= UPPER:
            while len(pending) > LOWER:
                lock.wait()
cluster.wait()
status = cluster.status()
print("ids", "in-order" if ids == sorted(set(ids)) else ids)
print("max_pending", most)
print("results", len(results), sum(results.values()))
print("status", len(status.nodes), status.jobs_pending)
print("fields", job.result, job.status == dispy.DispyJob.Finished)
print("node", status.nodes[0].name, sorted(vars(status.nodes[0]))[:2])
cluster.close()
print("closed")
