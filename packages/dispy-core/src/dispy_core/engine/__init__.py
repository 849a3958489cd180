"""The scheduling engine: every decision about computations, nodes and jobs, without I/O.

A shell (the client's JobCluster, the scheduler, a test) turns what it observes into
events and feeds them to ``Engine.handle(event, now)`` (or ``handle_many``), which returns
commands for the shell to carry out: messages to send, callbacks to post, records to write.
The engine reads no clock (``now`` comes in, from a monotonic clock), touches no socket and
logs nothing; so a test drives it with a fake clock and a shell is only plumbing.

Theory of operation
-------------------
Records (``records.py``): a *computation* (comp_id, reentrant, exclusive, its silence limit
``config.dead_after(pulse_interval)``, its jobs and its queue); a *node* (key ``(host,
port)``, its CPUs, when it was last heard); an *allocation*: the CPUs one node gives one
computation (a node may serve several computations, each with its own allocation; they share
the node as "Sharing nodes" below says); a *job* (id unique in its computation, status,
allocation, pinned node).

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

Placement (``placement.place``, after every ``handle``): pinned jobs first, each only on its
own allocation; then the queue in order, each job to the allocation with the largest free
fraction of its capacity (a heap with lazy invalidation: O(log nodes) per job). Each
handled job event costs O(1) or O(log nodes); only Tick, computation close and node loss
walk their nodes or jobs.

Sharing nodes (``sharing.py``)
------------------------------
Computations take turns in the order they were opened. A computation is *active* (its jobs
are placed) unless it waits for its turn: an ``exclusive`` computation waits until every
computation opened before it has been dropped (closing is not enough: its jobs still run),
then has the nodes alone; a computation opened while an exclusive one waits or runs waits
too, and they get their turns in order of opening. A computation that must wait gets
ComputationWaiting when it is opened and ComputationActive when its turn comes (one that
never waits gets neither). While it waits, its nodes may get ready and its jobs queue (or are
cancelled), but none of its jobs is placed.

While only one computation is active (a JobCluster, or an exclusive one having its turn),
placement is exactly as above. While several are, they share each node:

- A node's CPUs (``NodeReady.total_cpus``, from its ``node.info``) bound the jobs running
  there across computations: the engine starts a job now only on a CPU free on the whole
  node, so a node never runs more jobs than its CPUs. The jobs placed there (running or sent
  ahead) are bounded likewise, by its CPUs plus the deepest of its allocations' depths. Each
  allocation keeps its own bound too. (A node that did not say its CPUs is bounded by its
  allocations alone, as before.)
- Placement is fair: the next free place goes to the active computation with the *fewest
  jobs placed* (running or sent ahead, on all nodes), ties to the one opened first; it takes
  its least-loaded allocation that has room. So a computation with 10 jobs submitted after
  one with 10,000 gets the next places that free up until it has as many placed as the big
  one (or none left to place), and its jobs end within a few rounds, not after the big one.
  Computations with backlogs split the places evenly (max-min fairness). Pinned jobs are
  placed before the queues, on their own nodes, within the same bounds.

Why fewest-placed-first and not deficit round robin: places are what computations compete
for, every place is worth one job, and no computation has a weight, so counting placed jobs
is the deficit itself (a computation that had few places is behind by exactly that); it
needs no quantum to tune and no state kept between passes, and costs O(log computations)
per job with a heap.

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
