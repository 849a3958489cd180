"""What the scheduler keeps per client computation, and the store it writes through.

A :class:`SharedComp` is one SharedJobCluster's computation as the scheduler holds it: the
client's ids and options, the scheduler's own ``sched_id`` (the comp_id nodes see), the
dependency files and start payload (on disk, in its store record, so a node that joins
later gets them too), the arguments of jobs not ended yet (a reentrant job may be sent
again), results sent to the client and not yet acknowledged, and which nodes it was offered
and set up on. Decisions about its jobs are the engine's; this is bookkeeping only.

The store (``dispy_scheduler.store``, PROTOCOL.md section 13, "Undeliverable results") is
used through the two protocols below, so the shell's tests can give it a fake.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import FilePut, JobReport
from dispy_core.secret import user_name
from dispy_scheduler.store import Store

if TYPE_CHECKING:
    from dispy_scheduler._clients import ClientLink

log = logging.getLogger("dispy_scheduler")

NodeKey = tuple[str, int]


class ComputationStoreLike(Protocol):
    """One computation's record in the store (see the module docstring)."""

    sched_id: int
    client_comp_id: int
    name: str
    kind: str
    files_dir: Path

    def save_start(self, payload: bytes) -> None: ...
    def start_payload(self) -> bytes: ...
    def node_used(self, node: tuple[str, int]) -> None: ...
    def nodes(self) -> list[tuple[str, int]]: ...
    def store(self, reports: Sequence[JobReport], payload: Payload) -> None: ...
    def stored(self) -> list[tuple[JobReport, bytes]]: ...
    def forget(self, job_ids: Sequence[int]) -> None: ...
    def close(self) -> None: ...


class StoreLike(Protocol):
    def open(
        self, sched_id: int, client_comp_id: int, name: str, kind: str, client: str
    ) -> ComputationStoreLike: ...
    def found(self) -> list[Any]: ...
    def get(self, sched_id: int) -> Any: ...


def open_store(root: Path, *, clean: bool) -> Store:
    return Store(root, clean=clean)


def default_root() -> Path:
    """``<tmp>/dispy-<user>/scheduler``: per user, like the node's directories."""
    return Path(tempfile.gettempdir()) / f"dispy-{user_name()}" / "scheduler"


def new_sched_id(taken: set[int]) -> int:
    # Random rather than counted: ids must not repeat across restarts (the store keeps the
    # records of a previous run under theirs) and must tell a client nothing.
    while True:
        sched_id = secrets.randbits(48) or 1
        if sched_id not in taken:
            return sched_id


@dataclass(frozen=True, slots=True)
class DepFile:
    """A dependency file as the client sent it (its bytes are under ``files_dir``)."""

    path: str
    size: int
    mode: int
    mtime: float | None


@dataclass(frozen=True, slots=True)
class OwnSetup:
    """One node's own set-up (a NodeAllocate's depends / setup_args, PROTOCOL.md 13):
    its computation.start payload (None: the common one) and its extra files."""

    start: bytes | None
    files: list[tuple[FilePut, bytes]]


@dataclass(eq=False)
class SharedComp:
    """One client computation (see the module docstring)."""

    sched_id: int
    comp_id: int  # the client's
    name: str
    kind: str
    dest_path: str | None
    cleanup: bool
    reentrant: bool
    exclusive: bool
    client: ClientLink | None
    record: ComputationStoreLike
    files: list[DepFile] = field(default_factory=list)
    start: bytes | None = None  # computation.start's payload, once received
    opened: bool = False  # in the engine
    # each job's arguments: a view of the sched.submit payload they came in (not copied)
    args: dict[int, Payload] = field(default_factory=dict)
    job_files: dict[int, list[tuple[FilePut, bytes]]] = field(default_factory=dict)
    # why a job's own file was refused (--max_file_size): the job ends Terminated at submit
    refused_files: dict[int, str] = field(default_factory=dict)
    # why a dependency was refused: no node can run the computation without it
    setup_error: str | None = None
    offered: set[NodeKey] = field(default_factory=set)
    setup: dict[NodeKey, int] = field(default_factory=dict)  # nodes set up: cpus asked
    ready: set[NodeKey] = field(default_factory=set)
    # nodes with a set-up of their own (sched.allocate's start/files): used there instead
    # of the common one; kept (in memory) until the client answers for that node again
    own: dict[NodeKey, OwnSetup] = field(default_factory=dict)
    # results sent to the client, not acknowledged yet: their node, report and reply
    unacked: dict[int, tuple[NodeKey, JobReport, Payload]] = field(default_factory=dict)
    closing: bool = False
    terminate: bool = False
    closing_on: set[NodeKey] = field(default_factory=set)  # computation.close sent there
    dropped: bool = False
    stored: bool = False  # results went to the store: keep the record
    recovered: bool = False  # a recover_jobs closed it: remove the record when it ends

    def __repr__(self) -> str:
        return f"<SharedComp {self.name} {self.sched_id}>"

    def file_path(self, dep: DepFile) -> str:
        return os.path.join(self.record.files_dir, dep.path)
