"""One SharedJobCluster's connection to the scheduler (PROTOCOL.md section 13).

A client connects to ``--scheduler_port`` (role ``client``, the cluster secret and TLS
files) and keeps that one connection for everything: it opens its computation
(``sched.computation``, dependency files, ``computation.start``), answers node offers
(``sched.allocate``), submits jobs (``sched.submit``: the arguments are held here, as bytes,
until each job ends, since a reentrant job may be sent again), acknowledges results,
cancels, sends files and closes. Each message becomes an engine event or a forward through
the scheduler (:mod:`dispy_scheduler.service`), in the loop turn it arrives in.

When the connection ends while its computation still has jobs, the computation stays open:
its jobs keep running and their results go to the store. Results the client was sent but
had not acknowledged are stored at once (their replies are kept until acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.config import dead_after
from dispy_core.engine import (
    CancelRequested,
    ComputationClosed,
    ComputationOpened,
    EngineError,
    JobSpec,
    JobsSubmitted,
)
from dispy_core.files import store_file
from dispy_core.paths import UnsafePathError, safe_join
from dispy_core.protocol.framing import Outgoing, Payload
from dispy_core.protocol.messages import (
    CloseComputation,
    ComputationStart,
    FileAck,
    FilePut,
    JobAck,
    JobCancel,
    Message,
    NodeAllocation,
    Notice,
    Pulse,
    SharedComputation,
    SharedEnded,
    SharedFilePut,
    SharedStatus,
    SharedSubmit,
    clip,
)
from dispy_scheduler._nodes import set_up, tell
from dispy_scheduler._state import DepFile, OwnSetup, SharedComp, new_sched_id

if TYPE_CHECKING:
    from dispy_scheduler.service import Scheduler

log = logging.getLogger("dispy_scheduler")

CLIENT_PULSE = 10.0  # PROTOCOL.md 13, "Silence": both sides pulse at least this often


@dataclass(eq=False)
class ClientLink:
    """One client's connection and its computations (by the client's comp_id)."""

    conn: Connection
    comps: dict[int, SharedComp] = field(default_factory=dict)
    last_heard: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"{self.conn.peer_name} at {self.conn.peer[0]}:{self.conn.peer[1]}"

    def send(self, message: Message, payload: Outgoing = b"") -> None:
        # The connection's end is handled where serve() returns.
        with contextlib.suppress(ConnectionClosed):
            self.conn.send_nowait(message, payload)

    def forget(self, comp: SharedComp) -> None:
        if self.comps.get(comp.comp_id) is comp:
            del self.comps[comp.comp_id]

    def notice(self, text: str) -> None:
        log.warning("client %s: %s", self.name, text)
        self.send(Notice(level="error", text=clip(text)))


async def serve_client(sched: Scheduler, conn: Connection) -> None:
    """Serve one SharedJobCluster until its connection ends."""
    link = ClientLink(conn)
    log.info("client %s connected", link.name)
    pulses = sched.tasks.start(_keepalive(link), name=f"pulses to {link.name}")
    reason = "connection closed"
    try:
        reason = await conn.serve_until_end(
            lambda msg, payload: _on_message(sched, link, msg, payload),
            log=log,
            peer=f"client {link.name}",
            side="scheduler",
        )
    finally:
        pulses.cancel()
        await conn.close()
        _gone(sched, link, reason)


def _gone(sched: Scheduler, link: ClientLink, reason: str) -> None:
    for comp in list(link.comps.values()):
        comp.client = None
        if comp.start is None:
            sched.drop(comp, "client gone before starting its computation")
            continue
        if not comp.closing:
            log.warning(
                "client %s of computation %s is gone (%s): its %d job(s) go on, their "
                "results are kept for recover_jobs",
                link.name,
                comp.name,
                reason,
                sched.engine.live(comp.sched_id),
            )
        sched.store_unacked(comp)
        sched.maybe_finish(comp.sched_id)
    link.comps.clear()
    log.info("client %s disconnected", link.name)


def _on_message(
    sched: Scheduler, link: ClientLink, msg: Message, payload: Payload
) -> Awaitable[None] | None:
    link.last_heard = time.monotonic()
    if isinstance(msg, Pulse):
        return None
    if isinstance(msg, SharedComputation):
        _open(sched, link, msg)
        return None
    comp = link.comps.get(getattr(msg, "comp_id", -1))
    if comp is None:
        if isinstance(msg, JobAck | FileAck):
            return None  # for a computation that ended meanwhile
        link.notice(f"{msg.type} names a computation this client did not open")
        return None
    if isinstance(msg, SharedSubmit):
        _submit(sched, link, comp, msg, payload)
    elif isinstance(msg, JobAck):
        sched.client_acked(comp, msg.job_ids)
    elif isinstance(msg, FilePut):
        refused = _too_big(sched, link, msg.path, msg.size)
        if refused is not None:
            # As a node does with a file it refuses: the job that needs it, or the
            # computation on every node, fails with the reason, rather than run without it.
            if msg.job_id is not None:
                comp.refused_files.setdefault(msg.job_id, refused)
            elif comp.setup_error is None:
                comp.setup_error = refused
            return None
        if msg.job_id is not None:
            comp.job_files.setdefault(msg.job_id, []).append((msg, bytes(payload)))
            return None
        return _dependency(sched, link, comp, msg, payload)
    elif isinstance(msg, ComputationStart):
        return _start(sched, link, comp, payload)
    elif isinstance(msg, NodeAllocation):
        _allocate(sched, link, comp, msg, payload)
    elif isinstance(msg, JobCancel):
        if comp.opened:
            sched.handle(CancelRequested(comp.sched_id, tuple(msg.job_ids)))
    elif isinstance(msg, SharedFilePut):
        if _too_big(sched, link, msg.path, msg.size) is None:
            sched.file_to_node(link, comp, msg, payload)
        else:
            link.send(FileAck(comp_id=comp.comp_id, req=msg.req, error="over --max_file_size"))
    elif isinstance(msg, FileAck):
        sched.file_acked_by_client(msg)
    elif isinstance(msg, CloseComputation):
        comp.closing = True
        comp.terminate = comp.terminate or msg.terminate
        if comp.opened:
            sched.handle(ComputationClosed(comp.sched_id, msg.terminate))
        if comp.start is None:
            sched.drop(comp, "closed before it started")
        sched.maybe_finish(comp.sched_id)
    else:
        link.notice(f"unexpected message {msg.type} from a client")
    return None


def _open(sched: Scheduler, link: ClientLink, msg: SharedComputation) -> None:
    if msg.comp_id in link.comps:
        link.notice(f"computation {msg.comp_id} is already open on this connection")
        return
    if sched.closing:
        link.notice("scheduler is shutting down")
        return
    taken = set(sched.comps) | sched.previous_ids
    sched_id = new_sched_id(taken)
    try:
        record = sched.store.open(
            sched_id, msg.comp_id, msg.name, msg.kind, f"{link.conn.peer[0]}:{link.conn.peer[1]}"
        )
    except OSError as exc:
        link.notice(f"scheduler cannot record computation {msg.name!r}: {exc}")
        return
    comp = SharedComp(
        sched_id=sched_id,
        comp_id=msg.comp_id,
        name=msg.name,
        kind=msg.kind,
        dest_path=msg.dest_path,
        cleanup=msg.cleanup,
        reentrant=msg.reentrant,
        exclusive=msg.exclusive,
        client=link,
        record=record,
    )
    sched.comps[sched_id] = comp
    link.comps[msg.comp_id] = comp
    log.info(
        "computation %s (%d) of client %s opened%s",
        msg.name,
        sched_id,
        link.name,
        " (exclusive)" if msg.exclusive else "",
    )
    sched.ping_hosts(msg.hosts)


async def _dependency(
    sched: Scheduler, link: ClientLink, comp: SharedComp, msg: FilePut, payload: Payload
) -> None:
    try:
        target = safe_join(str(comp.record.files_dir), msg.path, "the computation's directory")
        await asyncio.to_thread(store_file, target, payload, msg.mode, msg.mtime)
    except (UnsafePathError, OSError) as exc:
        link.notice(f"scheduler refused file {msg.path!r}: {exc}")
        return
    comp.files = [f for f in comp.files if f.path != msg.path]
    comp.files.append(DepFile(msg.path, msg.size, msg.mode, msg.mtime))


def _too_big(sched: Scheduler, link: ClientLink, path: str, size: int) -> str | None:
    """Why the file is refused (the client is told), or None if it may pass."""
    limit = sched.settings.max_file_size
    if limit and size > limit:
        reason = (
            f"file {path!r} of {size} bytes is over the scheduler's --max_file_size of "
            f"{limit} bytes"
        )
        link.notice(f"{reason}: not sent to the nodes")
        return reason
    return None


async def _start(sched: Scheduler, link: ClientLink, comp: SharedComp, payload: Payload) -> None:
    if comp.start is not None:
        link.notice(f"computation {comp.name!r} was already started")
        return
    start = bytes(payload)
    try:
        await asyncio.to_thread(comp.record.save_start, start)
    except OSError as exc:
        link.notice(f"scheduler cannot record computation {comp.name!r}: {exc}")
        return
    if comp.dropped:
        return
    comp.start = start
    link.send(
        SharedStatus(
            comp_id=comp.comp_id,
            state="accepted",
            sched_id=comp.sched_id,
            pulse_interval=sched.settings.pulse_interval,
        )
    )
    comp.opened = True
    sched.handle(
        ComputationOpened(
            comp.sched_id, comp.reentrant, sched.settings.pulse_interval, comp.exclusive
        )
    )
    sched.offer_comp(comp)


def _allocate(
    sched: Scheduler, link: ClientLink, comp: SharedComp, msg: NodeAllocation, payload: Payload
) -> None:
    key = (msg.ip_addr, msg.port)
    node = sched.nodes.get(key)
    if msg.cpus == 0 or comp.closing or comp.start is None:
        return
    if node is None:
        link.notice(f"node {key[0]}:{key[1]} is not connected to the scheduler")
        return
    if key in comp.setup:
        return  # already set up: its CPUs stay as they are (set_node_cpus, documented)
    try:
        own = own_setup(sched, link, comp, msg, payload)
    except ValueError as exc:
        # That node could not run the computation as its client meant: not used.
        link.notice(f"node {key[0]}:{key[1]} not set up: {exc}")
        comp.own.pop(key, None)
        tell(comp, node, "setup_failed", str(exc))
        return
    if own is None:
        comp.own.pop(key, None)
    else:
        comp.own[key] = own
    set_up(sched, comp, node, msg.cpus)


def own_setup(
    sched: Scheduler, link: ClientLink, comp: SharedComp, msg: NodeAllocation, payload: Payload
) -> OwnSetup | None:
    """The node's own set-up carried by ``msg`` (PROTOCOL.md 13, "Per-node set-up"), or
    None when it has none (the common one is used).

    Raises:
        ValueError: the payload does not match the sizes, or a file is over
            ``--max_file_size`` (as a common one would be, the node is not set up without it).
    """
    if msg.start is None and not msg.files:
        return None
    sizes = [msg.start or 0] + [size for _, size, _, _ in msg.files]
    if sum(sizes) != len(payload):
        raise ValueError(
            f"sched.allocate's payload of {len(payload)} bytes does not match its sizes"
        )
    data = bytes(payload)
    start = None if msg.start is None else data[: msg.start]
    at = msg.start or 0
    files = []
    for path, size, mode, mtime in msg.files:
        refused = _too_big(sched, link, path, size)
        if refused is not None:
            raise ValueError(refused)
        put = FilePut(comp_id=comp.sched_id, path=path, size=size, mode=mode, mtime=mtime)
        files.append((put, data[at : at + size]))
        at += size
    return OwnSetup(start, files)


def _submit(
    sched: Scheduler, link: ClientLink, comp: SharedComp, msg: SharedSubmit, payload: Payload
) -> None:
    total = sum(size for _, size in msg.jobs)
    if total != len(payload) or not comp.opened or comp.closing:
        why = (
            "its payload does not match the jobs' sizes"
            if total != len(payload)
            else "the computation is not started or is closing"
        )
        link.notice(f"sched.submit of {len(msg.jobs)} job(s) refused: {why}")
        return
    pinned = {job_id: (host, port) for job_id, host, port in msg.pinned}
    view = memoryview(payload)
    specs = []
    ended: list[tuple[int, str, str]] = []
    at = 0
    for job_id, size in msg.jobs:
        if job_id in comp.args:
            link.notice(f"job id {job_id} is already in use: job ignored")
            at += size
            continue
        refused = comp.refused_files.pop(job_id, None)
        if refused is not None:
            comp.job_files.pop(job_id, None)
            ended.append((job_id, "terminated", f"a file of this job was refused: {refused}"))
            at += size
            continue
        comp.args[job_id] = view[at : at + size]
        at += size
        specs.append(JobSpec(job_id, size, pinned.get(job_id)))
    if ended:
        link.send(SharedEnded(comp_id=comp.comp_id, jobs=ended))  # type: ignore[arg-type]
    try:
        sched.handle(JobsSubmitted(comp.sched_id, tuple(specs)))
    except EngineError as exc:
        link.notice(f"jobs refused: {exc}")


async def _keepalive(link: ClientLink) -> None:
    # A client whose host vanished leaves a connection that never ends by itself: its
    # silence ends it, as a node's does (its computation then goes on without it).
    limit = dead_after(CLIENT_PULSE)
    while True:
        await asyncio.sleep(CLIENT_PULSE)
        silent = time.monotonic() - link.last_heard
        if silent > limit:
            link.conn.fail(ConnectionClosed(f"client silent for {silent:.0f} s"))
            return
        link.send(Pulse())
