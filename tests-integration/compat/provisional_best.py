# ruff: noqa: F821, UP031  (4.15 style: names the node provides, %-formatting)
# Searches that report each better value as a provisional result tagged with the node's
# name and the job's process id ('os' and 'time' are not imported: a 4.15 node offered them
# to every job). Once one search is good enough, the job_status callback cancels the others.
# The winner also sends its log back with dispy_send_file, after checking that a file it does
# not have is answered with -1 (as 4.15 did), not an exception.
import json
import os

NODES = [tuple(node) for node in json.loads(os.environ["DISPY_TEST_NODES"])]
SECRET = os.environ["DISPY_SECRET"]
PORT = int(os.environ["DISPY_TEST_PORT"])  # a free client port (4.15: dispy_port)


def search(steps, pause):
    name = "%s/%s" % (dispy_node_name, os.getpid())
    best = 1.0
    with open("log-%s.txt" % steps, "w") as fd:
        for i in range(steps):
            value = 1.0 / (i + 2)
            if value < best:
                best = value
                if dispy_provisional_result((name, best)) != 0:
                    return (name, best, "provisional not delivered")
                fd.write("%.4f\n" % best)
            time.sleep(pause)
    missing = dispy_send_file("no-such-file.txt")
    sent = dispy_send_file("log-%s.txt" % steps)
    return (name, best, missing, sent)


def job_status(job):
    if job.status == dispy.DispyJob.ProvisionalResult:
        names.add(job.result[0].split("/")[0])
        if job.result[1] < 0.05 and not winners:
            winners.append(job.id)
            for other in jobs:
                if other.id != job.id and other.status in (
                    dispy.DispyJob.Created,
                    dispy.DispyJob.Running,
                    dispy.DispyJob.ProvisionalResult,
                ):
                    cluster.cancel(other)


if __name__ == "__main__":
    import dispy

    names, winners, jobs = set(), [], []
    cluster = dispy.JobCluster(
        search,
        nodes=NODES,
        secret=SECRET,
        job_status=job_status,
        host="127.0.0.1",
        dispy_port=PORT,
        loglevel=dispy.logger.WARNING,
    )
    jobs.append(cluster.submit(25, 0.02))
    jobs.append(cluster.submit(100000, 0.1))
    cluster.wait()
    first, second = jobs
    print("names %s" % ",".join(sorted(names)))
    print("winner %s" % winners)
    print("first %s %s" % (first.status == dispy.DispyJob.Finished, first.result[2:]))
    print("refused %s" % ("no-such-file.txt" in first.stderr))
    with open("log-25.txt") as fd:
        print("log %s" % fd.read().split())
    print("second %s" % (second.status == dispy.DispyJob.Cancelled))
    cluster.close()
