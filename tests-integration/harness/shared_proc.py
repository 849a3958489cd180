"""A real ``dispy.SharedJobCluster`` in its own process, so a test can ``kill -9`` it.

:func:`shared_submitter` runs :func:`harness.executions.recorded` through a scheduler with
an explicit ``recover_file`` (a :class:`harness.client_proc.ClientProcess`). The script
prints, one line each:

    cluster <port>                  the cluster is open (the scheduler accepted it)
    error <json text>               SharedJobCluster() raised (the script exits with 3)
    submitted                       every job was submitted (ids are the test's numbers)
    done <n> <status>               from the callback, as each job ends
    job <json [n, status, result, exception]>   after wait(), for each job (``close``)
    late <json [status, exception]>  a job submitted after wait() (``late``), once it ends
    waited <seconds>                how long wait() took
    closed <seconds>                how long close() took

Without ``close`` it sleeps after ``submitted`` until the test kills it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.client_proc import HARNESS_ROOT, ClientProcess

SHARED_SUBMITTER = """\
import json
import logging
import sys
import threading
import time

sys.path.insert(0, {root!r})

import dispy
from harness.executions import recorded

cfg = json.loads(open(sys.argv[1]).read())
out_lock = threading.Lock()


def say(text):
    with out_lock:
        sys.stdout.write(text + "\\n")
        sys.stdout.flush()


def on_done(job):
    say(f"done {{job.id}} {{int(job.status)}}")


try:
    cluster = dispy.SharedJobCluster(
        recorded,
        scheduler_node="127.0.0.1",
        scheduler_port=cfg["scheduler_port"],
        port=0,
        secret=cfg["secret"],
        recover_file=cfg["recover_file"],
        callback=on_done,
        loglevel=logging.INFO,
        **cfg["options"],
    )
except dispy.SchedulerError as exc:
    say("error " + json.dumps(str(exc)))
    sys.exit(3)
say(f"cluster {{cluster.port}}")
jobs = []
for n, seconds, gate in cfg["jobs"]:
    job = cluster.submit(n, cfg["log_dir"], seconds, gate)
    job.id = n
    jobs.append(job)
say("submitted")
if not cfg["close"]:
    time.sleep(3600)  # until the test kills us
started = time.monotonic()
cluster.wait()
say(f"waited {{time.monotonic() - started:.3f}}")
for job in jobs:
    exc = job.exception
    say("job " + json.dumps([job.id, int(job.status), job.result, exc and str(exc)]))
if cfg["late"]:
    job = cluster.submit(0, cfg["log_dir"])
    job()
    say("late " + json.dumps([int(job.status), job.exception and str(job.exception)]))
started = time.monotonic()
cluster.close()
say(f"closed {{time.monotonic() - started:.3f}}")
"""


def shared_submitter(
    workdir: Path,
    *,
    scheduler_port: int,
    secret: str,
    recover_file: Path,
    log_dir: Path | str,
    jobs: Sequence[tuple[int, float, str | None]],
    close: bool = False,
    late: bool = False,
    options: dict[str, Any] | None = None,
    name: str = "shared-client",
) -> ClientProcess:
    """A started SharedJobCluster client submitting ``jobs`` (``(n, seconds, gate)``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "scheduler_port": scheduler_port,
                "secret": secret,
                "recover_file": str(recover_file),
                "log_dir": str(log_dir),
                "jobs": [list(j) for j in jobs],
                "close": close,
                "late": late,
                "options": options or {},
            }
        )
    )
    source = SHARED_SUBMITTER.format(root=HARNESS_ROOT)
    return ClientProcess(workdir, source, [str(config)], name=name).start()


def job_lines(client: ClientProcess) -> dict[int, tuple[int, Any, str | None]]:
    """``n -> (status, result, exception)`` from the ``job`` lines the client printed."""
    out: dict[int, tuple[int, Any, str | None]] = {}
    for line in client.lines():
        if line.startswith("job "):
            n, status, result, exc = json.loads(line[4:])
            out[n] = (status, result, exc)
    return out


def seconds_of(client: ClientProcess, word: str, timeout: float) -> float:
    """The seconds printed on the client's ``waited`` or ``closed`` line."""
    line = client.wait_line(lambda text: text.startswith(word + " "), timeout)
    return float(line.split()[1])
