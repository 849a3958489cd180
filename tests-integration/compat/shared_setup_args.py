"""A dispy 4.15 style program for a shared scheduler: a NodeAllocate subclass whose
``allocate()`` gives each node its own data file (``depends``) and ``setup_args``;
``setup`` keeps them in globals the jobs read.

Run unchanged by tests-integration/test_compat_alloc.py; the first lines read where the
scheduler is (a 4.15 user would write its host name and leave dispy_port alone). Prints one
``result`` line per job.
"""

import os

SCHEDULER = os.environ["DISPY_TEST_SCHEDULER"]
PORT = int(os.environ["DISPY_TEST_PORT"])

# --- from here on, what a dispy 4.15 user writes ---------------------------------------


def setup(data_file, greeting):
    # runs once on each node, in the computation's directory, before any job there
    global node_data, node_greeting
    with open(data_file) as fd:
        node_data = fd.read().strip()
    node_greeting = greeting
    return 0


def compute(n):
    import os
    import time

    time.sleep(0.3)  # long enough for both nodes to take jobs
    mine = sorted(name for name in os.listdir(".") if name.startswith("data-"))
    return dispy_node_name, node_data, node_greeting, n, mine  # noqa: F821


import dispy  # noqa: E402


class NodeData(dispy.NodeAllocate):
    """Each node gets a data file named after it and a greeting of its own."""

    def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
        data_file = f"data-{name}.txt"
        with open(data_file, "w") as fd:
            fd.write(f"data for {name}")
        self.depends = [data_file]
        self.setup_args = (data_file, f"hello {name}")
        return cpus


if __name__ == "__main__":
    cluster = dispy.SharedJobCluster(
        compute,
        nodes=[NodeData("*")],
        setup=setup,
        scheduler_host=SCHEDULER,
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    jobs = []
    for i in range(8):
        job = cluster.submit(i)
        job.id = i
        jobs.append(job)
    for job in jobs:
        name, data, greeting, n, mine = job()
        print("result", job.id, n, name, data.split()[-1], greeting.split()[-1], ",".join(mine))
    cluster.close()
    print("closed")
