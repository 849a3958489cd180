"""A 4.15-style program: a NodeAllocate subclass gives each node its own data file (per-node
``depends``) and its own ``setup_args``; ``setup`` loads that file into a global the jobs read.

Run by tests-integration/test_compat_alloc.py; prints one ``result`` line per job.
"""

import json
import os

# The test's nodes (a 4.15 program would find them with nodes=['*']), the nodes' secret and
# a free client port (4.15 reads neither from the environment itself).
NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])


def setup(data_file, scale, out_dir):
    # runs once on each node, in the computation's directory, before any job there
    global node_data, node_scale
    with open(data_file) as fd:
        node_data = fd.read().strip()
    node_scale = scale
    return 0


def cleanup(data_file, scale, out_dir):
    # 4.15 calls cleanup with the arguments setup had on that node
    # (out_dir: where the program runs; the test's nodes share its file system)
    import os

    with open(os.path.join(out_dir, "cleanup-" + data_file), "w") as fd:
        fd.write(f"{data_file} {scale}")


def compute(n):
    import os
    import time

    time.sleep(0.3)  # long enough for both nodes to take jobs
    others = sorted(name for name in os.listdir(".") if name.startswith("data-"))
    return node_data, n * node_scale, others


import dispy  # noqa: E402


class NodeData(dispy.NodeAllocate):
    """Each node gets a data file named after it and a scale factor of its own."""

    def __init__(self, host, port, scale):
        super().__init__(host, port=port)
        self.scale = scale

    def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
        data_file = f"data-{name}.txt"
        with open(data_file, "w") as fd:
            fd.write(f"data for {name}")
        self.depends = [data_file]
        self.setup_args = (data_file, self.scale, os.getcwd())
        return cpus


if __name__ == "__main__":
    scales = (10, 100)
    allocs = [NodeData(host, port, scales[i]) for i, (host, port) in enumerate(NODES)]
    # host and dispy_port keep the test on loopback on a free port (other tests run too)
    cluster = dispy.JobCluster(
        compute,
        nodes=allocs,
        setup=setup,
        cleanup=cleanup,
        host="127.0.0.1",
        dispy_port=PORT,
        secret=SECRET,
        loglevel=dispy.logger.WARNING,
    )
    jobs = []
    for i in range(8):
        job = cluster.submit(i)
        job.id = i
        jobs.append(job)
    for job in jobs:
        data, scaled, files = job()
        print("result", job.id, job.ip_addr, data.split()[-1], scaled, ",".join(files))
    cluster.close()
