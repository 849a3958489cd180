"""``dispy-node run`` as a real process, launched through the installed CLI.

It listens on 127.0.0.1 unless given another address (with ``wrapper``, the command that runs
it inside a network namespace: see :mod:`harness.netns`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from harness.polling import wait_for
from harness.ports import LOOPBACK, free_port

# Rich wraps log lines at the terminal width (80 columns when not a terminal); a wide
# virtual terminal keeps each record on one line so the log can be searched.
_WIDE = "400"
_PORT_TAKEN = "address already in use"  # the OS's words, in the node's "cannot listen" line


class NodeStartError(RuntimeError):
    """The node exited, or did not say it was serving, in time."""


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


class NodeProcess:
    """One ``dispy-node`` process.

    Each node gets its own directory under the test's ``tmp_path`` (the files clients send,
    ``--dest_path_prefix``, and its log: stdout and stderr) and its own short ``TMPDIR``
    under /tmp (the node puts a Unix socket there, and socket paths are limited to 107
    bytes). The command line of every computation process names that socket, so
    :meth:`leftover_processes` finds them by it even after the node itself was killed and
    they were re-parented.

    Args:
        workdir: the node's own directory (created).
        name: ``--name``.
        secret: passed as ``DISPY_SECRET`` in the environment (never on the command line).
        cpus: ``--cpus``.
        port: the port to use; a free one (TCP and UDP) when None.
        debug: ``-d`` (the log shows every message; the suite's default).
        extra_args: more options for ``dispy-node run``.
        env: extra environment variables for the node (its jobs inherit them).
        stdin: ``"devnull"`` or ``"closed"`` (descriptor 0 not open at all).
        ip_addr: ``-i`` (127.0.0.1 by default).
        wrapper: a command the node's command line is appended to (``ip netns exec NAME``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str,
        secret: str,
        cpus: int = 1,
        port: int | None = None,
        debug: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        stdin: str = "devnull",
        ip_addr: str = LOOPBACK,
        wrapper: Sequence[str] = (),
    ) -> None:
        if stdin not in ("devnull", "closed"):
            raise ValueError(f"stdin must be 'devnull' or 'closed', not {stdin!r}")
        self.workdir = workdir
        self.name = name
        self.secret = secret
        self.cpus = cpus
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.debug = debug
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.stdin_mode = stdin
        self.ip_addr = ip_addr
        self.wrapper = list(wrapper)
        self.dest_path_prefix = workdir / "dest"
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dispy-it-"))
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.needed_sigkill = False
        self.starts = 0

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}"
        return f"<NodeProcess {self.name} {self.ip_addr}:{self.port} {state}>"

    # -- the command ----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """What a cluster lists in ``nodes=``."""
        return (self.ip_addr, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "node not started"
        return self.proc.pid

    def command(self) -> list[str]:
        exe = shutil.which("dispy-node")
        if exe is None:
            raise NodeStartError("the dispy-node CLI is not on PATH (run through hatch)")
        cmd = [
            exe,
            "run",
            "-i",
            self.ip_addr,
            "-p",
            str(self.port),
            "--cpus",
            str(self.cpus),
            "--name",
            self.name,
            "--dest_path_prefix",
            str(self.dest_path_prefix),
        ]
        if self.debug:
            cmd.append("-d")
        cmd += self.extra_args
        if self.stdin_mode == "closed":
            # The shell closes descriptor 0 and execs the node in its place (same pid).
            cmd = ["/bin/sh", "-c", 'exec "$@" <&-', "sh", *cmd]
        return [*self.wrapper, *cmd]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DISPY_SECRET"}
        env.update(
            DISPY_SECRET=self.secret,
            TMPDIR=str(self.tmpdir),
            COLUMNS=_WIDE,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = 20.0, retries: int = 3) -> NodeProcess:
        """Start the node (and by default wait until it serves: :meth:`wait_started`)."""
        self._spawn()
        if wait:
            self.wait_started(timeout, retries)
        return self

    def wait_started(self, timeout: float = 20.0, retries: int = 3) -> None:
        """Wait until the node serves. If its port was taken meanwhile (a free port is only
        free until someone binds it: another test won the race), start it again on a new
        free port, up to ``retries`` times."""
        for attempt in range(retries + 1):
            try:
                self.wait_ready(timeout)
                return
            except NodeStartError:
                last_start = self.log_text().rsplit("===== start #", 1)[-1]
                taken = self.exited() and _PORT_TAKEN in last_start
                if not taken or self._fixed_port or attempt == retries:
                    raise
                self.port = free_port()
                self._spawn()

    def _spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)  # cleanup() may have removed it
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.returncode = None

    def ready_line(self) -> str:
        return f"dispy-node {self.name} serving {self._served_cpus()} at {self.ip_addr}:{self.port}"

    def _served_cpus(self) -> str:
        return f"{self.cpus} CPU(s)" if self.cpus > 0 else "CPU(s)"

    def is_ready(self, *, probe_tcp: bool = False) -> bool:
        # Only the log of the current start counts: a restarted node's old "serving" line
        # must not make it look ready.
        text = self.log_text(squash=True)
        marker = f"===== start #{self.starts}:"
        if marker in text:
            text = text[text.rindex(marker) :]
        if self.cpus > 0:
            ready = self.ready_line() in text
        else:
            ready = (
                re.search(
                    rf"dispy-node {re.escape(self.name)} serving \d+ CPU\(s\) at "
                    rf"{re.escape(self.ip_addr)}:{self.port}\b",
                    text,
                )
                is not None
            )
        if ready or not probe_tcp:
            return ready
        try:
            with socket.create_connection(self.address, timeout=0.5):
                return True
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20.0, *, probe_tcp: bool = False) -> None:
        """Wait for the "serving" log line (or, with ``probe_tcp``, for the port to accept).

        The TCP probe is off by default: the node logs every connection that does not
        authenticate, which would clutter the logs tests read.

        Raises:
            NodeStartError: the process exited first, or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.is_ready(probe_tcp=probe_tcp):
                return
            if self.exited():
                raise NodeStartError(
                    f"{self} exited with status {self.returncode} before serving:\n"
                    f"{self.log_text()}"
                )
            if time.monotonic() >= deadline:
                raise NodeStartError(
                    f"{self} did not report serving within {timeout:g} s:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def exited(self) -> bool:
        if self.proc is None:
            return False
        code = self.proc.poll()
        if code is not None:
            self.returncode = code
        return code is not None

    def running(self) -> bool:
        return self.proc is not None and not self.exited()

    def send_signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default). Other signals do not wait; after SIGKILL the
        process is gone when this returns (it cannot be ignored, but dying takes a moment:
        a test that restarts the node right after found it still there)."""
        self.send_signal(sig)
        if sig == signal.SIGKILL and self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; return its exit status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout``.
        """
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGINT) -> int | None:
        """``sig`` (SIGINT), then SIGKILL if the node is still running after ``timeout``.

        Returns the exit status (None if never started). ``needed_sigkill`` tells whether
        the node ignored ``sig``.
        """
        if self.proc is None:
            return None
        if self.running():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.needed_sigkill = True
                self.proc.kill()
                self.proc.wait(10)
        self.exited()
        return self.returncode

    # -- what it did ----------------------------------------------------------------------

    def log_text(self, *, squash: bool = False) -> str:
        """Everything the node wrote so far (``squash`` folds whitespace and line breaks)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return _squash(text) if squash else text

    def log_contains(self, text: str) -> bool:
        return _squash(text) in self.log_text(squash=True)

    def log_count(self, text: str) -> int:
        return self.log_text(squash=True).count(_squash(text))

    def wait_log(self, text: str, timeout: float = 10.0, *, count: int = 1) -> None:
        """Wait until the log contains ``text`` (whitespace-insensitive) ``count`` times."""
        wait_for(
            lambda: self.log_count(text) >= count,
            timeout,
            lambda: f"{self.name} never logged {text!r} {count} time(s); log:\n{self.log_text()}",
        )

    def descendants(self) -> list[psutil.Process]:
        """The node's live child processes (computation processes and workers)."""
        if not self.running():
            return []
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cleanup(self) -> None:
        """Remove the private TMPDIR (the node's directory stays with the test's tmp_path)."""
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def leftover_processes(self) -> list[psutil.Process]:
        """Live processes of this node: itself, or anything naming its private directories."""
        markers = (str(self.workdir), str(self.tmpdir))
        found: list[psutil.Process] = []
        if self.running():
            found.append(psutil.Process(self.pid))
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            mine = any(m in part for part in cmdline for m in markers)
            if mine and proc.pid != os.getpid() and all(p.pid != proc.pid for p in found):
                found.append(proc)
        return found
