"""What a node has to offer right now, as psutil measures it."""

from __future__ import annotations

import os

import psutil

from dispy_core.protocol.messages import AvailInfo


def measure(path: str) -> AvailInfo:
    """CPU idle percent, usable memory, free disk of ``path``'s partition, swap used percent."""
    try:
        disk = psutil.disk_usage(path).free
    except OSError:
        disk = 0
    return AvailInfo(
        cpu=max(0.0, 100.0 - psutil.cpu_percent(interval=None)),
        memory=psutil.virtual_memory().available,
        disk=disk,
        swap=psutil.swap_memory().percent,
    )


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, psutil.cpu_count() or 1)
