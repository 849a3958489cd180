"""Process leak checks (Dask ``check_process_leak``, Ray ``remove_node`` zombie check)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

import psutil

DISPY_MARKERS = ("dispy-node", "dispy_node._template", "dispy_node", "dispy-scheduler")


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} [{proc.status()}] {' '.join(proc.cmdline())}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid} (gone)"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def dispy_children() -> list[psutil.Process]:
    """Live descendants of this (test) process that are dispy nodes or their job processes."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(m in cmdline for m in DISPY_MARKERS) and _alive(proc):
            found.append(proc)
    return found


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to end; return those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def check_no_leaks(
    finders: Iterable[Callable[[], list[psutil.Process]]], timeout: float = 5.0
) -> list[str]:
    """Processes the finders still report after ``timeout`` s (killed, then described).

    Returns an empty list when nothing leaked.
    """
    deadline = time.monotonic() + timeout
    finders = list(finders)
    while True:
        leaked: dict[int, psutil.Process] = {}
        for find in finders:
            for proc in find():
                leaked.setdefault(proc.pid, proc)
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    described = [describe(p) for p in leaked.values()]
    for proc in leaked.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return described
