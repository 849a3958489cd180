"""Recovery through the scheduler: from the nodes after a restart, and for
``dispy.recover_jobs`` (PROTOCOL.md section 13, "Recovery").

Toward nodes (:func:`recover_from_nodes`): a restarted scheduler knows, from its store, the
computations it had and the nodes that ran them. It is no longer their peer (its old
connection died with it), so it asks each node as a recovering client would (section 9):
a ``recover`` connection with the node secret, ``recover.request {comp_id: sched_id}``,
every result stored and then acknowledged. Jobs still running are waited for until
``timeout``, then cancelled: a node stays with the old session, refusing this scheduler,
until its last orphaned computation ends, so the restarted scheduler must end them to get
its nodes back.

Toward clients (:func:`serve_recover`): a ``recover`` connection to the scheduler's port
names a ``sched_id`` (the recover file records it); every message on it carries that
``sched_id`` as ``comp_id`` and the client's job ids. The computation is *live* if the
service still runs it (its client gone, its jobs not all done): its pending jobs come from
the service (``LiveLookup``) and its later results from the store, which the service
writes every result of a client-less computation to first. A computation known only from
the store, while :func:`recover_from_nodes` asks its nodes, is served the same way: the
store's own pending set and results. A result is forgotten only once the recovering
client acknowledges it, so a recover connection that breaks loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused, open_connection
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.messages import (
    MAX_IDS,
    CloseComputation,
    ComputationClosed,
    JobAck,
    JobCancel,
    JobDone,
    JobReport,
    RecoverRequest,
    RecoverStatus,
)
from dispy_core.results import Reply, job_done_messages
from dispy_core.security import TLSConfig

if TYPE_CHECKING:
    from dispy_scheduler.store import ComputationStore, Store

log = logging.getLogger("dispy_scheduler")

# Asks ``cs.unasked`` again (recover_from_nodes with the scheduler's node secret and TLS).
AskAgain = Callable[["ComputationStore"], Awaitable[None]]

# Connecting, the handshake, and each answer a peer owes (recover.status, closed).
MSG_TIMEOUT = 10.0
# A node that has not yet noticed the old scheduler's connection is gone refuses with this
# reason for a moment: asked again until then.
STILL_CONNECTED = "still connected"
RETRY_DELAY = 0.2


class ResultSink(Protocol):
    """Told of results as they are stored (``reports`` as in ``jobs.done``)."""

    def __call__(self, reports: Sequence[JobReport], payload: Payload) -> None: ...


class LiveComputation(Protocol):
    """What the service tells of a computation it still runs (its client gone).

    The service stores every end of its jobs (a node's result, or an end it decides, as a
    :func:`dispy_core.results.local_reply`) with :meth:`ComputationStore.store`, which is
    how a recover connection learns of later results.
    """

    @property
    def client_connected(self) -> bool:
        """The computation's client is still connected (recovery is then refused)."""
        ...

    def pending(self) -> list[int]:
        """The client's ids of the jobs not yet ended (queued or running)."""
        ...

    def cancel(self, job_ids: Sequence[int]) -> None:
        """Cancel these jobs (each end is stored, as any other)."""
        ...

    def close(self, terminate: bool) -> None:
        """The recovering client is done: end the computation (cancelling what is left if
        ``terminate``) and remove its record once its last job has ended."""
        ...


# Given a sched_id: the service's live computation, or None.
LiveLookup = Callable[[int], "LiveComputation | None"]


async def recover_from_nodes(
    cs: ComputationStore,
    *,
    node_secret: str,
    tls: TLSConfig,
    timeout: float,
    nodes: Sequence[tuple[str, int]] | None = None,
) -> int:
    """Ask every node ``cs`` used (or those of ``nodes``) for its results (stored, and of
    jobs still running, for up to ``timeout`` seconds), store them, then end the
    computation on the node. Nodes that cannot be asked are left in ``cs.unasked``.

    Returns:
        How many results were stored.
    """
    deadline = time.monotonic() + timeout
    nodes = cs.nodes() if nodes is None else list(nodes)
    if cs.asking is None:  # the service may have marked it already (see Scheduler)
        cs.asking = asyncio.Event()
    answered = [0]
    counts: list[int] = []

    def one_answered() -> None:
        answered[0] += 1
        if answered[0] >= len(nodes) and cs.asking is not None:
            cs.asking.set()

    async def one(node: tuple[str, int]) -> None:
        counts.append(await _recover_node(cs, node, node_secret, tls, deadline, one_answered))

    try:
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(one(node))
    finally:
        asking, cs.asking = cs.asking, None
        asking.set()
    total = sum(counts)
    log.info(
        "computation %s (%d): %d result(s) recovered from %d node(s)",
        cs.name,
        cs.sched_id,
        total,
        len(nodes),
    )
    return total


