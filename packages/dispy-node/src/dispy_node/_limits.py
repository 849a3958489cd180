"""Bounds on what a session holds in the daemon's memory: queued jobs, unacknowledged results.

A client that follows the protocol never reaches them: ``dispy._core`` queues at most 32
jobs per CPU on a node, and, for jobs with large arguments, one job per CPU plus 8 MiB of
arguments beyond. The bounds are twice that. A job over them is not queued: it ends
Terminated at once, the reason naming the bound, and the node logs it; it is never dropped
silently. The first job per CPU always queues, whatever its size (one message is at most
1 GiB).
"""

from __future__ import annotations

MAX_QUEUED_PER_CPU = 64  # jobs waiting per CPU of the node
MAX_QUEUED_BYTES_PER_CPU = 32 << 20  # their arguments, per CPU of the node,
MIN_QUEUED_BYTES = 1 << 30  # but never less than this in all
# Results sent but not yet acknowledged that are kept in memory; beyond this the oldest go
# to the node's result store on disk until half of it is left
# (dispy_core.result_store.oldest_over_budget).
MAX_UNACKED_BYTES = 256 << 20


def queue_full(queued: int, queued_bytes: int, size: int, cpus: int) -> str | None:
    """Why a job of ``size`` bytes may not join a queue of ``queued`` jobs (None: it may)."""
    if queued >= MAX_QUEUED_PER_CPU * cpus:
        return (
            f"the node's queue for this computation is full ({queued} jobs waiting, "
            f"at most {MAX_QUEUED_PER_CPU} per CPU of the node)"
        )
    limit = max(MIN_QUEUED_BYTES, MAX_QUEUED_BYTES_PER_CPU * cpus)
    if queued_bytes + size > limit:
        return (
            f"the node's queue for this computation is full ({queued_bytes} bytes of "
            f"arguments waiting, at most {limit})"
        )
    return None
