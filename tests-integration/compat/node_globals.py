# ruff: noqa: F821, UP031  (4.15 style: names the node provides, %-formatting)
# A computation that reads what setup left in its globals, and the names the node gives
# every job (dispy_node_name, dispy_node_ip_addr), in the style of 4.15's examples.
import json
import os

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])  # a free client port (4.15: dispy_port)


def setup(scale):
    # runs once on each node; what it makes global is seen by every job there
    global table, factor
    table = {i: i * i for i in range(10)}
    factor = scale
    return 0


def compute(n):
    import os

    # a job runs in its computation's directory, which 4.15 named dispy_job_path
    here = os.path.samefile(dispy_job_path, os.getcwd())
    dispy_provisional_result(("started", n), False)  # 4.15's second argument: relay
    return (dispy_node_name, dispy_node_ip_addr, here and table[n] * factor)


if __name__ == "__main__":
    import dispy

    # setup's argument comes with each node's NodeAllocate (4.15 refuses functools.partial)
    nodes = [dispy.NodeAllocate(host, port, setup_args=(3,)) for host, port in NODES]
    cluster = dispy.JobCluster(
        compute,
        nodes=nodes,
        secret=SECRET,
        setup=setup,
        host="127.0.0.1",
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    jobs = [cluster.submit(n) for n in range(5)]
    for job in jobs:
        name, ip_addr, value = job()
        print("job %s on %s at %s: %s" % (job.id, name, ip_addr, value))
    cluster.close()