async def _recover_node(
    cs: ComputationStore,
    node: tuple[str, int],
    secret: str,
    tls: TLSConfig,
    deadline: float,
    answered: Callable[[], None],
) -> int:
    where = f"{node[0]}:{node[1]}"
    told = [False]

    def tell_answered() -> None:
        # Once per node: when it cannot be asked, or once the results it had stored are
        # stored here too. Earlier, a recover_jobs served meanwhile would find those jobs
        # neither pending nor done, report them never placed and close the record, and
        # their results would come too late.
        if not told[0]:
            told[0] = True
            answered()

    try:
        opened = await _ask_node(cs.sched_id, node, secret, tls)
    except BaseException:
        tell_answered()
        raise
    if opened is None:
        cs.unasked.add(node)
        tell_answered()
        return 0
    cs.unasked.discard(node)
    conn, status = opened
    sched_id = cs.sched_id
    pending = set(status.pending)
    running = frozenset(pending)
    cs.node_pending |= pending
    count = 0

    async def take(msg: JobDone, payload: Payload) -> None:
        nonlocal count
        cs.store(msg.jobs, payload)  # on disk before the node may forget them
        count += len(msg.jobs)
        ended = [r.job_id for r in msg.jobs]
        pending.difference_update(ended)
        cs.node_pending.difference_update(ended)
        await conn.send(JobAck(comp_id=sched_id, job_ids=ended))

    try:
        received = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(_loop_time(deadline)):
                while pending or received < status.stored:
                    if received >= status.stored:
                        tell_answered()
                    msg, payload = await conn.recv()
                    if isinstance(msg, JobDone):
                        # results the node had stored (not those of jobs that end now)
                        received += sum(1 for r in msg.jobs if r.job_id not in running)
                        await take(msg, payload)
        tell_answered()
        if pending:
            log.warning(
                "computation %d: %d job(s) still running on %s after the recovery's "
                "timeout: cancelled",
                sched_id,
                len(pending),
                where,
            )
            ids = sorted(pending)
            for at in range(0, len(ids), MAX_IDS):
                await conn.send(JobCancel(comp_id=sched_id, job_ids=ids[at : at + MAX_IDS]))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MSG_TIMEOUT):
                    while pending:
                        msg, payload = await conn.recv()
                        if isinstance(msg, JobDone):
                            await take(msg, payload)
        await conn.send(CloseComputation(comp_id=sched_id, terminate=True))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MSG_TIMEOUT):
                while True:
                    msg, payload = await conn.recv()
                    if isinstance(msg, JobDone):  # a last end, after the close
                        await take(msg, payload)
                    elif isinstance(msg, ComputationClosed):
                        break
    except (ConnectionClosed, ProtocolError) as exc:
        log.warning("recovery of computation %d from node %s: %s", sched_id, where, exc)
    finally:
        tell_answered()
        cs.node_pending.difference_update(pending)
        await conn.close()
    return count


def _loop_time(deadline: float) -> float:
    # asyncio.timeout_at takes the loop's clock; the deadline was taken on monotonic().
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


async def _ask_node(
    sched_id: int, node: tuple[str, int], secret: str, tls: TLSConfig
) -> tuple[Connection, RecoverStatus] | None:
    """A recover connection to ``node`` and its answer, or None (logged)."""
    where = f"{node[0]}:{node[1]}"
    retry_until = time.monotonic() + 2 * MSG_TIMEOUT
    while True:
        conn: Connection | None = None
        try:
            conn = await open_connection(
                node[0],
                node[1],
                secret=secret,
                role="recover",
                name="dispy-scheduler",
                timeout=MSG_TIMEOUT,
                ssl_context=tls.client,
            )
            await conn.send(RecoverRequest(comp_id=sched_id))
            async with asyncio.timeout(MSG_TIMEOUT):
                status, _ = await conn.recv()
            if not isinstance(status, RecoverStatus):
                raise ProtocolError(f"expected recover.status, got {status.type}")
            return conn, status
        except PeerRefused as exc:
            if conn is not None:
                await conn.close()
            if STILL_CONNECTED in exc.reason and time.monotonic() < retry_until:
                await asyncio.sleep(RETRY_DELAY)
                continue
            log.warning("recovery of computation %d: node %s: %s", sched_id, where, exc.reason)
            return None
        except (OSError, TimeoutError, ConnectionClosed, ProtocolError) as exc:
            if conn is not None:
                await conn.close()
            log.warning(
                "recovery of computation %d: cannot reach node %s: %s",
                sched_id,
                where,
                str(exc) or type(exc).__name__,
            )
            return None


