"""One node's connection to the scheduler: its introduction, its computations, its messages.

A node connects back to the scheduler's ``--port`` (after a ping, or by itself with
``--scheduler_node``), or the scheduler dials a listed one (PROTOCOL.md 6.2); either way
they authenticate with the node secret (and the node TLS files) and the node introduces
itself (``node.info``). It is then offered to every computation; for each one
whose client takes it (``sched.allocate``), the computation is set up on it under the
scheduler's ``sched_id``: ``computation`` with ``--pulse_interval``, the dependency files
as the client sent them (read from the computation's record on disk) and
``computation.start`` with the client's bundle (or, for a node the client gave a set-up of
its own in ``sched.allocate``, its own bundle and extra files). Everything else the node
sends is handed, in the loop turn it arrives in, to the shell
(:mod:`dispy_scheduler._shell`) or forwarded to the computation's client. When the
connection ends, for whatever reason, the engine hears it once (``NodeLost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.config import DEFAULT_PULSE
from dispy_core.engine import JobsStarted, NodeHeard, NodeLost, NodeReady, ProvisionalReceived
from dispy_core.protocol.framing import Outgoing, Payload
from dispy_core.protocol.messages import (
    ComputationClosed,
    ComputationFailed,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    FileAck,
    FilePut,
    JobDone,
    JobProvisional,
    JobStarted,
    Message,
    NodeInfo,
    Notice,
    Pulse,
    SharedNode,
    clip,
)
from dispy_scheduler._state import NodeKey, SharedComp

if TYPE_CHECKING:
    from dispy_scheduler.service import Scheduler

log = logging.getLogger("dispy_scheduler")


@dataclass(eq=False)
class NodeLink:
    """One node's connection and what the scheduler knows of the node."""

    key: NodeKey
    conn: Connection
    info: NodeInfo

    @property
    def name(self) -> str:
        return f"{self.info.name} ({self.key[0]}:{self.key[1]})"

    def send(self, message: Message, payload: Outgoing = b"") -> None:
        # The connection's end is an event of its own (NodeLost): nothing to do here.
        with contextlib.suppress(ConnectionClosed):
            self.conn.send_nowait(message, payload)

    def abort(self, reason: str) -> None:
        """Close the connection now (the node was declared dead)."""
        self.conn.fail(ConnectionClosed(reason))


async def serve_node(
    sched: Scheduler,
    conn: Connection,
    info: NodeInfo | None = None,
    listed_as: NodeKey | None = None,
) -> None:
    """Take a node that connected (or that the scheduler dialed at ``listed_as``, its
    ``info`` received already), offer it, serve it until its connection ends.

    A dialed node is known by the address it was dialed at (where the scheduler, and
    recovery, reach it), not the one it reports (behind a forward, its own).
    """
    if conn.peer_role != "node":
        await conn.refuse(f"this is a scheduler's node port; a {conn.peer_role} cannot use it")
        return
    if info is None:
        info = await conn.expect(NodeInfo, sched.settings.msg_timeout, log, "node introduction")
    if info is None:
        return
    key: NodeKey = listed_as or (info.ip_addr, info.port)
    if sched.closing:
        await conn.refuse("scheduler is shutting down")
        return
    if key in sched.nodes:
        await conn.refuse("this scheduler already has a connection to the node")
        return
    link = NodeLink(key, conn, info)
    sched.nodes[key] = link
    log.info("node %s with %d CPU(s) joined", link.name, info.cpus)
    sched.offer_node(link)
    keepalive = sched.tasks.start(_keepalive(sched, link), name=f"pulses to {link.name}")
    reason = "connection closed"
    try:
        # A bug on this side while handling the node's messages ends this node's connection
        # (its jobs are resubmitted or cancelled); the scheduler goes on.
        reason = await conn.serve_until_end(
            lambda msg, payload: _on_message(sched, link, msg, payload),
            log=log,
            peer=f"node {link.name}",
            side="scheduler",
        )
    finally:
        keepalive.cancel()
        await conn.close()
        _lost(sched, link, reason)


def _lost(sched: Scheduler, link: NodeLink, reason: str) -> None:
    if sched.nodes.get(link.key) is not link:
        return
    del sched.nodes[link.key]
    log.info("node %s left: %s", link.name, reason)
    if sched.closing:
        # The scheduler stops: the node's jobs run on there, orphaned, and the next run
        # recovers their results from it (as after a kill -9); ending them here (requeued
        # or cancelled, in the store) would lose them.
        return
    sched.handle(NodeLost(link.key, reason))
    # Set-ups the engine never heard of (the node was lost before it was ready).
    for comp in list(sched.comps.values()):
        if link.key in comp.setup and link.key not in comp.ready:
            comp.setup.pop(link.key, None)
            comp.closing_on.discard(link.key)
            tell(comp, link, "abandoned", reason)
        comp.offered.discard(link.key)
        sched.maybe_finish(comp.sched_id)


def tell(comp: SharedComp, link: NodeLink, status: str, reason: str | None) -> None:
    if comp.client is not None:
        comp.client.send(
            SharedNode(
                comp_id=comp.comp_id,
                ip_addr=link.key[0],
                port=link.key[1],
                status=status,  # type: ignore[arg-type]
                reason=clip(reason) if reason else None,
            )
        )


