"""Faults on node processes (Jepsen's nemesis; Celery's ``WorkerKill`` methods, as processes).

* :meth:`Nemesis.kill`: SIGKILL the node daemon (its computation process sees the control
  pipe close and takes its workers down);
* :meth:`Nemesis.terminate`: SIGTERM, the node's clean shutdown;
* :meth:`Nemesis.pause` / :meth:`Nemesis.resume`: SIGSTOP / SIGCONT the daemon and every
  process under it (a hung machine: no pulse, no progress of its jobs);
* :meth:`Nemesis.restart`: a new process for the same node (same port, same
  ``--dest_path_prefix``), optionally with other arguments (``--clean``).

:meth:`Nemesis.heal` resumes everything still paused; call it before the nodes are stopped
(a stopped process cannot handle SIGINT), as the fixtures of the fault tests do.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Sequence

import psutil

from harness.node import NodeProcess, NodeStartError
from harness.procs import wait_gone


class Nemesis:
    def __init__(self) -> None:
        self._paused: dict[int, list[psutil.Process]] = {}
        self.log: list[str] = []

    # -- kill and stop --------------------------------------------------------------------

    def kill(self, node: NodeProcess, timeout: float = 10.0) -> list[psutil.Process]:
        """SIGKILL the daemon and wait for it; return its descendants (now orphaned).

        The caller can check with :func:`harness.procs.wait_gone` that they die too.
        """
        tree = node.descendants()
        self.log.append(f"kill -9 {node.name} (pid {node.pid})")
        node.kill(signal.SIGKILL)
        node.wait(timeout)
        return tree

    def terminate(self, node: NodeProcess, timeout: float = 15.0) -> int:
        """SIGTERM the daemon and wait for it to exit; return its exit status."""
        self.log.append(f"kill -TERM {node.name} (pid {node.pid})")
        node.send_signal(signal.SIGTERM)
        try:
            return node.wait(timeout)
        except subprocess.TimeoutExpired:
            node.needed_sigkill = True
            node.kill(signal.SIGKILL)
            node.wait(10)
            raise AssertionError(f"{node.name} ignored SIGTERM for {timeout:g} s") from None

    def pause(self, node: NodeProcess) -> None:
        """SIGSTOP the daemon, then everything under it (computation process, workers)."""
        daemon = psutil.Process(node.pid)
        tree = [daemon, *node.descendants()]
        self.log.append(f"kill -STOP {node.name} (pids {[p.pid for p in tree]})")
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()
        self._paused[node.pid] = tree

    def resume(self, node: NodeProcess) -> None:
        """SIGCONT what :meth:`pause` stopped (workers first, the daemon last)."""
        tree = self._paused.pop(node.pid, [])
        self.log.append(f"kill -CONT {node.name}")
        for proc in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()

    def paused(self, node: NodeProcess) -> bool:
        return node.running() and node.pid in self._paused

    def heal(self) -> None:
        """Resume every paused process (teardown)."""
        for tree in list(self._paused.values()):
            for proc in reversed(tree):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.resume()
        self._paused.clear()

    # -- restart --------------------------------------------------------------------------

    def restart(
        self,
        node: NodeProcess,
        *,
        extra_args: Sequence[str] | None = None,
        timeout: float = 20.0,
    ) -> NodeProcess:
        """Start ``node`` again (it must have exited) on the same port and directories.

        ``extra_args`` replaces the node's extra command-line arguments for this and later
        starts. Waits for this start's "serving" line (the log keeps earlier starts' lines).
        """
        assert not node.running(), f"{node.name} is still running"
        if extra_args is not None:
            node.extra_args = list(extra_args)
        self.log.append(f"restart {node.name} on port {node.port} {node.extra_args}")
        node.start(wait=False)
        line = node.ready_line()
        try:
            node.wait_log(line, timeout, count=node.starts)
        except AssertionError as exc:
            raise NodeStartError(f"{node.name} did not restart: {exc}") from None
        return node

    @staticmethod
    def wait_gone(procs: Sequence[psutil.Process], timeout: float = 10.0) -> list[str]:
        """Descriptions of the processes still alive after ``timeout`` (empty when all died)."""
        return [f"pid {p.pid}" for p in wait_gone(procs, timeout)]
