# ruff: noqa: F821, UP031  (4.15 style: names the node provides, %-formatting)
# A long search cancelled by the client: the job catches KeyboardInterrupt (the node's
# interrupt) and returns the best it found so far.
import json
import os
import time

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])  # a free client port (4.15: dispy_port)


def search(limit):
    import time

    best = 0
    try:
        for i in range(limit):
            best = i
            if i == 3:
                dispy_provisional_result(("searching", best))
            time.sleep(0.05)
    except KeyboardInterrupt:
        return ("interrupted", best)
    return ("complete", best)


if __name__ == "__main__":
    import dispy

    def progress(job):
        if job.status == dispy.DispyJob.ProvisionalResult:
            print("provisional %s" % (job.result,))

    cluster = dispy.JobCluster(
        search,
        nodes=NODES,
        secret=SECRET,
        callback=progress,
        host="127.0.0.1",
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    job = cluster.submit(1000000)
    deadline = time.time() + 30
    while job.status != dispy.DispyJob.Running and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    cluster.cancel(job)
    job()
    status = "Cancelled" if job.status == dispy.DispyJob.Cancelled else job.status
    print("status %s result %s" % (status, job.result))
    quick = cluster.submit(3)  # the node's worker serves the next job
    print("next %s" % (quick(),))
    cluster.close()
