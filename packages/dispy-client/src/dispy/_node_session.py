"""One node's connection to the cluster: its handshake, its messages, its keepalive.

A node connects to the client and introduces itself (``node.info``); the cluster's
:class:`~dispy.nodes.NodeAllocate` objects choose its CPUs, the computation and its files
are sent, and from then on each message of the node goes to the cluster's scheduling shell
(:mod:`dispy._shell`) in the loop turn it arrives in. When the connection ends, for whatever
reason, the shell hears it once (``_node_lost``); a bug on this side while handling one
node's message ends only that node's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispy._depends import FileSpec, own_setup
from dispy.nodes import DispyNode, DispyNodeAvailInfo, cpus_for, find_allocation
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.config import DEFAULT_PULSE
from dispy_core.engine import NodeCpusChanged, NodeHeard, NodeReady
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Outgoing, Payload
from dispy_core.protocol.jobs import NodeStatus
from dispy_core.protocol.messages import (
    NOT_WANTED,
    CloseComputation,
    ComputationClosed,
    ComputationFailed,
    ComputationReady,
    ComputationSetup,
    ComputationStart,
    CpusSet,
    FileAck,
    FilePut,
    JobDone,
    JobProvisional,
    JobStarted,
    Message,
    NodeInfo,
    Notice,
    Pulse,
    clip,
)

if TYPE_CHECKING:
    from dispy._core import ClusterCore

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]


@dataclass(eq=False)
class NodeSession:
    """One node's connection and what the shell keeps about it (the engine keeps the
    rest: its jobs, depth and when it was last heard)."""

    key: NodeKey
    conn: Connection
    node: DispyNode
    ready: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    total_cpus: int = 0
    zombie_interval: float = 3600.0
    cpus_waiter: asyncio.Future[int] | None = None
    acks: list[int] = field(default_factory=list)
    file_waiters: dict[int, asyncio.Future[str | None]] = field(default_factory=dict)


def _per_node(core: ClusterCore, key: NodeKey) -> tuple[list[FileSpec], Outgoing]:
    """The files and the computation.start payload for the node known as ``key``.

    A NodeAllocate's own ``depends`` and ``setup_args`` (set in its constructor, or by
    its ``allocate()`` just before this) go to its nodes only, so the bundle is pickled
    again for such a node; other nodes share the cluster's.

    Raises:
        DependencyError: a per-node dependency cannot be read.
    """
    opts = core.opts
    alloc = find_allocation(opts.nodes, key[0], key[1], opts.node_port)
    depends = list(alloc.depends) if alloc is not None else []
    setup_args = core.resetup_args.get(key, alloc.setup_args if alloc is not None else ())
    if not depends and not setup_args:
        return opts.files, opts.start_payload
    files, start = own_setup(opts.bundle, depends, tuple(setup_args))
    return opts.files + files, opts.start_payload if start is None else start


async def resetup(
    core: ClusterCore, key: NodeKey, setup_args: tuple[Any, ...] | None, terminate: bool
) -> int:
    """Close the computation on the node known as ``key`` and set it up again (0; -1: the
    node does not serve this cluster).

    As in dispy 4.15: no new job goes there meanwhile (queued jobs wait, or go to other
    nodes); its running jobs finish first unless ``terminate``; the computation's process
    there ends (``cleanup`` runs, setup's globals are gone); then the node is asked again
    (``allocate()`` too) and ``setup`` runs with ``setup_args`` (None: the NodeAllocate's).
    """
    session = core.sessions.get(key)
    if session is None or not session.ready or core._closing:
        return -1
    if setup_args is not None:
        core.resetup_args[key] = setup_args
    # The engine stops placing jobs there; the node is not told (its CPUs stay as they are).
    core._apply(core._handle(NodeCpusChanged(key, core.comp_id, 0)))
    if not terminate:
        # Jobs sent ahead count too: closing would cancel those that are not reentrant.
        while core.sessions.get(key) is session:
            alloc = core.engine.allocation(core.comp_id, key)
            if alloc is None or not alloc.placed:
                break
            await asyncio.sleep(0.05)
    if core.sessions.get(key) is session:
        with contextlib.suppress(ConnectionClosed):
            session.conn.send_nowait(CloseComputation(comp_id=core.comp_id, terminate=terminate))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.closed.wait(), core.opts.msg_timeout)
        await session.conn.close()
    # The node is free again: the next ping round (now) sets the computation up there anew.
    core._ping_round()
    return 0


def _cpus_for(
    core: ClusterCore, key: NodeKey, info: NodeInfo, avail: DispyNodeAvailInfo | None
) -> int:
    """The CPUs the cluster's NodeAllocate gives the node known as ``key`` (0: not used)."""
    opts = core.opts
    ip_addr, port = key
    if key in core.released:
        return 0
    return cpus_for(
        opts.nodes,
        opts.node_port,
        core.owner,
        ip_addr=ip_addr,
        port=port,
        name=info.name,
        cpus=info.cpus,
        avail=avail,
        platform=info.platform,
    )


async def serve_node(
    core: ClusterCore,
    conn: Connection,
    listed_as: NodeKey | None = None,
    info: NodeInfo | None = None,
) -> None:
    """Introduce the computation to a node that connected (or that the client dialed at the
    listed address ``listed_as``, its ``info`` received already), then serve it until it
    goes.

    A dialed node is known by the address it was dialed at, not the one it reports: that
    is where this client reaches it (recovery connects there), and two nodes behind two
    forwards may both report 127.0.0.1:51348.
    """

    def refused(reason: str) -> None:
        # kept for the no-node warning (a node serving a scheduler says so, say)
        core.refusals[str(conn.peer[0])] = reason

    if info is None:
        info = await conn.expect(NodeInfo, core.opts.msg_timeout, log, "node introduction", refused)
    if info is None:
        return
    key: NodeKey = listed_as or (info.ip_addr, info.port)
    if core._closing:
        await conn.refuse("cluster is closing")
        return
    if key in core.sessions:
        await conn.refuse("this cluster already has a connection to the node")
        return
    avail = DispyNodeAvailInfo._from_wire(info.avail)
    cpus = _cpus_for(core, key, info, avail)
    if cpus <= 0:
        log.info("node %s (%s:%d) not used by this cluster", info.name, *key)
        await conn.refuse(NOT_WANTED)
        return
    cpus = min(cpus, info.cpus)
    try:
        files, start_payload = _per_node(core, key)
    except ValueError as exc:  # DependencyError, SerializationError
        log.error("node %s (%s:%d) not used: %s", info.name, *key, exc)
        await conn.refuse(clip(f"per-node setup: {exc}", 1000))
        return
    node = core.known_nodes.get(key)
    if node is None:
        node = DispyNode(key[0], key[1], info.name, cpus, info.platform)
        core.known_nodes[key] = node
    node.cpus = cpus
    node.avail_info = avail
    node.update_time = time.time()
    session = NodeSession(
        key, conn, node, total_cpus=info.cpus, zombie_interval=info.zombie_interval
    )
    core.sessions[key] = session
    opts = core.opts
    try:
        conn.send_nowait(
            ComputationSetup(
                comp_id=core.comp_id,
                name=opts.name,
                kind=opts.kind,  # type: ignore[arg-type]
                cpus=cpus,
                dest_path=opts.dest_path,
                cleanup=opts.cleanup,
                pulse_interval=opts.pulse_interval,
            )
        )
        for spec in files:
            conn.send_nowait(core._file_message(spec), spec.data)
            await conn.drain()
        await conn.send(ComputationStart(comp_id=core.comp_id), start_payload)
        keepalive = core._tasks.start(_keepalive(core, session))
        try:
            await conn.serve(lambda msg, payload: _on_message(core, session, msg, payload))
            await conn.close()
        finally:
            keepalive.cancel()
    except ConnectionClosed as exc:
        core._node_lost(session, f"connection lost: {exc}")
    except PeerRefused as exc:
        core._node_lost(session, exc.reason)
    except ProtocolError as exc:
        await conn.refuse(clip(str(exc), 1000))
        core._node_lost(session, str(exc))
    except Exception as exc:
        # A bug on this side while handling the node's messages: this node's connection
        # ends (its jobs are resubmitted or cancelled), the cluster goes on.
        log.exception("node %s: error while handling its messages", session.node.name)
        reason = f"client error: {type(exc).__name__}: {exc}"
        await conn.refuse(clip(reason, 1000))
        core._node_lost(session, reason)
    finally:
        session.closed.set()
        core._node_lost(session, "connection closed")


def _on_message(
    core: ClusterCore, session: NodeSession, msg: Message, payload: Payload
) -> Awaitable[None] | None:
    # Runs inside the connection's protocol callback: results are handled in the same loop
    # turn they arrive in. Messages that are no engine event still tell it the node lives.
    if isinstance(msg, JobDone):
        core._job_replies(session, msg, payload)
    elif isinstance(msg, JobStarted):
        core._jobs_started(session, msg.job_ids)
    elif isinstance(msg, Pulse):
        session.node.avail_info = DispyNodeAvailInfo._from_wire(msg.avail)
        session.node.update_time = time.time()
        core._status(NodeStatus.AvailInfo, session.node, None)
        _heard(core, session)
    elif isinstance(msg, ComputationReady):
        session.ready = True
        core.recovery.node(session.key)
        session.node.cpus = msg.cpus
        log.info("node %s (%s:%d) ready with %d CPU(s)", session.node.name, *session.key, msg.cpus)
        if core.sessions.get(session.key) is session:
            core._defer(NodeReady(session.key, core.comp_id, msg.cpus, session.total_cpus))
    elif isinstance(msg, JobProvisional):
        core._provisional(session, msg, payload)
    elif isinstance(msg, FilePut):
        core._tasks.start(core._receive_file(session, msg, payload))
        _heard(core, session)
    elif isinstance(msg, FileAck):
        waiter = session.file_waiters.pop(msg.req, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.error)
        _heard(core, session)
    elif isinstance(msg, CpusSet):
        session.node.cpus = msg.cpus
        if core.sessions.get(session.key) is session:
            core._defer(NodeCpusChanged(session.key, core.comp_id, msg.cpus))
        if session.cpus_waiter is not None and not session.cpus_waiter.done():
            session.cpus_waiter.set_result(msg.cpus)
    elif isinstance(msg, ComputationFailed):
        log.warning(
            "node %s (%s:%d) cannot run %s: %s",
            session.node.name,
            *session.key,
            core.opts.name,
            msg.reason,
        )
        core.refusals[f"{session.key[0]}:{session.key[1]}"] = msg.reason
        session.node.error = msg.reason
        core._status(NodeStatus.SetupFailed, session.node, None)
        core._node_lost(session, msg.reason)
        session.conn.finish()
    elif isinstance(msg, ComputationClosed):
        session.closed.set()
        core._node_lost(session, "closed")
        session.conn.finish()
    elif isinstance(msg, Notice):
        level = logging.ERROR if msg.level == "error" else logging.WARNING
        log.log(level, "node %s: %s", session.node.name, msg.text)
        _heard(core, session)
    return None


def _heard(core: ClusterCore, session: NodeSession) -> None:
    if core.sessions.get(session.key) is session:
        core._apply(core._handle(NodeHeard(session.key)))


async def _keepalive(core: ClusterCore, session: NodeSession) -> None:
    # Often enough for the node's zombie_interval and for its lease on queued jobs (it
    # starts them only while it hears from us within dead_after()).
    pulse = core.opts.pulse_interval or DEFAULT_PULSE
    interval = max(min(session.zombie_interval / 3, pulse), 0.5)
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(ConnectionClosed):
            session.conn.send_nowait(Pulse())
