"""Job and node status values, shared by clients, schedulers and nodes.

The numbers are what ``DispyJob.<Status>`` and ``DispyNode.<Status>`` hold in the user API;
``TERMINAL`` jobs never change status again.
"""

from __future__ import annotations

from enum import IntEnum


class JobStatus(IntEnum):
    Created = 5
    Running = 6
    ProvisionalResult = 7
    Cancelled = 8
    Terminated = 9
    Abandoned = 10
    Finished = 11


class NodeStatus(IntEnum):
    Initialized = 4
    Closed = 12
    AvailInfo = 13
    SetupFailed = 14
    AbandonedNode = 15


TERMINAL = frozenset(
    {JobStatus.Cancelled, JobStatus.Terminated, JobStatus.Abandoned, JobStatus.Finished}
)

# Which status may follow which: anything else is a bug in whoever reports it.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.Created: frozenset({JobStatus.Running, JobStatus.Cancelled, JobStatus.Abandoned}),
    JobStatus.Running: frozenset(
        {JobStatus.ProvisionalResult, JobStatus.Created, JobStatus.Running} | TERMINAL
    ),
    JobStatus.ProvisionalResult: frozenset(
        {JobStatus.ProvisionalResult, JobStatus.Created, JobStatus.Running} | TERMINAL
    ),
}


def can_move(old: JobStatus, new: JobStatus) -> bool:
    """Whether a job in status ``old`` may move to ``new``."""
    return new in TRANSITIONS.get(old, frozenset())
