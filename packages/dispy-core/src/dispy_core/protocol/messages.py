"""Message headers exchanged between clients, schedulers and nodes.

Every frame carries one JSON header validated by :data:`MESSAGE` (a discriminated union
on ``type``) and, beside it, an optional binary payload (pickled computations, arguments,
results, file contents). The payload is never inside the JSON and is never unpickled by the
protocol layer. ``PROTOCOL_VERSION`` changes whenever a header changes incompatibly.

See ``packages/dispy-core/PROTOCOL.md`` for the flow of these messages.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from dispy_core.protocol.errors import RemoteProtocolError

# 2: the handshake became a password-authenticated key exchange (SPAKE2); see PROTOCOL.md.
PROTOCOL_VERSION = 2

# The reason a client gives when it closes a connection because it does not want the node
# (pattern or NodeAllocate said no): the node then stops offering itself to that cluster.
NOT_WANTED = "node not used by this cluster"
# The reason a node gives a client (or scheduler) while it serves another client; a client
# that dialed a node it already holds hears it too (PROTOCOL.md 6.2, the TCP dial).
BUSY = "node is busy serving another client"
# ... and while it serves a scheduler, to any client or other scheduler.
SERVING_SCHEDULER = "node is serving a scheduler"

Role = Literal["client", "node", "scheduler", "recover", "relay"]
JobOutcome = Literal["finished", "terminated", "cancelled", "abandoned"]


# --- bounds of every field (see PROTOCOL.md, "Field bounds") ---------------------------------
# A value a peer sends must be usable as it is by whatever consumes it (a struct field, a
# syscall, a file name, a log line), so the schema refuses what would fail later: ids that
# do not fit a u64, times that are not finite, NULs, lists and strings without a limit.
# Constraints are checked by pydantic-core itself: a bounded integer costs some 20-30 ns
# more than a bare one, less than any check written in Python (measured on jobs.submit).

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
MAX_CPUS = 1 << 16
MAX_NAME = 1024  # names of nodes and computations, platform and version strings
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_TEXT = 16384  # human-readable reasons and notices (longer ones are clipped by clip())
MAX_IDS = 1 << 16  # ids or jobs in one message (senders split longer lists)
MAX_TIME = 1e11  # seconds since the epoch (the year 5138): any real time stamp
MAX_INTERVAL = 1e9  # seconds: any real interval

# Ids (computations, jobs, requests): u64, as the node's worker link packs them.
Id = Annotated[int, Field(ge=0, le=U64_MAX)]
# Byte counts: a payload's part (a frame's payload length is a u32) or a size on a disk.
Size = Annotated[int, Field(ge=0, le=U32_MAX)]
Count = Annotated[int, Field(ge=0, le=U64_MAX)]
Cpus = Annotated[int, Field(ge=1, le=MAX_CPUS)]
Time = Annotated[float, Field(ge=0.0, le=MAX_TIME, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
NO_NUL = r"^[^\x00]*$"


# Strings: no NUL (it truncates a C string: a path, an argv entry, a log line), bounded.
Name = Annotated[str, StringConstraints(max_length=MAX_NAME, pattern=NO_NUL)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH, pattern=NO_NUL)]
Reason = Annotated[str, StringConstraints(max_length=MAX_TEXT, pattern=NO_NUL)]


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` made fit for a :data:`Reason` field: NULs replaced, clipped to ``limit``.

    For text this side did not write itself (a setup's traceback, an OS error naming a
    client's path), so building the message cannot fail.
    """
    text = text.replace("\0", "\ufffd")
    if len(text) <= limit:
        return text
    return text[: limit - 20] + " ... (text clipped)"


class _Message(BaseModel):
    # strict: a header says 7, not "7", 7.0 or true, where an integer is meant
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- handshake (before authentication; never carries a payload) -------------------------

