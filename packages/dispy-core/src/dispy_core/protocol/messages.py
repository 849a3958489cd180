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

Role = Literal["client", "node", "scheduler", "recover", "relay"]
JobOutcome = Literal["finished", "terminated", "cancelled", "abandoned"]


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
    reason: str = Field(max_length=1024)
    protocol: int = PROTOCOL_VERSION


# --- node <-> client session ---------------------------------------------------------------


class AvailInfo(_Message):
    """Availability of a node as psutil sees it (see DispyNodeAvailInfo)."""

    cpu: float
    memory: int
    disk: int
    swap: float


class NodeInfo(_Message):
    """A node introduces itself right after the handshake."""

    type: Literal["node.info"] = "node.info"
    name: str
    ip_addr: str
    port: int = Field(ge=0, le=65535)
    cpus: int = Field(ge=1)
    platform: str
    avail: AvailInfo | None = None
    version: str
    busy: bool = False
    zombie_interval: float = 3600.0


class ComputationSetup(_Message):
    """The client hands a computation to a node: the node makes its directory.

    Files (``file.put`` with ``job_id`` None) may follow; ``computation.start`` ends the
    setup and carries the pickled bundle (function computations) or the program's
    command line as JSON (program computations).
    """

    type: Literal["computation"] = "computation"
    comp_id: int = Field(ge=0)
    name: str
    kind: Literal["function", "program"]
    cpus: int = Field(ge=1)
    dest_path: str | None = None
    cleanup: bool = True
    pulse_interval: float | None = Field(default=None, ge=0.05, le=600)


class ComputationStart(_Message):
    """All files are there: start the computation (payload: bundle or program JSON)."""

    type: Literal["computation.start"] = "computation.start"
    comp_id: int


class ComputationReady(_Message):
    type: Literal["computation.ready"] = "computation.ready"
    comp_id: int
    cpus: int
    dest_path: str


class ComputationFailed(_Message):
    type: Literal["computation.failed"] = "computation.failed"
    comp_id: int
    reason: str


class JobSubmit(_Message):
    """Jobs for a computation: ``jobs`` is ``[(job_id, payload_length), ...]``.

    The payload is the jobs' pickled arguments, concatenated in that order. Batching many
    jobs per frame keeps validation and syscalls off the per-job path.
    """

    type: Literal["jobs.submit"] = "jobs.submit"
    comp_id: int
    jobs: list[tuple[int, Annotated[int, Field(ge=0)]]]
    # Jobs the client sends ahead of a free CPU: the node reports when each one starts.
    notify: list[int] = []


class JobCancel(_Message):
    type: Literal["jobs.cancel"] = "jobs.cancel"
    comp_id: int
    job_ids: list[int]


class JobStarted(_Message):
    """Jobs that began running; sent only for the jobs a ``jobs.submit`` listed in
    ``notify`` (jobs queued on the node until a CPU frees up)."""

    type: Literal["jobs.started"] = "jobs.started"
    comp_id: int
    job_ids: list[int]


class JobReport(_Message):
    """One job's end: ``size`` bytes of the payload hold its pickled reply."""

    job_id: int
    outcome: JobOutcome
    start: float
    end: float
    size: int = Field(ge=0)


class JobDone(_Message):
    """Finished jobs; the payload is the replies of ``jobs`` concatenated in order."""

    type: Literal["jobs.done"] = "jobs.done"
    comp_id: int
    jobs: list[JobReport]


class JobAck(_Message):
    """The client has these results: the node may forget them."""

    type: Literal["jobs.ack"] = "jobs.ack"
    comp_id: int
    job_ids: list[int]


class RecoverRequest(_Message):
    """A ``recover`` connection asks for a computation's results (see recover_jobs)."""

    type: Literal["recover.request"] = "recover.request"
    comp_id: int


class RecoverStatus(_Message):
    """What the node has for the computation: jobs still to finish and stored results.

    Stored and unacknowledged results follow as ``jobs.done``; pending jobs' results follow
    as they finish.
    """

    type: Literal["recover.status"] = "recover.status"
    comp_id: int
    known: bool
    pending: list[int]
    stored: int


class JobProvisional(_Message):
    """A running job's provisional result (payload: pickled object)."""

    type: Literal["jobs.provisional"] = "jobs.provisional"
    comp_id: int
    job_id: int


class FilePut(_Message):
    """A file, payload = contents, ``path`` relative to the computation's directory.

    Client to node: a dependency (``job_id`` None), a job's dependency (removed when that
    job ends) or ``cluster.send_file``. Node to client: ``dispy_send_file`` from a job; the
    client saves it under its working directory. ``req`` > 0 asks for a ``file.ack``.
    """

    type: Literal["file.put"] = "file.put"
    comp_id: int
    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    mtime: float | None = None
    job_id: int | None = None
    req: int = 0


class FileAck(_Message):
    type: Literal["file.ack"] = "file.ack"
    comp_id: int
    req: int
    error: str | None = None


class SetCpus(_Message):
    """Client asks the node to use ``cpus`` CPUs for the computation."""

    type: Literal["computation.set_cpus"] = "computation.set_cpus"
    comp_id: int
    cpus: int = Field(ge=1)


class CpusSet(_Message):
    type: Literal["computation.cpus"] = "computation.cpus"
    comp_id: int
    cpus: int


class Pulse(_Message):
    type: Literal["pulse"] = "pulse"
    avail: AvailInfo | None = None
    running: int = 0


class CloseComputation(_Message):
    type: Literal["computation.close"] = "computation.close"
    comp_id: int
    terminate: bool = False


class ComputationClosed(_Message):
    type: Literal["computation.closed"] = "computation.closed"
    comp_id: int


class Notice(_Message):
    """A human-readable problem report that does not end the session."""

    type: Literal["notice"] = "notice"
    level: Literal["info", "warning", "error"] = "warning"
    text: str


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
    | Notice,
    Field(discriminator="type"),
]
MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)

HandshakeMessage = Annotated[
    Hello | Challenge | Proof | Welcome | Refused, Field(discriminator="type")
]
HANDSHAKE_MESSAGE: TypeAdapter[HandshakeMessage] = TypeAdapter(HandshakeMessage)


def encode(message: _Message) -> bytes:
    """The JSON header bytes of ``message``."""
    return message.model_dump_json().encode()


def decode(header: bytes) -> Message:
    """Validate a header received after authentication.

    Raises:
        RemoteProtocolError: the header is not valid JSON or no known message.
    """
    try:
        return MESSAGE.validate_json(header)
    except ValidationError as exc:
        raise RemoteProtocolError(f"malformed message header: {_first_error(exc)}") from None


def decode_handshake(header: bytes) -> HandshakeMessage:
    """Validate a header received during the handshake (only handshake messages allowed)."""
    try:
        return HANDSHAKE_MESSAGE.validate_json(header)
    except ValidationError as exc:
        raise RemoteProtocolError(f"malformed handshake message: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    if exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return f"{err.get('msg', 'invalid')}{f' at {where}' if where else ''}"
    return str(exc)
