"""setup, depends and files: load data once per node, send files both ways.

Usage: ``python examples/files_and_setup.py 127.0.0.1 9000`` with a node running there.
"""

from __future__ import annotations

import os
import sys
import tempfile

import dispy


def setup() -> int:
    # Runs once per node in the computation's directory; the warm workers inherit DATA.
    global DATA
    with open("words.txt") as fh:
        DATA = fh.read().split()
    return 0


def compute(i: int) -> int:
    name = f"result-{i}.txt"
    with open(name, "w") as fh:
        fh.write(DATA[i % len(DATA)])
    dispy_send_file(name)  # noqa: F821 - arrives in the client's working directory
    return len(DATA)


def main(host: str, port: int) -> None:
    work = tempfile.mkdtemp()
    words = os.path.join(work, "words.txt")
    with open(words, "w") as fh:
        fh.write("alpha beta gamma delta")
    os.chdir(work)
    cluster = dispy.JobCluster(
        compute,
        nodes=[(host, port)],
        ip_addr="127.0.0.1",
        port=0,
        depends=[words],
        setup=setup,
    )
    jobs = [cluster.submit(i) for i in range(4)]
    print([job() for job in jobs if job is not None])
    print(sorted(f for f in os.listdir(work) if f.startswith("result-")))
    cluster.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