# Every handshake value has one fixed shape: exactly so many lowercase hex digits. Anything
# else (non-ASCII, upper case, another length) fails validation before it is used, and the
# handshake works on the decoded bytes, never on the text.
Hex32 = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
# A SPAKE2 message as the spake2 package makes it: one side byte ('A' = 0x41 from the
# connector, 'B' = 0x42 from the acceptor) and a 32-byte Ed25519 group element.
PakeHex = Annotated[
    str, StringConstraints(min_length=66, max_length=66, pattern=r"^4[12][0-9a-f]{64}$")
]


class Hello(_Message):
    """First frame of the connecting side: who it is, its fresh nonce, its SPAKE2 message."""

    type: Literal["hello"] = "hello"
    protocol: int
    role: Role
    name: str = Field(max_length=256)
    nonce: Hex32
    pake: PakeHex


class Challenge(_Message):
    """Answer of the accepting side: its nonce, its SPAKE2 message, its key confirmation."""

    type: Literal["challenge"] = "challenge"
    protocol: int
    role: Role
    name: str = Field(max_length=256)
    nonce: Hex32
    pake: PakeHex
    proof: Hex32


class Proof(_Message):
    """The connecting side's key confirmation over the whole handshake transcript."""

    type: Literal["proof"] = "proof"
    proof: Hex32


class Welcome(_Message):
    """The accepting side accepted the proof: authenticated frames follow."""

    type: Literal["welcome"] = "welcome"


class Refused(_Message):
    """One side refuses the handshake or the session; the connection closes after it."""

    type: Literal["refused"] = "refused"
    reason: Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)]
    protocol: Annotated[int, Field(ge=0, le=U32_MAX)] = PROTOCOL_VERSION


# --- node <-> client session ---------------------------------------------------------------


class AvailInfo(_Message):
    """Availability of a node as psutil sees it (see DispyNodeAvailInfo)."""

    cpu: Percent
    memory: Count
    disk: Count
    swap: Percent


class NodeInfo(_Message):
    """A node introduces itself right after the handshake."""

    type: Literal["node.info"] = "node.info"
    name: Name
    ip_addr: Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
    port: int = Field(ge=0, le=65535)
    cpus: Cpus
    platform: Name
    avail: AvailInfo | None = None
    version: Name
    zombie_interval: float = Field(default=3600.0, gt=0, le=MAX_INTERVAL, allow_inf_nan=False)


class ComputationSetup(_Message):
    """The client hands a computation to a node: the node makes its directory.

    Files (``file.put`` with ``job_id`` None) may follow; ``computation.start`` ends the
    setup and carries the pickled bundle (function computations) or the program's
    command line as JSON (program computations).
    """

    type: Literal["computation"] = "computation"
    comp_id: Id
    name: Name
    kind: Literal["function", "program"]
    cpus: Cpus
    dest_path: Path | None = None
    cleanup: bool = True
    pulse_interval: float | None = Field(default=None, ge=0.05, le=600, allow_inf_nan=False)


class ComputationStart(_Message):
    """All files are there: start the computation (payload: bundle or program JSON)."""

    type: Literal["computation.start"] = "computation.start"
    comp_id: Id


class ComputationReady(_Message):
    type: Literal["computation.ready"] = "computation.ready"
    comp_id: Id
    cpus: Cpus
    dest_path: Path


class ComputationFailed(_Message):
    type: Literal["computation.failed"] = "computation.failed"
    comp_id: Id
    reason: Reason


class JobSubmit(_Message):
    """Jobs for a computation: ``jobs`` is ``[(job_id, payload_length), ...]``.

    The payload is the jobs' pickled arguments, concatenated in that order. Batching many
    jobs per frame keeps validation and syscalls off the per-job path.
    """

    type: Literal["jobs.submit"] = "jobs.submit"
    comp_id: Id
    jobs: list[tuple[Id, Size]] = Field(max_length=MAX_IDS)
    # Jobs the client sends ahead of a free CPU: the node reports when each one starts.
    notify: list[Id] = Field(default=[], max_length=MAX_IDS)


