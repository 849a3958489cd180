"""What the scheduler keeps per client computation, and the store it writes through.

A :class:`SharedComp` is one SharedJobCluster's computation as the scheduler holds it: the
client's ids and options, the scheduler's own ``sched_id`` (the comp_id nodes see), the
dependency files and start payload (on disk, in its store record, so a node that joins
later gets them too), the arguments of jobs not ended yet (a reentrant job may be sent
again), results sent to the client and not yet acknowledged, and which nodes it was offered
and set up on. Decisions about its jobs are the engine's; this is bookkeeping only.

The store (``dispy_scheduler.store``, PROTOCOL.md section 13, "Undeliverable results") is
used through the two protocols below, so this package does not depend on its details.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import FilePut, JobReport
from dispy_core.secret import user_name

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


class _TransientRecord:
    """A record that keeps files but no results: used only while ``dispy_scheduler.store``
    is not installed (it is built separately); undeliverable results are then lost, and
    every one is logged as such."""

    def __init__(
        self, root: Path, sched_id: int, client_comp_id: int, name: str, kind: str
    ) -> None:
        self.sched_id = sched_id
        self.client_comp_id = client_comp_id
        self.name = name
        self.kind = kind
        self.files_dir = root / str(sched_id) / "files"
        self.files_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self._start = b""
        self._nodes: list[NodeKey] = []

    def save_start(self, payload: bytes) -> None:
        self._start = payload

    def start_payload(self) -> bytes:
        return self._start

    def node_used(self, node: tuple[str, int]) -> None:
        if node not in self._nodes:
            self._nodes.append(node)

    def nodes(self) -> list[tuple[str, int]]:
        return list(self._nodes)

    def store(self, reports: Sequence[JobReport], payload: Payload) -> None:
        log.error(
            "computation %s: results of job(s) %s lost: the client is gone and the "
            "scheduler's store is not installed",
            self.name,
            ", ".join(str(r.job_id) for r in reports),
        )

    def stored(self) -> list[tuple[JobReport, bytes]]:
        return []

    def forget(self, job_ids: Sequence[int]) -> None:
        return None

    def close(self) -> None:
        shutil.rmtree(self.files_dir.parent, ignore_errors=True)


class _TransientStore:
    def __init__(self, root: Path, *, clean: bool = False) -> None:
        self.root = root / "transient"
        if clean:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, mode=0o700, exist_ok=True)

    def open(
        self, sched_id: int, client_comp_id: int, name: str, kind: str, client: str
    ) -> ComputationStoreLike:
        return _TransientRecord(self.root, sched_id, client_comp_id, name, kind)

    def found(self) -> list[Any]:
        return []

    def get(self, sched_id: int) -> Any:
        return None


def store_module() -> Any:
    """``dispy_scheduler.store`` if installed, else None."""
    try:
        return importlib.import_module("dispy_scheduler.store")
    except ModuleNotFoundError as exc:
        if exc.name != "dispy_scheduler.store":
            raise
        return None


def open_store(root: Path, *, clean: bool) -> StoreLike:
    module = store_module()
    if module is None:
        log.warning(
            "the scheduler's store (dispy_scheduler.store) is not installed: results a "
            "client cannot take are lost, and recover_jobs through the scheduler is refused"
        )
        return _TransientStore(root, clean=clean)
    store: StoreLike = module.Store(root, clean=clean)
    return store


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
    offered: set[NodeKey] = field(default_factory=set)
    setup: dict[NodeKey, int] = field(default_factory=dict)  # nodes set up: cpus asked
    ready: set[NodeKey] = field(default_factory=set)
    # results sent to the client, not acknowledged yet: their node, report and reply
    unacked: dict[int, tuple[NodeKey, JobReport, Payload]] = field(default_factory=dict)
    closing: bool = False
    terminate: bool = False
    closing_on: set[NodeKey] = field(default_factory=set)  # computation.close sent there
    dropped: bool = False
    stored: bool = False  # results went to the store: keep the record

    def __repr__(self) -> str:
        return f"<SharedComp {self.name} {self.sched_id}>"

    def file_path(self, dep: DepFile) -> str:
        return os.path.join(self.record.files_dir, dep.path)
