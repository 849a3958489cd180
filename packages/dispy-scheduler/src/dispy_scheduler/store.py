"""The scheduler's store: what it must not lose when a client is gone or it is killed.

One record per computation, under the scheduler's private directory (0700, checked like
the node's prefix by :mod:`dispy_core.private_dir`)::

    <root>/<sched_id>/meta.json    which computation, of which client (written at open)
    <root>/<sched_id>/start        the computation.start payload, as the client sent it
    <root>/<sched_id>/nodes        one JSON line per node that was given the computation
    <root>/<sched_id>/files/       the client's dependency files, as sent
    <root>/.dispy-results/<sched_id>/<job_id>.result   undelivered results
                                   (dispy_core.result_store, as on a node)

Everything is written whole or not at all (a temporary name, then a rename), except
``nodes``, which is appended one line per node (not per job) and synced: after a
``kill -9`` (or a crash of the machine) the restarted scheduler finds every node that may
hold results of the computation, and asks each of them (:func:`recover_from_nodes`). Job
ids in stored results are the client's: the scheduler uses them toward nodes too (a job's
id is unique within its computation, and each computation has its own ``sched_id``).

A record that cannot be read at start (a half-made directory, a damaged ``meta.json``)
is skipped with one warning: start-up never fails on what an earlier run left. Recovery
itself (toward nodes and toward ``dispy.recover_jobs``) is in :mod:`dispy_scheduler._recover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dispy_core.files import atomic_write, makedirs
from dispy_core.private_dir import PRIVATE_DIR, PrivateDirError, prepare_private_dir
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import JobReport
from dispy_core.result_store import DIRNAME, ResultStore
from dispy_core.results import Reply
from dispy_scheduler._recover import (
    LiveComputation,
    LiveLookup,
    ResultSink,
    recover_from_nodes,
    serve_recover,
)

log = logging.getLogger("dispy_scheduler")

META, START, NODES, FILES = "meta.json", "start", "nodes", "files"


class StoreError(ValueError):
    """The store's directory cannot be used (the message says which and why)."""


class ComputationStore:
    """The durable record of one computation; made by :meth:`Store.open` or found at start.

    Attributes:
        sched_id: the id the scheduler gave it (the ``comp_id`` nodes know).
        client_comp_id: the id its client gave it.
        name, kind, client: as the client named it, ``"function"`` or ``"program"``, and
            who the client was (for logs).
        files_dir: the client's dependency files, as sent.
    """

    def __init__(
        self,
        folder: Path,
        results: ResultStore,
        meta: dict[str, Any],
    ) -> None:
        self._folder = folder
        self._results = results
        self.sched_id = int(meta["sched_id"])
        self.client_comp_id = int(meta["client_comp_id"])
        self.name = str(meta["name"])
        self.kind = str(meta["kind"])
        self.client = str(meta.get("client", ""))
        self.files_dir = folder / FILES
        self._nodes: list[tuple[str, int]] = []
        self.closed = False
        # While recover_from_nodes asks the nodes (after a restart): set once each answered,
        # and the jobs they still run; a recover connection waits for the first, reports
        # the second.
        self.asking: asyncio.Event | None = None
        self.node_pending: set[int] = set()
        # Nodes recover_from_nodes could not ask (down, unreachable): they may hold results
        # still, so a recover connection asks them again before it is served.
        self.unasked: set[tuple[str, int]] = set()
        self._sinks: list[ResultSink] = []

    def __repr__(self) -> str:
        return f"<ComputationStore {self.sched_id} {self.name!r} of {self.client}>"

    def save_start(self, payload: bytes) -> None:
        """Keep the ``computation.start`` payload (the bundle, or the program's JSON)."""
        atomic_write(str(self._folder / START), payload, 0o600)

    def start_payload(self) -> bytes:
        """The saved ``computation.start`` payload.

        Raises:
            FileNotFoundError: none was saved (the scheduler stopped before the start).
        """
        return (self._folder / START).read_bytes()

    def node_used(self, node: tuple[str, int]) -> None:
        """Record, durably and once, that ``node`` (its announced address and port) was
        given this computation: after a restart, recovery asks every such node."""
        key = (str(node[0]), int(node[1]))
        if key in self._nodes:
            return
        line = (json.dumps(list(key)) + "\n").encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._folder / NODES, flags, 0o600)
        try:
            os.write(fd, line)  # one small write: a line is there whole or not at all
            os.fsync(fd)
        finally:
            os.close(fd)
        self._nodes.append(key)

    def nodes(self) -> list[tuple[str, int]]:
        return list(self._nodes)

    def _load_nodes(self) -> None:
        try:
            text = (self._folder / NODES).read_text()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            # The last line may be cut short by a crash of the machine (not by kill -9).
            with contextlib.suppress(ValueError, TypeError, IndexError):
                host, port = json.loads(line)
                key = (str(host), int(port))
                if key not in self._nodes:
                    self._nodes.append(key)

    def store(self, reports: Sequence[JobReport], payload: Payload) -> None:
        """Keep results no one could take: ``reports`` as in ``jobs.done`` (the client's
        job ids) and their replies concatenated in that order."""
        if self.closed:
            # Its client took everything and closed it: nobody is left to deliver these to.
            log.warning(
                "computation %d is closed: %d late result(s) dropped", self.sched_id, len(reports)
            )
            return
        view = memoryview(payload)
        replies: list[Reply] = []
        at = 0
        for report in reports:
            part = bytes(view[at : at + report.size])
            at += report.size
            replies.append(Reply(report.job_id, report.outcome, report.start, report.end, part))
        self._results.save(self.sched_id, replies)
        for sink in list(self._sinks):
            sink(reports, payload)

    def subscribe(self, sink: ResultSink) -> Callable[[], None]:
        """Call ``sink`` with every result stored from now on; returns the unsubscribe."""
        self._sinks.append(sink)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._sinks.remove(sink)

        return unsubscribe

    def stored(self) -> list[tuple[JobReport, bytes]]:
        """The results kept, each with its report (``size`` is its reply's length)."""
        return [
            (
                JobReport(
                    job_id=r.job_id,
                    outcome=r.outcome,
                    start=r.start,
                    end=r.end,
                    size=len(r.payload),
                ),
                bytes(r.payload),
            )
            for r in self._results.load(self.sched_id)
        ]

    def count(self) -> int:
        """How many results are kept."""
        return self._results.count(self.sched_id)

    def forget(self, job_ids: Sequence[int]) -> None:
        """These results were delivered and acknowledged."""
        self._results.remove(self.sched_id, list(job_ids))

    def close(self) -> None:
        """Everything was delivered (or given up): remove the record, files and results."""
        self.closed = True
        self._results.drop(self.sched_id)
        shutil.rmtree(self._folder, ignore_errors=True)