class JobCancel(_Message):
    type: Literal["jobs.cancel"] = "jobs.cancel"
    comp_id: Id
    job_ids: list[Id] = Field(max_length=MAX_IDS)


class JobStarted(_Message):
    """Jobs that began running; sent only for the jobs a ``jobs.submit`` listed in
    ``notify`` (jobs queued on the node until a CPU frees up)."""

    type: Literal["jobs.started"] = "jobs.started"
    comp_id: Id
    job_ids: list[Id] = Field(max_length=MAX_IDS)


class JobReport(_Message):
    """One job's end: ``size`` bytes of the payload hold its pickled reply."""

    job_id: Id
    outcome: JobOutcome
    start: Time
    end: Time
    size: Size


class JobDone(_Message):
    """Finished jobs; the payload is the replies of ``jobs`` concatenated in order."""

    type: Literal["jobs.done"] = "jobs.done"
    comp_id: Id
    jobs: list[JobReport] = Field(max_length=MAX_IDS)


class JobAck(_Message):
    """The client has these results: the node may forget them."""

    type: Literal["jobs.ack"] = "jobs.ack"
    comp_id: Id
    job_ids: list[Id] = Field(max_length=MAX_IDS)


class RecoverRequest(_Message):
    """A ``recover`` connection asks for a computation's results (see recover_jobs)."""

    type: Literal["recover.request"] = "recover.request"
    comp_id: Id


class RecoverStatus(_Message):
    """What the node has for the computation: jobs still to finish and stored results.

    Stored and unacknowledged results follow as ``jobs.done``; pending jobs' results follow
    as they finish.
    """

    type: Literal["recover.status"] = "recover.status"
    comp_id: Id
    known: bool
    pending: list[Id] = Field(max_length=MAX_IDS)
    stored: Count


class JobProvisional(_Message):
    """A running job's provisional result (payload: pickled object)."""

    type: Literal["jobs.provisional"] = "jobs.provisional"
    comp_id: Id
    job_id: Id


FileMode = Annotated[int, Field(ge=0, le=0o7777)]
FileTime = Annotated[float, Field(ge=-MAX_TIME, le=MAX_TIME, allow_inf_nan=False)]


class FilePut(_Message):
    """A file, payload = contents, ``path`` relative to the computation's directory.

    Client to node: a dependency (``job_id`` None), a job's dependency (removed when that
    job ends) or ``cluster.send_file``. Node to client: ``dispy_send_file`` from a job; the
    client saves it under its working directory. ``req`` > 0 asks for a ``file.ack``.
    """

    type: Literal["file.put"] = "file.put"
    comp_id: Id
    path: Path
    size: Size
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    mtime: float | None = Field(default=None, ge=-MAX_TIME, le=MAX_TIME, allow_inf_nan=False)
    job_id: Id | None = None
    req: Id = 0


class FileAck(_Message):
    type: Literal["file.ack"] = "file.ack"
    comp_id: Id
    req: Id
    error: Reason | None = None


class SetCpus(_Message):
    """Client asks the node to use ``cpus`` CPUs for the computation."""

    type: Literal["computation.set_cpus"] = "computation.set_cpus"
    comp_id: Id
    cpus: Cpus


class CpusSet(_Message):
    type: Literal["computation.cpus"] = "computation.cpus"
    comp_id: Id
    cpus: Cpus


class Pulse(_Message):
    type: Literal["pulse"] = "pulse"
    avail: AvailInfo | None = None
    running: int = Field(default=0, ge=0, le=U32_MAX)


class CloseComputation(_Message):
    type: Literal["computation.close"] = "computation.close"
    comp_id: Id
    terminate: bool = False


class ComputationClosed(_Message):
    type: Literal["computation.closed"] = "computation.closed"
    comp_id: Id


class Notice(_Message):
    """A human-readable problem report that does not end the session."""

    type: Literal["notice"] = "notice"
    level: Literal["info", "warning", "error"] = "warning"
    text: Reason


