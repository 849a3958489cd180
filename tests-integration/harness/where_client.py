"""A client process that reports where each of its jobs ran (for the namespace tests).

:func:`where_client` starts a :class:`~harness.client_proc.ClientProcess` (inside a network
namespace when given its ``ip netns exec`` wrapper) running a JobCluster of ``where(n,
seconds)``: the job sleeps ``seconds`` and returns ``(n, NODE_TAG of its node, n * n + 7)``.
The client waits until ``expect_nodes`` nodes serve it, submits the jobs (``job.id = n``),
waits for all of them, then, when ``hold`` names a file, waits for that file before closing
the cluster. It prints one line per event, which :func:`events` parses:

* ``discovery <seconds>`` (from the cluster's creation) and ``nodes [[ip, port, name],
  ...]`` once enough nodes serve (``nodes-missing ...`` and exit
  status 3 if they do not in ``node_timeout`` seconds);
* ``running <n> <ip>`` when a job starts on a node (cluster_status);
* ``node <status> <ip>`` for node events other than availability (cluster_status);
* ``done {"n":..., "status":..., "result":..., "ip":...}`` from the job callback;
* ``finished`` when every job ended and its callback ran, ``closed`` after
  ``cluster.close()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.client_proc import ClientProcess

SCRIPT = """\
import json
import logging
import os
import sys
import threading
import time

import dispy

cfg = json.loads(open(sys.argv[1]).read())
out_lock = threading.Lock()


def say(text):
    with out_lock:
        sys.stdout.write(text + "\\n")
        sys.stdout.flush()


def where(n, seconds):
    import os
    import time

    time.sleep(seconds)
    return (n, os.environ.get("NODE_TAG"), n * n + 7)


reported = threading.Semaphore(0)


def on_done(job):
    record = {"n": job.args[0], "status": int(job.status), "result": job.result, "ip": job.ip_addr}
    say("done " + json.dumps(record))
    reported.release()


def on_status(status, node, job):
    if job is not None and status == dispy.DispyJob.Running:
        # job.args[0], not job.id: the program sets job.id after submit(), and a job may
        # start (this callback run) before that, with its default id
        say(f"running {job.args[0]} {node.ip_addr if node is not None else None}")
    elif job is None and node is not None and status != dispy.DispyNode.AvailInfo:
        say(f"node {int(status)} {node.ip_addr}")


nodes = [node if isinstance(node, str) else tuple(node) for node in cfg["nodes"]]
cluster = getattr(dispy, cfg["cluster_class"])(
    where,
    nodes=nodes,
    ip_addr=cfg["ip_addr"],
    secret=cfg["secret"],
    callback=on_done,
    cluster_status=on_status,
    loglevel=logging.DEBUG,
    **cfg["options"],
)
started = time.monotonic()
deadline = started + cfg["node_timeout"]
while len(cluster.nodes()) < cfg["expect_nodes"] and time.monotonic() < deadline:
    time.sleep(0.05)
found = [[n.ip_addr, n.port, n.name] for n in cluster.nodes()]
if len(found) < cfg["expect_nodes"]:
    say("nodes-missing " + json.dumps(found))
    cluster.close(terminate=True)
    sys.exit(3)
say(f"discovery {time.monotonic() - started:.3f}")
say("nodes " + json.dumps(found))
jobs = []
for n, seconds in cfg["jobs"]:
    job = cluster.submit(n, seconds)
    job.id = n
    jobs.append(job)
for job in jobs:
    job()
# A job's waiters wake when it ends; its callback runs on another thread, maybe later.
callbacks = sum(reported.acquire(timeout=30) for _ in jobs)
say("finished" if callbacks == len(jobs) else f"callbacks-missing {len(jobs) - callbacks}")
if cfg["hold"]:
    limit = time.monotonic() + 300
    while not os.path.exists(cfg["hold"]) and time.monotonic() < limit:
        time.sleep(0.05)
cluster.close()
say("closed")
"""


def where_client(
    workdir: Path,
    *,
    wrapper: Sequence[str],
    ip_addr: str,
    nodes: Sequence[str | tuple[str, int]],
    secret: str,
    expect_nodes: int,
    jobs: Sequence[tuple[int, float]],
    node_timeout: float = 20.0,
    hold: Path | None = None,
    options: dict[str, Any] | None = None,
    name: str = "client",
    cluster_class: str = "JobCluster",
) -> ClientProcess:
    """A started client; see the module doc (``cluster_class`` ``"SharedJobCluster"``: the
    same through a scheduler, named in ``options``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "nodes": [n if isinstance(n, str) else list(n) for n in nodes],
                "ip_addr": ip_addr,
                "secret": secret,
                "expect_nodes": expect_nodes,
                "jobs": [list(j) for j in jobs],
                "node_timeout": node_timeout,
                "hold": str(hold) if hold is not None else "",
                "options": options or {},
                "cluster_class": cluster_class,
            }
        )
    )
    return ClientProcess(workdir, SCRIPT, [str(config)], name=name, wrapper=wrapper).start()


def events(client: ClientProcess, kind: str) -> list[str]:
    """The rest of every ``kind ...`` line the client printed so far."""
    prefix = kind + " "
    return [line[len(prefix) :] for line in client.lines() if line.startswith(prefix)]


def done(client: ClientProcess) -> list[dict[str, Any]]:
    """Every ``done`` record, in the order printed."""
    return [json.loads(text) for text in events(client, "done")]
