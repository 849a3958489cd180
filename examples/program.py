"""A program computation: each job runs a script on the node; the result is its exit status.

Usage: ``python examples/program.py 127.0.0.1 9000`` with a node running there.
"""

from __future__ import annotations

import os
import sys
import tempfile

import dispy

SCRIPT = """import sys
print("squaring", sys.argv[1])
sys.exit(int(sys.argv[1]) ** 2 % 256)
"""


def main(host: str, port: int) -> None:
    path = os.path.join(tempfile.mkdtemp(), "square.py")
    with open(path, "w") as fh:
        fh.write(SCRIPT)
    cluster = dispy.JobCluster(path, nodes=[(host, port)], ip_addr="127.0.0.1", port=0)
    jobs = [cluster.submit(str(i)) for i in range(5)]
    for job in jobs:
        if job is not None:
            print(job(), job.stdout.strip())
    cluster.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
