"""What the engine decided: the commands :meth:`Engine.handle` returns for a shell to carry out.

A shell turns each into messages, callbacks, recover-file records or log lines, in the order
given. Commands are small frozen dataclasses; do not subclass them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispy_core.protocol.jobs import JobStatus, NodeStatus

NodeKey = tuple[str, int]

__all__ = [
    "Command",
    "ComputationActive",
    "ComputationWaiting",
    "JobEnded",
    "JobRequeued",
    "JobsRunning",
    "NodeDeclaredDead",
    "NodeStatusChanged",
    "ResultsAccepted",
    "SendCancel",
    "SendJobs",
]


@dataclass(frozen=True, slots=True)
class SendJobs:
    """Send ``job_ids`` (in this order) to the node. Those in ``ahead`` wait in the node's
    queue and the node must say when each starts (``notify``); the others start now (a
    :class:`JobsRunning` for them follows)."""

    node: NodeKey
    comp_id: int
    job_ids: tuple[int, ...]
    ahead: frozenset[int]


@dataclass(frozen=True, slots=True)
class JobsRunning:
    """These jobs run on the node from now: mark them Running and report them."""

    node: NodeKey
    comp_id: int
    job_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Ask the node to cancel these placed jobs; their end comes back as results."""

    node: NodeKey
    comp_id: int
    job_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ResultsAccepted:
    """These reports of a ``jobs.done`` end their jobs now (exactly once); reports not named
    here (they are in ``ignored``) came from a node that no longer holds the job: the job
    ended or moved, so the report must not end it again (still acknowledge it)."""

    node: NodeKey
    comp_id: int
    job_ids: tuple[int, ...]
    ignored: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class JobEnded:
    """The engine ended a job itself (never ran, or its node was lost): ``status`` with
    ``reason`` as the job's exception text; ``node``: the node it was on or pinned to."""

    comp_id: int
    job_id: int
    status: JobStatus
    reason: str
    node: NodeKey | None = None


@dataclass(frozen=True, slots=True)
class JobRequeued:
    """The job's node was lost and the computation is reentrant: it is Created again and
    queued at the front."""

    comp_id: int
    job_id: int


@dataclass(frozen=True, slots=True)
class NodeStatusChanged:
    """The node's allocation for the computation changed: Initialized (ready), Closed
    (orderly) or AbandonedNode (``reason`` says why)."""

    node: NodeKey
    comp_id: int
    status: NodeStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NodeDeclaredDead:
    """The node was silent too long: close its connection with ``reason``."""

    node: NodeKey
    reason: str


@dataclass(frozen=True, slots=True)
class ComputationWaiting:
    """The computation was opened but must wait for its turn (it, or one opened before it,
    is ``exclusive``): its nodes may get ready and its jobs queue, but none is placed until
    :class:`ComputationActive`."""

    comp_id: int


@dataclass(frozen=True, slots=True)
class ComputationActive:
    """A computation that was waiting has its turn now: its queued jobs are being placed.
    (A computation that never waited gets no such command.)"""

    comp_id: int


Command = (
    SendJobs
    | JobsRunning
    | SendCancel
    | ResultsAccepted
    | JobEnded
    | JobRequeued
    | NodeStatusChanged
    | NodeDeclaredDead
    | ComputationWaiting
    | ComputationActive
)