# --- client <-> scheduler (shared execution; PROTOCOL.md section 13) ----------------------
# A SharedJobCluster connects to the scheduler's scheduler_port (role "client", the cluster
# secret) and keeps that one connection. Messages name the client's own comp_id and job ids;
# nodes are named by their address (ip_addr, port) as the node announced it.

Host = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_NUL)]
Port = Annotated[int, Field(ge=0, le=65535)]
NodeStatusName = Literal["initialized", "closed", "abandoned", "setup_failed"]
EndStatus = Literal["cancelled", "abandoned", "terminated"]


class SharedComputation(_Message):
    """A SharedJobCluster opens its computation (dependencies follow as ``file.put`` with no
    ``job_id``, then ``computation.start`` with the bundle or program JSON)."""

    type: Literal["sched.computation"] = "sched.computation"
    comp_id: Id
    name: Name
    kind: Literal["function", "program"]
    dest_path: Path | None = None
    cleanup: bool = True
    reentrant: bool = False
    exclusive: bool = False
    # Nodes the client listed by name or address: the scheduler pings them too.
    hosts: list[Host] = Field(default=[], max_length=1024)


class SharedStatus(_Message):
    """Where the client's computation stands: ``accepted`` (after ``computation.start``;
    ``sched_id`` names it in the scheduler's store, for ``recover_jobs``), ``waiting`` (its
    turn has not come: an exclusive computation runs or waits before it) or ``active``."""

    type: Literal["sched.status"] = "sched.status"
    comp_id: Id
    state: Literal["accepted", "waiting", "active"]
    sched_id: Id = 0
    pulse_interval: float | None = Field(default=None, gt=0, le=600, allow_inf_nan=False)


class NodeOffer(_Message):
    """A node the scheduler can use for the computation: the client decides (patterns,
    NodeAllocate) and answers ``sched.allocate``."""

    type: Literal["sched.offer"] = "sched.offer"
    comp_id: Id
    name: Name
    ip_addr: Host
    port: Port
    cpus: Cpus
    platform: Name
    avail: AvailInfo | None = None


class NodeAllocation(_Message):
    """The client's answer to ``sched.offer`` (or ``cluster.allocate_node`` later): use
    ``cpus`` of the node for this computation; 0 means do not use it."""

    type: Literal["sched.allocate"] = "sched.allocate"
    comp_id: Id
    ip_addr: Host
    port: Port
    cpus: Annotated[int, Field(ge=0, le=MAX_CPUS)]
    # The node's own set-up (a NodeAllocate's depends / setup_args), used there instead of
    # the common one: ``start`` bytes of the payload are its computation.start payload
    # (None: the common one), then the bytes of ``files`` (path, size, mode, mtime), in
    # order, sent there after the common files.
    start: Size | None = None
    files: list[tuple[Path, Size, FileMode, FileTime]] = Field(default=[], max_length=MAX_IDS)


class SharedNode(_Message):
    """A node's status for the computation changed (it set the computation up, closed it,
    was lost, or its setup failed with ``reason``)."""

    type: Literal["sched.node"] = "sched.node"
    comp_id: Id
    ip_addr: Host
    port: Port
    status: NodeStatusName
    cpus: Annotated[int, Field(ge=0, le=MAX_CPUS)] = 0
    reason: Reason | None = None
    avail: AvailInfo | None = None


class SharedSubmit(_Message):
    """Jobs for the computation, as ``jobs.submit`` (payload: the arguments concatenated);
    ``pinned`` lists ``(job_id, ip_addr, port)`` of jobs that must run on that node."""

    type: Literal["sched.submit"] = "sched.submit"
    comp_id: Id
    jobs: list[tuple[Id, Size]] = Field(max_length=MAX_IDS)
    pinned: list[tuple[Id, Host, Port]] = Field(default=[], max_length=MAX_IDS)


