"""Throughput policy: how many jobs to keep queued on a node, from measured job time and size.

Pure functions of numbers; the engine applies them to its allocations. A node's CPUs should
never wait for the network, so short jobs get a deeper queue (bigger batches, fewer frames);
long jobs, and jobs with large arguments, keep one extra per CPU so load stays balanced across
nodes and a node does not hold many large jobs in memory.
"""

from __future__ import annotations

__all__ = [
    "MAX_DEPTH",
    "QUEUE_BYTES",
    "QUEUE_SECONDS",
    "depth_per_cpu",
    "job_bytes",
    "job_time",
    "outgrown",
]

QUEUE_SECONDS = 0.02  # work to keep queued on a node, per CPU
MAX_DEPTH = 32  # jobs per CPU at most, the running one included
QUEUE_BYTES = 8 << 20  # arguments to keep queued on a node, per CPU, beyond one job


def depth_per_cpu(job_time: float, job_bytes: float) -> int:
    """Jobs to place per CPU (one runs, the rest wait), for jobs that take ``job_time``
    seconds and carry ``job_bytes`` of arguments."""
    return 1 + min(
        MAX_DEPTH - 1,
        int(QUEUE_SECONDS / max(job_time, 1e-6)),
        int(QUEUE_BYTES / max(job_bytes, 1.0)),
    )


def job_time(average: float, took: float) -> float:
    """Moving average of job run time (the first measure is taken as it is)."""
    return took if not average else 0.8 * average + 0.2 * took


def job_bytes(average: float, size: int) -> float:
    """Moving size of arguments: up at once, down slowly."""
    return max(size, 0.9 * average + 0.1 * size)


def outgrown(average: float, sized_for: float) -> bool:
    """Jobs are now much larger than the queues on nodes were sized for: shorten them."""
    return average > 2 * sized_for + QUEUE_BYTES // MAX_DEPTH