def set_up(sched: Scheduler, comp: SharedComp, link: NodeLink, cpus: int) -> None:
    """Set the computation up on the node with ``cpus`` (at most the node's)."""
    if comp.setup_error is not None:
        # a dependency was refused here: the node could not run it as its client meant
        tell(comp, link, "setup_failed", comp.setup_error)
        return
    cpus = min(cpus, link.info.cpus)
    comp.setup[link.key] = cpus
    sched.tasks.start(_set_up(sched, comp, link, cpus), name=f"set up {comp.name} on {link.name}")


async def _set_up(sched: Scheduler, comp: SharedComp, link: NodeLink, cpus: int) -> None:
    try:
        files = await asyncio.to_thread(_read_files, comp)
    except OSError as exc:
        log.error("computation %s: cannot read its files: %s", comp.name, exc)
        comp.setup.pop(link.key, None)
        tell(comp, link, "setup_failed", f"scheduler cannot read the files: {exc}")
        return
    if comp.setup.get(link.key) != cpus or link.conn.closed or comp.start is None:
        return  # the node or the computation went meanwhile
    # No await from here on: the set-up's frames go out together, in order.
    link.send(
        ComputationSetup(
            comp_id=comp.sched_id,
            name=comp.name,
            kind=comp.kind,  # type: ignore[arg-type]
            cpus=cpus,
            dest_path=comp.dest_path,
            cleanup=comp.cleanup,
            pulse_interval=sched.settings.pulse_interval,
        )
    )
    own = comp.own.get(link.key)
    if own is not None:
        # after the common files: one of the same path replaces the common one there
        files = files + own.files
    for put, data in files:
        link.send(put, data)
    start = comp.start if own is None or own.start is None else own.start
    link.send(ComputationStart(comp_id=comp.sched_id), start)


def _read_files(comp: SharedComp) -> list[tuple[FilePut, bytes]]:
    out = []
    for dep in comp.files:
        with open(comp.file_path(dep), "rb") as f:
            data = f.read()
        put = FilePut(
            comp_id=comp.sched_id, path=dep.path, size=len(data), mode=dep.mode, mtime=dep.mtime
        )
        out.append((put, data))
    return out


def _on_message(
    sched: Scheduler, link: NodeLink, msg: Message, payload: Payload
) -> Awaitable[None] | None:
    # Runs inside the connection's protocol callback, in the turn the message arrives in.
    if isinstance(msg, JobDone):
        sched.results(link, msg, payload)
    elif isinstance(msg, JobStarted):
        sched.handle(JobsStarted(link.key, msg.comp_id, tuple(msg.job_ids)))
    elif isinstance(msg, Pulse):
        sched.handle(NodeHeard(link.key))
    elif isinstance(msg, JobProvisional):
        sched.handle(ProvisionalReceived(link.key, msg.comp_id, msg.job_id))
        comp = sched.comps.get(msg.comp_id)
        if comp is not None and comp.client is not None:
            comp.client.send(JobProvisional(comp_id=comp.comp_id, job_id=msg.job_id), payload)
    elif isinstance(msg, ComputationReady):
        _ready(sched, link, msg)
    elif isinstance(msg, ComputationFailed):
        comp = sched.comps.get(msg.comp_id)
        if comp is not None:
            # The client gets the whole reason (a traceback, often); the log its last line.
            last = next((ln for ln in reversed(msg.reason.splitlines()) if ln.strip()), "")
            log.warning("node %s cannot run %s: %s", link.name, comp.name, last.strip())
            comp.setup.pop(link.key, None)
            comp.ready.discard(link.key)
            tell(comp, link, "setup_failed", msg.reason)
            sched.handle(NodeLost(link.key, msg.reason, msg.comp_id))
            sched.maybe_finish(comp.sched_id)
    elif isinstance(msg, ComputationClosed):
        sched.handle(NodeLost(link.key, "closed", msg.comp_id))
        comp = sched.comps.get(msg.comp_id)
        if comp is not None:
            comp.setup.pop(link.key, None)
            comp.closing_on.discard(link.key)
            sched.maybe_finish(comp.sched_id)
    elif isinstance(msg, FilePut):
        sched.handle(NodeHeard(link.key))
        sched.file_from_node(link, msg, payload)
    elif isinstance(msg, FileAck):
        sched.handle(NodeHeard(link.key))
        sched.file_acked_by_node(msg)
    elif isinstance(msg, Notice):
        level = logging.ERROR if msg.level == "error" else logging.WARNING
        log.log(level, "node %s: %s", link.name, msg.text)
        sched.handle(NodeHeard(link.key))
    else:
        sched.handle(NodeHeard(link.key))
    return None


def _ready(sched: Scheduler, link: NodeLink, msg: ComputationReady) -> None:
    comp = sched.comps.get(msg.comp_id)
    if comp is None or link.key not in comp.setup:
        return
    comp.ready.add(link.key)
    try:
        comp.record.node_used(link.key)
    except OSError as exc:
        log.error("computation %s: cannot record node %s: %s", comp.name, link.name, exc)
    log.info("node %s ready for %s with %d CPU(s)", link.name, comp.name, msg.cpus)
    sched.handle(NodeReady(link.key, comp.sched_id, msg.cpus, link.info.cpus))


async def _keepalive(sched: Scheduler, link: NodeLink) -> None:
    # Often enough for the node's zombie_interval and for its lease on queued jobs (it
    # starts them only while it hears from its peer within dead_after()).
    pulse = sched.settings.pulse_interval or DEFAULT_PULSE
    interval = max(min(link.info.zombie_interval / 3, pulse), 0.5)
    while True:
        await asyncio.sleep(interval)
        link.send(Pulse())
