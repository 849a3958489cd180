"""``dispy-scheduler serve`` as a real process on 127.0.0.1, launched through the installed CLI.

Each scheduler gets its own directory (its log, and a private ``TMPDIR``, under which it
keeps its store), free ports for nodes (``--port``) and clients (``--scheduler_port``), and
its secrets through the environment (``DISPY_NODE_SECRET``, ``DISPY_CLUSTER_SECRET``), never
on the command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.polling import wait_for
from harness.ports import LOOPBACK, free_port

_WIDE = "400"


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


class SchedulerProcess:
    """One ``dispy-scheduler serve`` process (see the module docstring).

    Args:
        workdir: its directory (created).
        node_secret, cluster_secret: the secrets toward nodes and toward clients.
        nodes: ``host:port`` of nodes to ping (``-n``).
        extra_args: more options for ``serve``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        node_secret: str,
        cluster_secret: str,
        nodes: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.node_secret = node_secret
        self.cluster_secret = cluster_secret
        self.nodes = list(nodes)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.scheduler_port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dispy-sched-"))
        self.log_path = workdir / "scheduler.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<SchedulerProcess nodes at :{self.port}, clients at :{self.scheduler_port}>"

    def command(self) -> list[str]:
        exe = shutil.which("dispy-scheduler")
        if exe is None:
            raise RuntimeError("the dispy-scheduler CLI is not on PATH (run through hatch)")
        cmd = [
            exe,
            "serve",
            "-d",
            "-i",
            LOOPBACK,
            "-p",
            str(self.port),
            "--scheduler_port",
            str(self.scheduler_port),
        ]
        for node in self.nodes:
            cmd += ["-n", node]
        return cmd + self.extra_args

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> SchedulerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        self.starts += 1
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DISPY_SECRET", "DISPY_NODE_SECRET", "DISPY_CLUSTER_SECRET")
        }
        env.update(
            DISPY_NODE_SECRET=self.node_secret,
            DISPY_CLUSTER_SECRET=self.cluster_secret,
            TMPDIR=str(self.tmpdir),
            COLUMNS=_WIDE,
            PYTHONUNBUFFERED="1",
        )
        with self.log_path.open("ab") as log:
            log.write(f"===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        if wait:
            self.wait_log(
                f"dispy-scheduler serving nodes at {LOOPBACK}:{self.port}",
                timeout,
                count=self.starts,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; after SIGKILL the process is gone when this returns (as
        NodeProcess.kill)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT, then SIGKILL after ``timeout``; the exit status (None: never started)."""
        if self.proc is None:
            return None
        if self.running():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log_text(self, *, squash: bool = False) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return _squash(text) if squash else text

    def log_count(self, text: str) -> int:
        return self.log_text(squash=True).count(_squash(text))

    def wait_log(self, text: str, timeout: float = 10.0, *, count: int = 1) -> None:
        def seen() -> bool:
            return self.log_count(text) >= count

        wait_for(
            seen,
            timeout,
            lambda: f"the scheduler never logged {text!r}; log:\n{self.log_text()}",
        )


class SchedulerFactory:
    """Starts ``dispy-scheduler serve`` processes for one test; stops and checks them."""

    def __init__(self, tmp_path: Path, node_secret: str, cluster_secret: str) -> None:
        self.tmp = tmp_path
        self.node_secret = node_secret
        self.cluster_secret = cluster_secret
        self.started: list[SchedulerProcess] = []

    def __call__(
        self, nodes: Sequence[Any], *extra: str, also: Sequence[Any] = (), wait: bool = True
    ) -> SchedulerProcess:
        """A scheduler pinging ``nodes`` (by default waits until they joined) and ``also``
        (``NodeProcess``es); ``extra``: more options for ``serve``."""
        sched = SchedulerProcess(
            self.tmp / f"scheduler-{len(self.started) + 1}",
            node_secret=self.node_secret,
            cluster_secret=self.cluster_secret,
            nodes=[f"{LOOPBACK}:{n.port}" for n in (*nodes, *also)],
            extra_args=extra,
        )
        self.started.append(sched)
        sched.start()
        if wait:
            for node in nodes:
                sched.wait_log(f"node {node.name} ({LOOPBACK}:{node.port}) with", timeout=20)
        return sched

    def teardown(self) -> list[str]:
        """Stop every scheduler (SIGINT); problems: a bad exit status, a traceback."""
        problems = []
        for sched in self.started:
            killed = sched.proc is not None and sched.proc.poll() == -signal.SIGKILL
            code = sched.stop()
            if code not in (0, None) and not killed:
                problems.append(f"scheduler exited with status {code} on SIGINT")
            if "Traceback" in sched.log_text():
                problems.append(f"traceback in the scheduler's log:\n{sched.log_text()[-5000:]}")
            sched.cleanup()
        return problems
