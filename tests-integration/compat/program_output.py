# ruff: noqa: UP031  (4.15 style: %-formatting)
# A program (not a Python function) as the computation: its output comes back as bytes,
# which the program decodes itself, as 4.15's users did.
import json
import os
import stat
import sys

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])  # a free client port (4.15: dispy_port)

SCRIPT = (
    """#!%s
import sys
sys.stdout.buffer.write(("caf\\u00e9 %%s\\n" %% sys.argv[1]).encode("utf-8"))
sys.stdout.buffer.write(b"raw \\xff\\xfe\\n")
sys.stderr.write("done %%s\\n" %% sys.argv[1])
"""
    % sys.executable
)


if __name__ == "__main__":
    import dispy

    path = os.path.abspath("greet_program.py")
    with open(path, "w") as fh:
        fh.write(SCRIPT)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    cluster = dispy.JobCluster(
        path,
        nodes=NODES,
        secret=SECRET,
        host="127.0.0.1",
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    jobs = [cluster.submit(str(i)) for i in range(3)]
    for job in jobs:
        job()
        lines = job.stdout.splitlines()
        print(
            "job %s: %s | %r | %s | %s"
            % (
                job.result,
                lines[0].decode("utf-8"),
                lines[1],
                job.stderr.decode().strip(),
                type(job.stdout).__name__,
            )
        )
    cluster.close()
