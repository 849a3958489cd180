"""Reaching listed nodes over TCP: the client dials a node that has not connected back.

A node listed by address (a host, ``(host, port)`` or a NodeAllocate with a port) is
normally found by a unicast UDP ping, after which the node connects back. SSH ``-L``
forwards, many firewalls and TCP proxies carry no UDP, so such a node would never be found;
the client then opens TCP to the listed ``host:port`` itself (PROTOCOL.md 6.2, "The TCP
dial"), authenticates as the connector with role ``client`` (the same SPAKE2 handshake, the
node the acceptor with its admission limits), and serves the node exactly as one that
connected back (:func:`dispy._node_session.serve_node`).

Theory of operation
-------------------
The dialer runs at ``DIAL_TIMES`` after the cluster started (whether or not another node
has joined, which stops the early re-pings) and then on every ping round (``ping_interval``,
the no-node warnings, ``allocate()``), never before ``DIAL_AFTER``: a node that hears the
ping has connected back by then, and a dial would only be refused by a node busy with us.
A target is not dialed while

* a session has the target's address as its key (the node connected back, or was dialed
  and reports the listed address itself), or the key of the node a dial of this target
  last turned out to be (below),
* a dial of it is in flight or its dialed session is still being served, or
* its last dial failed less than ``DIAL_RETRY`` seconds ago (a node not started yet, busy
  with another client, or not wanted by this cluster).

A node reached both ways is one session: the node serves one peer at a time and refuses a
second connection from us as busy, and the client refuses a second connection from a node
whose reported address and port it already holds. A dial refused as busy by a node whose
handshake name is that of a node this cluster holds is taken to be that node: the target
is not dialed again while that session lasts (so no refusal every ping round, and no
warning); two nodes of one name would only delay the dial of the second until the first
goes. The NodeAllocate the target came from
decides the node's CPUs, matched against the listed address and port, not the address the
node reports (behind a forward, the node knows only its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dispy._node_session import serve_node
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.aio.handshake import open_connection
from dispy_core.protocol.discovery import is_pattern
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.messages import BUSY, NodeInfo

if TYPE_CHECKING:
    from dispy._core import ClusterCore

log = logging.getLogger("dispy")

NodeKey = tuple[str, int]
DIAL_AFTER = 1.0  # seconds after start: connect-back had its chance first
DIAL_TIMES = (DIAL_AFTER, 2.5, 4.5)  # seconds after start: the early dial rounds
DIAL_RETRY = 1.0  # seconds between two dials of one target after a failure


class Dialer:
    """Dials the cluster's listed nodes that have not connected back (see module doc)."""

    def __init__(self, core: ClusterCore) -> None:
        self.core = core
        self._active: set[NodeKey] = set()
        self._next: dict[NodeKey, float] = {}
        self._same: dict[NodeKey, NodeKey] = {}  # target -> key of the node it turned out to be

    def targets(self) -> list[NodeKey]:
        """The listed nodes as ``(address, port)`` (names are resolved at construction)."""
        opts = self.core.opts
        found: dict[NodeKey, None] = {}
        for alloc in opts.nodes:
            if not is_pattern(alloc.ip_addr):
                found[(alloc.ip_addr, alloc.port or opts.node_port)] = None
        return list(found)

    async def early_rounds(self) -> None:
        """Dial at ``DIAL_TIMES`` after the cluster started (run as a task)."""
        for at in DIAL_TIMES:
            await asyncio.sleep(max(0.0, self.core._started + at - time.monotonic()))
            self.dial_all()

    def dial_all(self) -> None:
        """Dial each listed node not connected, not being dialed, not failed just now."""
        core = self.core
        now = time.monotonic()
        if core._closing or now - core._started < DIAL_AFTER:
            return
        for target in self.targets():
            if target in core.sessions or target in self._active:
                continue
            if self._same.get(target) in core.sessions:
                continue
            if self._next.get(target, 0.0) > now:
                continue
            self._active.add(target)
            core._tasks.start(self._dial(target), name=f"dial {target[0]}:{target[1]}")

    async def _dial(self, target: NodeKey) -> None:
        core = self.core
        opts = core.opts
        where = f"{target[0]}:{target[1]}"
        try:
            try:
                conn = await open_connection(
                    target[0],
                    target[1],
                    secret=opts.secret,
                    role="client",
                    name=opts.name,
                    timeout=opts.msg_timeout,
                    ssl_context=opts.tls.client,
                    allocate=core.buffers.take,
                )
            except ProtocolError as exc:
                # Reached a peer that does not authenticate with us: why, for the warning.
                log.info("node at %s (dialed over TCP) refused: %s", where, exc)
                core.refusals[where] = str(exc)
                return
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                log.debug("cannot dial node at %s: %s", where, str(exc) or type(exc).__name__)
                return
            info = await self._introduction(conn, target)
            if info is not None:
                self._same[target] = (info.ip_addr, info.port)
                log.debug("dialed node %s at %s over TCP", info.name, where)
                await serve_node(core, conn, listed_as=target, info=info)
        finally:
            self._active.discard(target)
            # Whatever the outcome, the next dial waits a little: a session that ended
            # was either refused (busy, not wanted) or lost, and a lost node is redialed
            # by the next ping round after that.
            self._next[target] = time.monotonic() + DIAL_RETRY

    async def _introduction(self, conn: Connection, target: NodeKey) -> NodeInfo | None:
        """The dialed node's ``node.info``, or None (connection closed, reason logged)."""
        core = self.core
        where = f"{target[0]}:{target[1]}"
        try:
            async with asyncio.timeout(core.opts.msg_timeout):
                msg, _ = await conn.recv()
        except PeerRefused as exc:
            same = self._held_as(conn.peer_name) if exc.reason == BUSY else None
            if same is not None:
                self._same[target] = same
                log.debug("node at %s is node %s:%d, connected already", where, *same)
            else:
                log.info("node at %s (dialed over TCP) refused: %s", where, exc.reason)
                core.refusals[where] = exc.reason
            await conn.close()
            return None
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            log.warning("node introduction from %s at %s failed: %r", conn.peer_name, where, exc)
            await conn.close()
            return None
        if not isinstance(msg, NodeInfo):
            await conn.refuse(f"expected node.info, got {msg.type}")
            return None
        return msg

    def _held_as(self, name: str) -> NodeKey | None:
        """The key of a node of this name that this cluster holds a session with."""
        for key, session in list(self.core.sessions.items()):
            if session.node.name == name:
                return key
        return None
