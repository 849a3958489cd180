"""A dispy 4.15 style program: take a node out of a cluster and back with
deallocate_node / allocate_node, and close the computation on one with close_node while a
job of its runs there.

Run unchanged by tests-integration/test_compat_api.py; only the first lines read where the
nodes are (a 4.15 user would write nodes=['*']).
"""

import json
import os

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
PORT = int(os.environ["DISPY_TEST_PORT"])
SECRET = os.environ["DISPY_SECRET"]

# --- from here on, what a dispy 4.15 user writes ---------------------------------------
import time  # noqa: E402

import dispy  # noqa: E402


def compute(seconds):
    import time

    time.sleep(seconds)
    return seconds


cancelled = []


def cluster_status(status, node, job):
    if status == dispy.DispyJob.Cancelled:
        cancelled.append((job.id, node.name if node else None))


cluster = dispy.JobCluster(
    compute,
    nodes=NODES,
    host="127.0.0.1",
    dispy_port=PORT,
    secret=SECRET,
    cluster_status=cluster_status,
)
deadline = time.time() + 30
while len(cluster.status().nodes) < 2 and time.time() < deadline:
    time.sleep(0.1)
first, second = sorted(cluster.status().nodes, key=lambda node: node.name)
print("nodes", len(cluster.status().nodes))
print("name", cluster.name())

print("deallocate", cluster.deallocate_node(first))
jobs = [cluster.submit(0.05) for i in range(6)]
cluster.wait()
used = {n.name: n.jobs_done for n in cluster.status().nodes}
print("done", used.get(first.name, 0), used.get(second.name, 0))

print("allocate", cluster.allocate_node(first))
time.sleep(0.5)
jobs = [cluster.submit_node(first, 0.05) for i in range(2)]
cluster.wait()
print("back", [job.status == dispy.DispyJob.Finished for job in jobs])

long_job = cluster.submit_node(second, 1.5)
while long_job.status != dispy.DispyJob.Running and time.time() < deadline:
    time.sleep(0.05)
waiting = [cluster.submit_node(second, 0.05) for i in range(2)]  # behind the long one
print("close", cluster.close_node(second))
print("long", long_job(), long_job.status == dispy.DispyJob.Finished)
for job in waiting:
    job()
print("waiting", [job.status == dispy.DispyJob.Cancelled for job in waiting])
print("why", [job.exception.startswith("Cancelled") for job in waiting])
time.sleep(0.2)  # cluster_status runs in its own thread
print("cancelled", sorted(cancelled) == sorted((job.id, second.name) for job in waiting))
jobs = [cluster.submit(0.05) for i in range(4)]
cluster.wait()
used = {n.name: n.jobs_done for n in cluster.status().nodes}
print("after-close", sorted(used), [j.result for j in jobs])
cluster.close()
print("closed")
