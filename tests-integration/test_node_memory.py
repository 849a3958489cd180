"""The node daemon's memory stays bounded whatever a job prints or a client sends
(issue 9, item 8): output is kept to its tail, oversized files are refused unread."""

from __future__ import annotations

import threading

import psutil
import pytest
from harness.computations import loud, square_plus

from dispy import DispyJob

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20

LOUD_SCRIPT = """\
import sys
line = "x" * 1023 + "\\n"
block = line * 1024
for _ in range(200):
    sys.stdout.write(block)
sys.stdout.write("the end\\n")
print("done", file=sys.stderr)
"""


class PeakRss:
    """The largest resident size of a process while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_program_printing_200_mb_keeps_the_daemon_small(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="loud", extra_args=["--max_job_output", "4m"])
    script = tmp_path / "loud.py"
    script.write_text(LOUD_SCRIPT)
    cluster = cluster_factory(str(script), [node])
    with PeakRss(node.pid) as rss:
        job = cluster.submit()
        assert job is not None
        assert job.finish.wait(60)
    assert job.status == DispyJob.Finished, (job.status, job.exception)
    assert job.result == 0
    assert rss.growth < 48 * MiB, f"the daemon grew by {rss.growth / MiB:.0f} MiB"
    assert job.stdout.endswith(b"the end\n")  # the tail is kept (a program's output: bytes)
    assert len(job.stdout) < 4 * MiB + 1000
    assert job.stdout.startswith(b"[dispy-node: the first ")
    assert b"output over max_job_output" in job.stderr
    assert job.stderr.startswith(b"done\n")
    cluster.close()


def test_a_function_job_printing_without_end_keeps_its_tail(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="loud-fn", extra_args=["--max_job_output", "1m"])
    cluster = cluster_factory(loud, [node])
    job = cluster.submit(50)
    assert job is not None
    assert job.finish.wait(60)
    assert job.status == DispyJob.Finished, (job.status, job.exception)
    assert job.result == 50
    assert job.stdout.endswith("last line\n")
    assert len(job.stdout) < MiB + 1000
    assert "output over max_job_output" in job.stderr
    cluster.close()


def test_a_file_over_max_file_size_is_refused_unread(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="small-files", extra_args=["--max_file_size", "1m"])
    cluster = cluster_factory(square_plus, [node])
    job = cluster.submit(3)
    assert job is not None
    assert job.finish.wait(30)
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(200 * MiB)
    with PeakRss(node.pid) as rss:
        assert cluster.send_file(str(big), "127.0.0.1") == -1
    assert rss.growth < 64 * MiB, f"the daemon grew by {rss.growth / MiB:.0f} MiB"
    node.wait_log("max_file_size")
    # the connection is intact: jobs still run
    again = cluster.submit(4)
    assert again is not None
    assert again.finish.wait(30)
    assert again.status == DispyJob.Finished
    cluster.close()
