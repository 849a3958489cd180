"""``dispy-relay run`` as a real process on loopback, launched through the installed CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness.polling import wait_for

_WIDE = "400"  # one log record per line (Rich wraps at COLUMNS)


class RelayProcess:
    """One ``dispy-relay run`` process; its stdout and stderr go to ``workdir/relay.log``.

    Args:
        workdir: where its log goes (created).
        args: the options after ``dispy-relay run``.
        stdin: ``"devnull"`` or ``"closed"`` (descriptor 0 not open at all).
    """

    def __init__(self, workdir: Path, args: Sequence[str], *, stdin: str = "devnull") -> None:
        self.workdir = workdir
        self.args = list(args)
        self.stdin = stdin
        self.log_path = workdir / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        exe = shutil.which("dispy-relay")
        if exe is None:
            raise RuntimeError("the dispy-relay CLI is not on PATH (run through hatch)")
        cmd = [exe, "run", *self.args]
        if self.stdin == "closed":
            cmd = ["/bin/sh", "-c", 'exec "$@" <&-', "sh", *cmd]
        return cmd

    def start(self) -> RelayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env={**_environ(), "COLUMNS": _WIDE, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 20.0) -> RelayProcess:
        wait_for(
            lambda: "dispy-relay listening on" in self.log_text() or self.exited(),
            timeout,
            lambda: f"dispy-relay did not start:\n{self.log_text()}",
        )
        assert not self.exited(), f"dispy-relay exited:\n{self.log_text()}"
        return self

    def log_text(self) -> str:
        try:
            return re.sub(r"[ \t]+", " ", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait; SIGKILL after ``timeout`` (then the status is negative)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def count(self, text: str) -> int:
        return self.log_text().count(text)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DISPY_SECRET"}


def wait_exit(relay: RelayProcess, timeout: float) -> int:
    """Wait for the relay to end by itself (an option error); its status."""
    assert relay.proc is not None
    deadline = time.monotonic() + timeout
    while relay.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if relay.proc.poll() is None:
        relay.kill()
        raise AssertionError(f"dispy-relay did not exit within {timeout:g} s")
    return relay.proc.returncode
