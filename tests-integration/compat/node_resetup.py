"""A 4.15-style program: each node's ``setup`` gets its own argument from a NodeAllocate;
then ``resetup_node`` runs setup on one node again with a new argument while jobs are queued.

Run by tests-integration/test_compat_alloc.py; prints ``phase<n> <job id> <tag>`` per job.
"""

import json
import os
import time

# The test's nodes (a 4.15 program would find them with nodes=['*']), the nodes' secret and
# a free client port (4.15 reads neither from the environment itself).
NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])


def setup(tag):
    global node_tag, setup_pid
    node_tag = tag
    setup_pid = os.getpid()
    return 0


def compute(n):
    import time

    time.sleep(0.2)
    return node_tag, setup_pid


import dispy  # noqa: E402


class Tagged(dispy.NodeAllocate):
    """Remembers the name of the node it was matched with (4.15's DispyNode has no port)."""

    node_name = None

    def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
        cpus = super().allocate(cluster, ip_addr, name, cpus, avail_info, platform)
        if cpus > 0:
            self.node_name = name
        return cpus


def report(phase, jobs):
    for job in jobs:
        tag, pid = job()
        print(phase, job.id, tag, pid, flush=True)


if __name__ == "__main__":
    allocs = [
        Tagged(host, port, setup_args=(f"first-{i}",)) for i, (host, port) in enumerate(NODES)
    ]
    # host and dispy_port keep the test on loopback on a free port (other tests run too)
    cluster = dispy.JobCluster(
        compute,
        nodes=allocs,
        setup=setup,
        host="127.0.0.1",
        dispy_port=PORT,
        secret=SECRET,
        loglevel=dispy.logger.WARNING,
    )
    jobs = []
    for i in range(6):
        job = cluster.submit(i)
        job.id = i
        jobs.append(job)
    report("phase1", jobs)

    # the first node (as listed), set up again while more jobs wait
    node = next(n for n in cluster.status().nodes if n.name == allocs[0].node_name)
    queued = []
    for i in range(6, 16):
        job = cluster.submit(i)
        job.id = i
        queued.append(job)
    # as in 4.15: the node's NodeAllocate gives the new arguments when it is asked again
    allocs[0].setup_args = ("second",)
    print("resetup", cluster.resetup_node(node), flush=True)
    after = []
    for i in range(16, 20):
        job = cluster.submit(i)
        job.id = i
        after.append(job)
    report("phase2", queued)
    report("phase3", after)

    # once the node serves again, jobs sent to it see the new setup
    deadline = time.time() + 20
    while time.time() < deadline and not any(
        n.name == allocs[0].node_name for n in cluster.status().nodes
    ):
        time.sleep(0.1)
    node = next(n for n in cluster.status().nodes if n.name == allocs[0].node_name)
    pinned = []
    for i in range(20, 23):
        job = cluster.submit_node(node, i)
        job.id = i
        pinned.append(job)
    report("phase4", pinned)
    cluster.close()
