"""Reaching listed nodes over TCP: a client or scheduler dials a node that has not
connected back (PROTOCOL.md 6.2, "The TCP dial").

A node listed by address (a client's ``(host, port)`` or NodeAllocate, a scheduler's
``-n host[:port]``) is normally found by a unicast UDP ping, after which the node connects
back. SSH ``-L`` forwards, many firewalls and TCP proxies carry no UDP, so such a node would
never be found; the client or scheduler then opens TCP to the listed ``host:port`` itself,
authenticates as the connector (the same SPAKE2 handshake; the node is the acceptor, with
its admission limits), reads the node's ``node.info`` and hands the connection to whatever
serves a node that connected back.

Theory of operation
-------------------
The owner calls :meth:`Dialer.dial_all` on every ping round and runs
:meth:`Dialer.early_rounds` as a task, which dials at ``DIAL_TIMES`` after the start
(whether or not another node has joined, which stops the early re-pings). Nothing is
dialed before ``DIAL_AFTER``: a node that hears the ping has connected back by then, and a
dial would only be refused by a node busy with us. A target is not dialed while

* the owner holds a session keyed by the target (``held``: the node connected back and
  reports that address, or a dial of the target is being served: the owner keys a dialed
  node by the address it dialed, which is where it reaches the node, not by the address
  the node reports, which behind a forward is its own and may be the same, say
  127.0.0.1:51348, for two nodes behind two forwards), or the node a dial of this target
  turned out to be when it refused it (below),
* a dial of it is in flight or its dialed session is still being served, or
* a dial of it ended less than ``DIAL_RETRY`` seconds ago (a node not started yet, busy
  with someone else, or not wanted).

A node reached both ways is one session: a node serves one peer at a time and refuses a
second connection from us (``BUSY`` or ``SERVING_SCHEDULER``), and the owner refuses a
second connection from a node whose reported address and port it already holds. A dial so
refused by a node whose handshake name is that of a node the owner holds (``held_as``) is
taken to be that node: the target is not dialed again while that session lasts (so no
refusal every ping round, and no warning). Two nodes of one name would only delay the dial
of the second until the first one's session ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
from dispy_core.aio.tasks import TaskOwner
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.messages import BUSY, SERVING_SCHEDULER, NodeInfo

NodeKey = tuple[str, int]
DIAL_AFTER = 1.0  # seconds after start: connect-back had its chance first
DIAL_TIMES = (DIAL_AFTER, 2.5, 4.5)  # seconds after start: the early dial rounds
DIAL_RETRY = 1.0  # seconds between the end of a target's dial and the next one
_ALREADY_SERVED = (BUSY, SERVING_SCHEDULER)


class Dialer:
    """Dials listed nodes that have not connected back (see the module docstring).

    ``connect(host, port)`` opens and authenticates the connection; ``serve(conn, target,
    info)`` serves a node that answered with ``info``, keyed by ``target``; ``held(key)``
    says whether the owner holds a session keyed ``key``; ``held_as(name)`` gives the key
    of a held node of that handshake name, if any; ``refused(where, reason)`` hears why a
    dialed node was not usable (a client keeps it for its no-node warning).
    """

    def __init__(
        self,
        *,
        tasks: TaskOwner,
        logger: logging.Logger,
        connect: Callable[[str, int], Awaitable[Connection]],
        serve: Callable[[Connection, NodeKey, NodeInfo], Awaitable[None]],
        held: Callable[[NodeKey], bool],
        held_as: Callable[[str], NodeKey | None],
        refused: Callable[[str, str], None] | None = None,
        timeout: float,
    ) -> None:
        self._tasks = tasks
        self._log = logger
        self._connect = connect
        self._serve = serve
        self._held = held
        self._held_as = held_as
        self._refused = refused
        self._timeout = timeout
        self._started = time.monotonic()
        self._active: set[NodeKey] = set()
        self._next: dict[NodeKey, float] = {}
        self._same: dict[NodeKey, NodeKey] = {}  # target -> key of the held node it is

    def start(self) -> None:
        """The owner started now: the dial times count from here."""
        self._started = time.monotonic()

    async def early_rounds(self, targets: Callable[[], Sequence[NodeKey]]) -> None:
        """Dial ``targets()`` at ``DIAL_TIMES`` after :meth:`start` (run it as a task)."""
        for at in DIAL_TIMES:
            await asyncio.sleep(max(0.0, self._started + at - time.monotonic()))
            self.dial_all(targets())

    def dial_all(self, targets: Sequence[NodeKey]) -> None:
        """Dial each target not connected, not being dialed, not dialed just now."""
        now = time.monotonic()
        if now - self._started < DIAL_AFTER:
            return
        for target in dict.fromkeys(targets):
            if target in self._active or self._held(target):
                continue
            same = self._same.get(target)
            if same is not None and self._held(same):
                continue
            if self._next.get(target, 0.0) > now:
                continue
            self._active.add(target)
            self._tasks.start(self._dial(target), name=f"dial {target[0]}:{target[1]}")

    async def _dial(self, target: NodeKey) -> None:
        where = f"{target[0]}:{target[1]}"
        try:
            try:
                conn = await self._connect(*target)
            except ProtocolError as exc:
                # A peer that does not authenticate with us (another secret, version, TLS).
                self._log.info("node at %s (dialed over TCP) refused: %s", where, exc)
                if self._refused is not None:
                    self._refused(where, str(exc))
                return
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                reason = str(exc) or type(exc).__name__
                self._log.debug("cannot dial node at %s: %s", where, reason)
                return
            info = await self._introduction(conn, target)
            if info is not None:
                self._log.debug("dialed node %s at %s over TCP", info.name, where)
                await self._serve(conn, target, info)
        finally:
            self._active.discard(target)
            self._next[target] = time.monotonic() + DIAL_RETRY

    async def _introduction(self, conn: Connection, target: NodeKey) -> NodeInfo | None:
        """The dialed node's ``node.info``, or None (connection closed, reason logged)."""
        where = f"{target[0]}:{target[1]}"
        try:
            async with asyncio.timeout(self._timeout):
                msg, _ = await conn.recv()
        except PeerRefused as exc:
            same = self._held_as(conn.peer_name) if exc.reason in _ALREADY_SERVED else None
            if same is not None:
                self._same[target] = same
                self._log.debug("node at %s is node %s:%d, connected already", where, *same)
            else:
                self._log.info("node at %s (dialed over TCP) refused: %s", where, exc.reason)
                if self._refused is not None:
                    self._refused(where, exc.reason)
            await conn.close()
            return None
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            self._log.warning(
                "node introduction from %s at %s failed: %r", conn.peer_name, where, exc
            )
            await conn.close()
            return None
        if not isinstance(msg, NodeInfo):
            await conn.refuse(f"expected node.info, got {msg.type}")
            return None
        return msg


__all__ = ["DIAL_AFTER", "DIAL_RETRY", "DIAL_TIMES", "Dialer"]