class Store:
    """Every computation's record, under ``root`` (made 0700 and checked to be ours).

    Args:
        root: the scheduler's store (by default ``<tmp>/dispy-<user>/scheduler``).
        clean: remove what earlier runs left (``--clean``).

    Raises:
        StoreError: ``root`` is not ours, or cannot be made.
    """

    def __init__(self, root: Path, *, clean: bool = False) -> None:
        self.root = Path(root)
        left = _left_behind(self.root) if clean else (0, 0)
        try:
            warning = prepare_private_dir(
                str(self.root), clean=clean, label="the scheduler's store", server="it"
            )
        except PrivateDirError as exc:
            raise StoreError(str(exc)) from None
        if warning:
            log.warning(warning)
        if clean:
            # Said every time: an operator who wonders where kept results went finds why.
            log.info(
                "--clean: emptied the scheduler's store %s (%d computation record(s) and %d "
                "kept result(s) of previous runs removed)",
                self.root,
                *left,
            )
        self._results = ResultStore(str(self.root))
        self._open: dict[int, ComputationStore] = {}
        self._found: list[ComputationStore] = []
        self.recovering: set[int] = set()  # sched_ids a recover connection is serving
        self._scan()

    def _scan(self) -> None:
        for entry in sorted(os.listdir(self.root), key=lambda n: (len(n), n)):
            if entry == DIRNAME or entry.startswith("."):
                continue
            folder = self.root / entry
            try:
                meta = json.loads((folder / META).read_bytes())
                cs = ComputationStore(folder, self._results, meta)
                if str(cs.sched_id) != entry or cs.kind not in ("function", "program"):
                    raise ValueError("it does not match its directory")
                cs._load_nodes()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "skipped %s in the scheduler's store: not a readable computation "
                    "record (%s); remove it, or start with --clean",
                    folder,
                    exc,
                )
                continue
            self._open[cs.sched_id] = cs
            self._found.append(cs)

    def open(
        self, sched_id: int, client_comp_id: int, name: str, kind: str, client: str
    ) -> ComputationStore:
        """A new computation's record, on disk before this returns.

        Raises:
            FileExistsError: ``sched_id`` has a record already.
        """
        folder = self.root / str(int(sched_id))
        if sched_id in self._open or folder.exists():
            raise FileExistsError(f"the scheduler's store has computation {sched_id} already")
        makedirs(str(folder / FILES), PRIVATE_DIR)
        meta = {
            "sched_id": int(sched_id),
            "client_comp_id": int(client_comp_id),
            "name": name,
            "kind": kind,
            "client": client,
        }
        atomic_write(str(folder / META), json.dumps(meta).encode(), 0o600)
        cs = ComputationStore(folder, self._results, meta)
        self._open[cs.sched_id] = cs
        return cs

    def found(self) -> list[ComputationStore]:
        """The computations an earlier run left, still open (in ``sched_id`` order)."""
        return [cs for cs in self._found if not cs.closed]

    def get(self, sched_id: int) -> ComputationStore | None:
        cs = self._open.get(sched_id)
        if cs is not None and cs.closed:
            del self._open[sched_id]
            return None
        return cs


def _left_behind(root: Path) -> tuple[int, int]:
    """How many computation records and kept results are under ``root`` (for --clean's
    log line; what cannot be read counts as nothing)."""
    records = results = 0
    with contextlib.suppress(OSError):
        records = sum(1 for e in os.scandir(root) if e.is_dir() and e.name.isdigit())
    with contextlib.suppress(OSError):
        for entry in os.scandir(root / DIRNAME):
            with contextlib.suppress(OSError):
                results += sum(1 for f in os.scandir(entry.path) if f.name.endswith(".result"))
    return records, results


__all__ = [
    "ComputationStore",
    "LiveComputation",
    "LiveLookup",
    "ResultSink",
    "Store",
    "StoreError",
    "recover_from_nodes",
    "serve_recover",
]
