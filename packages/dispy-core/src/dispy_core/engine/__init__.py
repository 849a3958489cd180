"""The scheduling engine: every decision about computations, nodes and jobs, without I/O.

A shell (the client's JobCluster, the scheduler, a test) turns what it observes into
events and feeds them to ``Engine.handle(event, now)`` (or ``handle_many``), which returns
commands for the shell to carry out: messages to send, callbacks to post, records to write.
The engine reads no clock (``now`` comes in, from a monotonic clock), touches no socket and
logs nothing; so a test drives it with a fake clock and a shell is only plumbing.

Theory of operation
-------------------
Records (``records.py``): a *computation* (comp_id, reentrant, its silence limit
``config.dead_after(pulse_interval)``, its jobs and its queue); a *node* (key ``(host,
port)``, when it was last heard); an *allocation*: the CPUs one node gives one computation
(a node may serve several computations, each with its own allocation; how nodes are shared
and ``exclusive`` are policy for the scheduler to add); a *job* (id unique in its
computation, status, allocation, pinned node).

A job is in exactly one place:

    queued  --place-->  sent ahead  --JobsStarted-->  running  --JobsDone-->  (ended)
      |  (in the queue,   (placed, status Created;   (placed, Running or
      |   or the pinned    waiting in the node's      ProvisionalResult)
      |   queue of its     queue)
      |   allocation)
      +-- cancel / pinned node gone / computation dropped --> (ended by the engine)

Placing a job on an allocation with a free CPU makes it Running at once (SendJobs +
JobsRunning); otherwise it is sent ahead (SendJobs.ahead: the node says when it starts). A
report in JobsDone ends a job only if the job is placed on that node's current allocation
(ResultsAccepted; any other report is stale and listed as ignored), so a job ends exactly
once. When an allocation ends (NodeLost, or Tick finds the node silent longer than its
computation's limit: NodeDeclaredDead), its placed jobs, sent ahead or running, go to the
front of the queue as Created (JobRequeued) if the computation is reentrant, not closing and
the job not pinned; otherwise they end Cancelled with "Cancelled: node H:P <reason>", as do
jobs queued pinned to it. Every status change goes through ``records.move``, which enforces
``protocol.jobs.TRANSITIONS``: an illegal one raises :class:`EngineError` (a bug).

An allocation is ready from NodeReady (NodeStatusChanged Initialized) to its end (Closed
when the node closed the computation, reason "closed"; AbandonedNode otherwise). Its
capacity is ``cpus + depth`` jobs placed at once; ``depth`` starts at one job per CPU and
follows measured job time and argument size (``policy.py``). Nothing is ever placed on an
allocation that has ended, and no allocation holds more than its capacity after placing.

Placement (``Engine._place``, after every ``handle``): pinned jobs first, each only on its
own allocation; then the queue in order, each job to the allocation with the largest free
fraction of its capacity (a heap with lazy invalidation: O(log nodes) per job). Each
handled job event costs O(1) or O(log nodes); only Tick, computation close and node loss
walk their nodes or jobs.

Events about a node refer to its current connection: a shell drops those of a connection it
has replaced or given up on (it still acknowledges their results).
"""

from __future__ import annotations

from dispy_core.engine.commands import (
    Command,
    ComputationActive,
    ComputationWaiting,
    JobEnded,
    JobRequeued,
    JobsRunning,
    NodeDeclaredDead,
    NodeStatusChanged,
    ResultsAccepted,
    SendCancel,
    SendJobs,
)
from dispy_core.engine.events import (
    CancelRequested,
    ComputationClosed,
    ComputationDropped,
    ComputationOpened,
    Event,
    JobReport,
    JobsDone,
    JobSpec,
    JobsStarted,
    JobsSubmitted,
    NodeCpusChanged,
    NodeHeard,
    NodeKey,
    NodeLost,
    NodeReady,
    Outcome,
    ProvisionalReceived,
    Report,
    Tick,
)
from dispy_core.engine.machine import OUTCOME_STATUS, Engine
from dispy_core.engine.policy import MAX_DEPTH, QUEUE_BYTES, QUEUE_SECONDS
from dispy_core.engine.records import EngineError

__all__ = [
    "MAX_DEPTH",
    "OUTCOME_STATUS",
    "QUEUE_BYTES",
    "QUEUE_SECONDS",
    "CancelRequested",
    "Command",
    "ComputationActive",
    "ComputationClosed",
    "ComputationDropped",
    "ComputationOpened",
    "ComputationWaiting",
    "Engine",
    "EngineError",
    "Event",
    "JobEnded",
    "JobReport",
    "JobRequeued",
    "JobSpec",
    "JobsDone",
    "JobsRunning",
    "JobsStarted",
    "JobsSubmitted",
    "NodeCpusChanged",
    "NodeDeclaredDead",
    "NodeHeard",
    "NodeKey",
    "NodeLost",
    "NodeReady",
    "NodeStatusChanged",
    "Outcome",
    "ProvisionalReceived",
    "Report",
    "ResultsAccepted",
    "SendCancel",
    "SendJobs",
    "Tick",
]
