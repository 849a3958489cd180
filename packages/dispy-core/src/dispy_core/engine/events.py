"""What happens to the engine: the events a shell feeds to :meth:`Engine.handle`.

Events are facts the shell observed (a message arrived, a connection closed, time passed, the
user asked for something); they carry no clock (``now`` comes with ``handle``). Each is a small
frozen dataclass; do not subclass them (the engine dispatches on the exact type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

NodeKey = tuple[str, int]
Outcome = Literal["finished", "terminated", "cancelled", "abandoned"]

__all__ = [
    "CancelRequested",
    "ComputationClosed",
    "ComputationDropped",
    "ComputationOpened",
    "Event",
    "JobReport",
    "JobSpec",
    "JobsDone",
    "JobsStarted",
    "JobsSubmitted",
    "NodeCpusChanged",
    "NodeHeard",
    "NodeKey",
    "NodeLost",
    "NodeReady",
    "Outcome",
    "ProvisionalReceived",
    "Report",
    "Tick",
]


@dataclass(frozen=True, slots=True)
class ComputationOpened:
    """A computation can take jobs. ``pulse_interval`` sets its silence limit
    (:func:`dispy_core.config.dead_after`). An ``exclusive`` one waits until every
    computation opened before it is dropped, then has the nodes alone (the package
    docstring, "Sharing nodes")."""

    comp_id: int
    reentrant: bool = False
    pulse_interval: float | None = None
    exclusive: bool = False


@dataclass(frozen=True, slots=True)
class ComputationClosed:
    """The computation is closing: lost nodes' jobs are no longer resubmitted; with
    ``terminate`` every job is cancelled (queued ones end, placed ones are cancelled on
    their node)."""

    comp_id: int
    terminate: bool = False


@dataclass(frozen=True, slots=True)
class ComputationDropped:
    """The computation is gone: jobs not ended yet end ``Abandoned`` with ``reason``."""

    comp_id: int
    reason: str = "cluster closed"


@dataclass(frozen=True, slots=True)
class NodeReady:
    """A node set the computation up and gives it ``cpus`` of its ``total_cpus``."""

    node: NodeKey
    comp_id: int
    cpus: int
    total_cpus: int = 0


@dataclass(frozen=True, slots=True)
class NodeCpusChanged:
    """The node now gives the computation ``cpus`` CPUs (its reply to a set-cpus)."""

    node: NodeKey
    comp_id: int
    cpus: int


@dataclass(frozen=True, slots=True)
class NodeHeard:
    """A message came from the node (a pulse, say). Events naming a node count as heard
    too, so a shell sends this only for messages that are no other event."""

    node: NodeKey


@dataclass(frozen=True, slots=True)
class NodeLost:
    """The node's connection ended, or (with ``comp_id``) the node closed that computation.
    ``reason`` ``"closed"`` is an orderly close; anything else abandons the node."""

    node: NodeKey
    reason: str
    comp_id: int | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One submitted job: its id (unique in its computation), the size of its arguments in
    bytes (None: unknown, not counted) and the node it is pinned to, if any."""

    job_id: int
    size: int | None = None
    pinned: NodeKey | None = None


@dataclass(frozen=True, slots=True)
class JobsSubmitted:
    comp_id: int
    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True, slots=True)
class JobsStarted:
    """The node started jobs that were sent ahead (waiting in its queue)."""

    node: NodeKey
    comp_id: int
    job_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class JobReport:
    job_id: int
    outcome: Outcome
    start: float
    end: float


class Report(Protocol):
    """What the engine reads of one job's end: a :class:`JobReport`, or the wire's own
    report (``dispy_core.protocol.messages.JobReport``) passed as it arrived, so a shell
    copies nothing per job."""

    @property
    def job_id(self) -> int: ...
    @property
    def outcome(self) -> Outcome: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


@dataclass(frozen=True, slots=True)
class JobsDone:
    """The node reports results (one ``jobs.done`` frame)."""

    node: NodeKey
    comp_id: int
    reports: Sequence[Report]


@dataclass(frozen=True, slots=True)
class ProvisionalReceived:
    """A running job sent a provisional result."""

    node: NodeKey
    comp_id: int
    job_id: int


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Cancel these jobs: those waiting end now with ``reason`` as their exception, those
    on a node are cancelled there."""

    comp_id: int
    job_ids: tuple[int, ...]
    reason: str = "Cancelled"


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: nodes silent beyond their computation's limit are declared dead."""


Event = (
    ComputationOpened
    | ComputationClosed
    | ComputationDropped
    | NodeReady
    | NodeCpusChanged
    | NodeHeard
    | NodeLost
    | JobsSubmitted
    | JobsStarted
    | JobsDone
    | ProvisionalReceived
    | CancelRequested
    | Tick
)
