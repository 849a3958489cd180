# ruff: noqa: F821, UP031  (4.15 style: names the node provides, %-formatting)
# A 'delegate' computation: each job names a function, sent with the job
# (dispy_job_depends) or with the cluster (depends), that the delegate finds in its globals.
import json
import os

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])  # a free client port (4.15: dispy_port)


def delegate(func_name, n):
    func = globals()[func_name]
    return func(n)


def square(n):
    return (dispy_node_name + ": square", n * n)


def negate(n):
    return (dispy_node_name + ": negate", -n)


class Doubler:
    def apply(self, n):
        return 2 * n


def doubled(n):
    return ("doubled", Doubler().apply(n))


if __name__ == "__main__":
    import dispy

    # 'doubled' and its class go with the cluster; the others with each job
    cluster = dispy.JobCluster(
        delegate,
        nodes=NODES,
        secret=SECRET,
        depends=[doubled, Doubler],
        host="127.0.0.1",
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    jobs = []
    for i in range(4):
        func = square if i % 2 == 0 else negate
        jobs.append(cluster.submit(func.__name__, i + 1, dispy_job_depends=[func]))
    jobs.append(cluster.submit("doubled", 21))
    # a function sent with one job is gone for the next
    jobs.append(cluster.submit("square", 5))
    for job in jobs:
        job()
        if job.status == dispy.DispyJob.Finished:
            print("job %s: %s %s" % (job.id, job.result[0].split(": ")[-1], job.result[1]))
        else:
            print("job %s: failed %s" % (job.id, job.exception.strip().splitlines()[-1]))
    cluster.close()