async def serve_recover(
    conn: Connection, store: Store, live: LiveLookup, ask_again: AskAgain | None = None
) -> None:
    """Serve one ``recover`` connection of a client (``dispy.recover_jobs``), then close it.

    The exchange is section 9's, with the ``sched_id`` as ``comp_id``: ``recover.status``
    (pending jobs, how many stored results follow), the stored results and then later ones
    as ``jobs.done``, forgotten on ``jobs.ack``; ``jobs.cancel`` and ``computation.close``
    (``computation.closed`` in answer) as a node does. Nodes that could not be asked after
    a restart are asked again first (``ask_again``); while one still cannot be, the
    connection is refused, naming it: the client keeps its recover file and tries later,
    rather than closing the computation here and losing what that node holds.
    """
    msg = await conn.expect(RecoverRequest, MSG_TIMEOUT, log, "recovery request")
    if msg is None:
        return
    sched_id = msg.comp_id
    try:
        comp = live(sched_id)
        if comp is not None and comp.client_connected:
            await conn.refuse("the computation's client is still connected")
            return
        if sched_id in store.recovering:
            await conn.refuse("the computation is being recovered by another connection")
            return
        store.recovering.add(sched_id)
        try:
            unreachable = None if comp is not None else await _unasked(store, sched_id, ask_again)
            if unreachable:
                await conn.refuse(
                    f"{unreachable}, which ran this computation, cannot be reached now and "
                    "may hold its results: try again once it is back"
                )
                return
            await _serve(conn, store, sched_id, comp)
        finally:
            store.recovering.discard(sched_id)
    except (ConnectionClosed, ProtocolError) as exc:
        log.info("recovery of computation %d ended: %s", sched_id, exc)
    finally:
        await conn.close()


async def _unasked(store: Store, sched_id: int, ask_again: AskAgain | None) -> str:
    """The nodes of a computation known from the store that cannot be asked (after asking
    those not asked yet once more), as text; empty when every node answered."""
    cs = store.get(sched_id)
    if cs is None:
        return ""
    if cs.asking is not None:  # the restart's own asking first
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cs.asking.wait(), 3 * MSG_TIMEOUT)
    if cs.unasked and ask_again is not None:
        await ask_again(cs)
    if not cs.unasked:
        return ""
    names = ", ".join(f"{host}:{port}" for host, port in sorted(cs.unasked))
    return f"node {names}" if len(cs.unasked) == 1 else f"nodes {names}"


async def _serve(
    conn: Connection, store: Store, sched_id: int, comp: LiveComputation | None
) -> None:
    cs = store.get(sched_id)
    if cs is not None and cs.asking is not None:
        # The nodes are being asked (after a restart): their pending jobs first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cs.asking.wait(), 3 * MSG_TIMEOUT)
        cs = store.get(sched_id)
    later: asyncio.Queue[tuple[list[JobReport], bytes]] = asyncio.Queue()

    def sink(reports: Sequence[JobReport], payload: Payload) -> None:
        later.put_nowait((list(reports), bytes(payload)))

    # From here to the subscription nothing awaits: no result falls between the two.
    stored = cs.stored() if cs is not None else []
    if comp is not None:
        pending = set(comp.pending())
    else:
        pending = set(cs.node_pending) if cs is not None else set()
    unsubscribe = cs.subscribe(sink) if cs is not None else None
    try:
        await conn.send(
            RecoverStatus(
                comp_id=sched_id,
                known=cs is not None or comp is not None,
                pending=sorted(pending)[:MAX_IDS],
                stored=len(stored),
            )
        )
        replies = [Reply(r.job_id, r.outcome, r.start, r.end, data) for r, data in stored]
        for message, payloads in job_done_messages(sched_id, replies):
            await conn.send(message, payloads)
        # Owned here: cancelled and awaited before this returns, whatever happens.
        forward = asyncio.ensure_future(_forward(conn, sched_id, later))
        try:
            await _answer(conn, sched_id, cs, comp)
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, ProtocolError):
                await forward
    finally:
        if unsubscribe is not None:
            unsubscribe()


async def _forward(
    conn: Connection, sched_id: int, later: asyncio.Queue[tuple[list[JobReport], bytes]]
) -> None:
    """Send results stored after the start, as they come (until cancelled)."""
    while True:
        reports, payload = await later.get()
        replies: list[Reply] = []
        at = 0
        for r in reports:
            replies.append(Reply(r.job_id, r.outcome, r.start, r.end, payload[at : at + r.size]))
            at += r.size
        for message, payloads in job_done_messages(sched_id, replies):
            await conn.send(message, payloads)


async def _answer(
    conn: Connection,
    sched_id: int,
    cs: ComputationStore | None,
    comp: LiveComputation | None,
) -> None:
    """The recovering client's messages, until its ``computation.close``."""
    while True:
        msg, _ = await conn.recv()
        if isinstance(msg, JobAck):
            if cs is not None:
                cs.forget(msg.job_ids)
        elif isinstance(msg, JobCancel):
            if comp is not None:
                comp.cancel(msg.job_ids)
        elif isinstance(msg, CloseComputation):
            if comp is not None:
                comp.close(msg.terminate)
            elif cs is not None:
                cs.close()
            await conn.send(ComputationClosed(comp_id=sched_id))
            log.info("computation %d recovered by %s", sched_id, conn.peer_name)
            return
        # Anything else has no meaning on a recover connection: ignored, as a node does.
