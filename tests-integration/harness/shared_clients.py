"""A real ``dispy.SharedJobCluster`` in a process of its own (``harness.client_proc``).

The shared-execution end-to-end tests run several user programs at once, each its own
process, as users do. :func:`shared_client` starts one: it creates a SharedJobCluster of
:func:`stamp` (which records where and when each job ran) toward a real
``dispy-scheduler serve``, prints ``ready``, optionally waits for a file ``go``, submits its
jobs, prints ``submitted``, waits for all of them, prints one ``summary`` line (JSON: each
job's status, result and exception, and wall times), closes and prints ``closed``. A
``SchedulerError`` from the constructor is printed as ``error <text>``. With ``marks`` (a
folder), each job leaves ``<tag>.<n>.<node>`` there when it starts.

:func:`summary` reads that line back; :func:`spans` turns results into
``(tag, node tag, start, end)`` rows for the interleaving and exclusivity checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.client_proc import HARNESS_ROOT, ClientProcess

SCRIPT = """\
import json
import logging
import os
import sys
import time

sys.path.insert(0, {root!r})

import dispy


def stamp(tag, n, seconds, marks):
    import os as _os
    import time as _time

    start = _time.time()
    if marks:
        with open(_os.path.join(marks, f"{{tag}}.{{n}}.{{_os.environ.get('NODE_TAG')}}"), "w"):
            pass
    _time.sleep(seconds)
    return [tag, _os.environ.get("NODE_TAG"), start, _time.time(), n * n]


def say(text):
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()


cfg = json.loads(open(sys.argv[1]).read())
tls = cfg["tls"] or [None, None]
try:
    cluster = dispy.SharedJobCluster(
        stamp,
        scheduler_node="127.0.0.1",
        scheduler_port=cfg["scheduler_port"],
        ip_addr="127.0.0.1",
        port=0,
        secret=cfg["secret"],
        certfile=tls[0],
        keyfile=tls[1],
        exclusive=cfg["exclusive"],
        reentrant=cfg["reentrant"],
        loglevel=logging.INFO,
    )
except dispy.SchedulerError as exc:
    say("error " + str(exc).replace("\\n", " "))
    sys.exit(3)
t_ready = time.time()
say("ready")
if cfg["go"]:
    while not os.path.exists(cfg["go"]):
        time.sleep(0.02)
t_submit = time.time()
jobs = [cluster.submit(cfg["tag"], n, cfg["seconds"], cfg["marks"]) for n in range(cfg["jobs"])]
say("submitted")
cluster.wait()
t_done = time.time()
say("summary " + json.dumps({{
    "statuses": [int(job.status) for job in jobs],
    "results": [job.result for job in jobs],
    "exceptions": [str(job.exception) if job.exception else None for job in jobs],
    "t_ready": t_ready,
    "t_submit": t_submit,
    "t_done": t_done,
}}))
cluster.close()
say("closed")
"""


def shared_client(
    workdir: Path,
    *,
    name: str,
    scheduler_port: int,
    secret: str,
    jobs: int,
    seconds: float = 0.0,
    exclusive: bool = False,
    reentrant: bool = False,
    tls: tuple[str, str] | None = None,
    go: Path | None = None,
    marks: Path | None = None,
) -> ClientProcess:
    """A started client process named ``name`` (also its jobs' tag); see the module doc."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "scheduler_port": scheduler_port,
                "secret": secret,
                "tag": name,
                "jobs": jobs,
                "seconds": seconds,
                "exclusive": exclusive,
                "reentrant": reentrant,
                "tls": list(tls) if tls else None,
                "go": str(go) if go else None,
                "marks": str(marks) if marks else None,
            }
        )
    )
    source = SCRIPT.format(root=HARNESS_ROOT)
    return ClientProcess(workdir, source, [str(config)], name=name).start()


def summary(client: ClientProcess, timeout: float) -> dict[str, Any]:
    """The client's ``summary`` line, decoded (waits up to ``timeout`` for it)."""
    line = client.wait_line(lambda text: text.startswith("summary "), timeout)
    data: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return data


def spans(results: Sequence[Any]) -> list[tuple[str, str, float, float]]:
    """``(tag, node tag, start, end)`` of every job that returned a :func:`stamp` result."""
    return [(r[0], r[1], r[2], r[3]) for r in results if r is not None]
