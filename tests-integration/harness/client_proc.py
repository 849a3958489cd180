"""A dispy client program in its own process, so a test can kill it (Ray's
``run_string_as_driver``: a client script run with a bounded timeout and kill escalation).

:class:`ClientProcess` writes a script to the test's directory, runs it with this
interpreter (the hatch environment's, so ``import dispy`` works), collects its stdout lines
as they come and keeps its stderr (the client's log) in a file shown when a test fails.
:meth:`ClientProcess.kill` is ``kill -9``.

:func:`submitter` is the client the recovery tests crash: it creates a JobCluster of
:func:`harness.executions.recorded` with an explicit ``recover_file``, optionally runs
warm-up jobs to the end, submits the test's jobs, prints ``submitted``, then waits to be
killed (the test reads the recover file to know which jobs reached a node). It
prints ``done <n> <status>`` from its callback for each job that ends. Options:
``cleanup_seconds`` gives the computation a ``cleanup`` function that takes that long on the
node; ``fork_delay`` a ``setup`` that makes every worker the node forks wait that long in an
at-fork hook before it starts (as a library's ``os.register_at_fork`` hook may);
``id_delay`` sets each job's ``id`` (its number) that long after all are submitted rather
than right after each ``submit()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HARNESS_ROOT = str(Path(__file__).resolve().parent.parent)


class ClientProcess:
    """One client script run as ``python script.py args...``."""

    def __init__(
        self,
        workdir: Path,
        source: str,
        args: Sequence[str] = (),
        name: str = "client",
        wrapper: Sequence[str] = (),
    ):
        self.workdir = workdir
        self.name = name
        self.script = workdir / f"{name}.py"
        self.stderr_path = workdir / f"{name}.stderr"
        self.source = source
        self.args = list(args)
        self.wrapper = list(wrapper)  # e.g. ``ip netns exec NAME``: where it runs
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}"
        return f"<ClientProcess {self.name} {state}>"

    def start(self) -> ClientProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.script.write_text(self.source)
        env = {k: v for k, v in os.environ.items() if k != "DISPY_SECRET"}
        env["PYTHONUNBUFFERED"] = "1"
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, str(self.script), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=self.workdir,
                env=env,
                text=True,
                bufsize=1,
            )
        self._reader = threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_line(self, match: str | Callable[[str], bool], timeout: float) -> str:
        """The first stdout line equal to (or, for a function, accepted by) ``match``."""
        accept = match if callable(match) else (lambda line: line == match)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if accept(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (not self.running() and not self._reader_alive()):
                    break
                self._cond.wait(min(left, 0.2))
        raise AssertionError(
            f"{self.name} did not print {match!r} within {timeout:g} s "
            f"(exit status {self.proc.poll() if self.proc else None}); stdout:\n"
            + "\n".join(self.lines())
            + f"\nstderr:\n{self.stderr_text()}"
        )

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def kill(self, timeout: float = 10.0) -> int | None:
        """``kill -9`` the client and reap it; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


SUBMITTER = """\
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


numbers = {{}}


def on_done(job):
    n = numbers.get(id(job))
    say(f"done {{n}} {{int(job.status)}}")


cleanup = True
if cfg["cleanup_seconds"]:
    CLEANUP_SECONDS = cfg["cleanup_seconds"]

    def slow_cleanup():
        import time

        time.sleep(CLEANUP_SECONDS)

    cleanup = slow_cleanup

setup = None
if cfg["fork_delay"]:
    FORK_DELAY = cfg["fork_delay"]

    def setup():
        import os
        import time

        os.register_at_fork(after_in_child=lambda: time.sleep(FORK_DELAY))
        return 0

cluster = dispy.JobCluster(
    recorded,
    nodes=[tuple(node) for node in cfg["nodes"]],
    ip_addr="127.0.0.1",
    port=0,
    secret=cfg["secret"],
    recover_file=cfg["recover_file"],
    callback=on_done,
    cleanup=cleanup,
    setup=setup,
    loglevel=logging.INFO,
    **cfg["options"],
)
say(f"cluster {{cluster.port}}")
warm = []
for n in cfg["warmup"]:
    job = cluster.submit(n, cfg["log_dir"])
    numbers[id(job)] = n
    warm.append(job)
for job in warm:
    job()
if warm:
    say("warm")
jobs = []
for n, seconds, gate in cfg["jobs"]:
    job = cluster.submit(n, cfg["log_dir"], seconds, gate)
    numbers[id(job)] = n
    if not cfg["id_delay"]:
        job.id = n  # client.txt's own pattern: the id is set right after submit()
    jobs.append(job)
if cfg["id_delay"]:
    time.sleep(cfg["id_delay"])
    for job in jobs:
        job.id = numbers[id(job)]
say("submitted")
if cfg["close"]:
    cluster.wait()
    cluster.close()
    say("closed")
else:
    time.sleep(3600)  # until the test kills us
"""


def submitter(
    workdir: Path,
    *,
    nodes: Sequence[tuple[str, int]],
    secret: str,
    recover_file: Path,
    log_dir: Path | str,
    jobs: Sequence[tuple[int, float, str | None]],
    warmup: Sequence[int] = (),
    close: bool = False,
    cleanup_seconds: float = 0.0,
    fork_delay: float = 0.0,
    id_delay: float = 0.0,
    options: dict[str, Any] | None = None,
    name: str = "client",
) -> ClientProcess:
    """A started client that submits ``jobs`` (``(n, seconds, gate)``); see the module doc."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "nodes": [list(n) for n in nodes],
                "secret": secret,
                "recover_file": str(recover_file),
                "log_dir": str(log_dir),
                "jobs": [list(j) for j in jobs],
                "warmup": list(warmup),
                "close": close,
                "cleanup_seconds": cleanup_seconds,
                "fork_delay": fork_delay,
                "id_delay": id_delay,
                "options": options or {},
            }
        )
    )
    source = SUBMITTER.format(root=HARNESS_ROOT)
    return ClientProcess(workdir, source, [str(config)], name=name).start()


def done_lines(client: ClientProcess) -> list[tuple[int, int]]:
    """``(n, status)`` for every ``done`` line the client printed."""
    out = []
    for line in client.lines():
        if line.startswith("done "):
            _, n, status = line.split()
            out.append((int(n), int(status)))
    return out


def recover_file_plan(path: Path) -> dict[str, Any]:
    """What the recover file says so far: header, created uids, uids sent, uids done."""
    created: list[int] = []
    sent: list[int] = []
    done: list[int] = []
    header: dict[str, Any] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"header": header, "created": created, "sent": sent, "done": done}
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if i == 0:
            header = record
        elif "c" in record:
            created += [uid for uid, _ in record["c"]]
        elif "s" in record:
            sent += record["j"]
        elif "d" in record:
            done += record["d"]
    return {"header": header, "created": created, "sent": sent, "done": done}
