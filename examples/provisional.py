"""Provisional results: jobs report intermediate values; the callback may cancel the rest.

Usage: start a node (``dispy-node run -i 127.0.0.1 -p 9000``), then
``python examples/provisional.py 127.0.0.1 9000``.
"""

from __future__ import annotations

import sys

import dispy


def compute(n: int) -> float:
    import random
    import time

    best = 1.0
    for _ in range(n):
        r = random.uniform(0, 1)
        if r < best:
            best = r
            dispy_provisional_result(best)  # noqa: F821 - provided by dispy on the node
        time.sleep(0.01)
    return best


def main(host: str, port: int) -> None:
    jobs: list[dispy.DispyJob] = []

    def callback(job: dispy.DispyJob) -> None:
        if job.status == dispy.DispyJob.ProvisionalResult and job.result < 0.001:
            for other in jobs:
                if other.status in (dispy.DispyJob.Created, dispy.DispyJob.Running):
                    cluster.cancel(other)

    cluster = dispy.JobCluster(
        compute, nodes=[(host, port)], ip_addr="127.0.0.1", port=0, callback=callback
    )
    for i in range(4):
        job = cluster.submit(200)
        if job is not None:
            job.id = i
            jobs.append(job)
    cluster.wait()
    for job in jobs:
        print(job.id, dispy.DispyJob.Finished == job.status, job.result)
    cluster.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