class SharedRunning(_Message):
    """These jobs run on the node from now (or run again after a requeue)."""

    type: Literal["sched.running"] = "sched.running"
    comp_id: Id
    ip_addr: Host
    port: Port
    job_ids: list[Id] = Field(max_length=MAX_IDS)


class SharedRequeued(_Message):
    """The node of these jobs was lost and the computation is reentrant: they wait again."""

    type: Literal["sched.requeued"] = "sched.requeued"
    comp_id: Id
    job_ids: list[Id] = Field(max_length=MAX_IDS)


class SharedDone(_Message):
    """Jobs ended on the node: ``jobs.done`` as the node sent it, with the node named; the
    payload is the node's replies, unchanged. The client answers ``jobs.ack``."""

    type: Literal["sched.done"] = "sched.done"
    comp_id: Id
    ip_addr: Host
    port: Port
    jobs: list[JobReport] = Field(max_length=MAX_IDS)


class SharedEnded(_Message):
    """The scheduler ended jobs itself (cancelled before they ran, their node lost with the
    computation not reentrant, the computation dropped): ``(job_id, status, reason)``."""

    type: Literal["sched.ended"] = "sched.ended"
    comp_id: Id
    jobs: list[tuple[Id, EndStatus, Reason]] = Field(max_length=MAX_IDS)


class SharedFilePut(_Message):
    """``cluster.send_file(path, node)``: a file for the computation on one node (payload:
    its bytes); answered with ``file.ack`` carrying ``req``."""

    type: Literal["sched.file"] = "sched.file"
    comp_id: Id
    ip_addr: Host
    port: Port
    path: Path
    size: Size
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    mtime: float | None = Field(default=None, ge=-MAX_TIME, le=MAX_TIME, allow_inf_nan=False)
    req: Id


Message = Annotated[
    Hello
    | Challenge
    | Proof
    | Welcome
    | Refused
    | NodeInfo
    | ComputationSetup
    | ComputationStart
    | ComputationReady
    | ComputationFailed
    | JobSubmit
    | JobCancel
    | JobStarted
    | JobDone
    | JobProvisional
    | JobAck
    | RecoverRequest
    | RecoverStatus
    | FilePut
    | FileAck
    | SetCpus
    | CpusSet
    | Pulse
    | CloseComputation
    | ComputationClosed
    | Notice
    | SharedComputation
    | SharedStatus
    | NodeOffer
    | NodeAllocation
    | SharedNode
    | SharedSubmit
    | SharedRunning
    | SharedRequeued
    | SharedDone
    | SharedEnded
    | SharedFilePut,
    Field(discriminator="type"),
]
MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)
# The adapter's own validator, called directly: validate_json()'s keyword handling is a
# fifth of a small header's cost (several are decoded per job).
_validate_json = MESSAGE.validator.validate_json

HandshakeMessage = Annotated[
    Hello | Challenge | Proof | Welcome | Refused, Field(discriminator="type")
]
HANDSHAKE_MESSAGE: TypeAdapter[HandshakeMessage] = TypeAdapter(HandshakeMessage)


def encode(message: _Message) -> bytes:
    """The JSON header bytes of ``message``."""
    # model_dump_json()'s bytes, without its keyword handling and the str round trip
    # (half the cost of a small message; two are encoded per job each way).
    data: bytes = message.__pydantic_serializer__.to_json(message)
    return data


def decode(header: bytes) -> Message:
    """Validate a header received after authentication.

    Raises:
        RemoteProtocolError: the header is not valid JSON or no known message.
    """
    try:
        message: Message = _validate_json(header)
    except ValidationError as exc:
        raise RemoteProtocolError(f"malformed message header: {_first_error(exc)}") from None
    return message


def _first_error(exc: ValidationError) -> str:
    # Clipped: the location may hold a key the peer chose (any length, NULs), and the text
    # goes back to the peer in a ``refused`` reason, which must always be valid.
    if exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return clip(f"{err.get('msg', 'invalid')}{f' at {where}' if where else ''}", 512)
    return clip(str(exc), 512)
