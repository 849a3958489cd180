"""A dispy 4.15 style program: a node started after the cluster is added with
discover_nodes, then given jobs of its own with submit_job_id_node.

Run unchanged by tests-integration/test_compat_api.py; the first lines read where the
nodes are; the late node's address comes on stdin once the test has started it.
"""

import json
import os
import sys

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
PORT = int(os.environ["DISPY_TEST_PORT"])
SECRET = os.environ["DISPY_SECRET"]

# --- from here on, what a dispy 4.15 user writes ---------------------------------------
import time  # noqa: E402

import dispy  # noqa: E402


def compute(n):
    import socket

    return (n, socket.gethostname())


cluster = dispy.JobCluster(compute, nodes=NODES, host="127.0.0.1", dispy_port=PORT, secret=SECRET)
jobs = [cluster.submit_job_id(f"first-{i}", i) for i in range(4)]
cluster.wait()
print("first", sorted(job.id for job in jobs), [job.result[0] for job in jobs])
print("ready", flush=True)

before = {n.name for n in cluster.status().nodes}
late = tuple(json.loads(sys.stdin.readline()))
print("discover", cluster.discover_nodes([late]))
deadline = time.time() + 30
while len(cluster.status().nodes) < 2 and time.time() < deadline:
    time.sleep(0.1)
nodes = cluster.status().nodes
print("nodes", len(nodes))
node = next(n for n in nodes if n.name not in before)
jobs = [cluster.submit_job_id_node(100 + i, node, i) for i in range(3)]
cluster.wait()
print(
    "late",
    [job.id for job in jobs],
    sorted(set(job.ip_addr for job in jobs)),
    all(job.status == dispy.DispyJob.Finished for job in jobs),
)
print("on", sorted(n.name for n in cluster.status().nodes) == sorted(before | {node.name}))
cluster.shutdown()
print("shutdown")
