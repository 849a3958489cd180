"""Find the dispy nodes that answer a ping, without running anything on them.

A node listed by address is also dialed over TCP after the first third of the wait, as a
cluster does (PROTOCOL.md 6.2, "The TCP dial"), so that a node behind a TCP-only forward
(``ssh -L``, a proxy) is listed too; a node that answers both ways is listed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

from dispy_core import netinfo
from dispy_core.aio.admission import Admission, start_server
from dispy_core.aio.connection import Connection, ConnectionClosed
from dispy_core.aio.fanout import PingSender
from dispy_core.aio.handshake import open_connection
from dispy_core.aio.tasks import TaskOwner
from dispy_core.config import MSG_TIMEOUT, NODE_PORT
from dispy_core.protocol.discovery import is_pattern
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.fanout import Target, plan_pings
from dispy_core.protocol.messages import NOT_WANTED, NodeInfo
from dispy_core.security import TLSConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundNode:
    """A node that answered: its announced address, port and what it offers."""

    ip_addr: str
    port: int
    name: str
    cpus: int
    platform: str
    version: str
    error: str | None = None  # set when it answered but the handshake failed


async def discover(
    nodes: list[str | tuple[str, int]],
    *,
    ip_addr: str,
    node_port: int = NODE_PORT,
    secret: str = "",
    certfile: str | None = None,
    keyfile: str | None = None,
    timeout: float = 2.0,
) -> list[FoundNode]:
    """Ping ``nodes`` (addresses, ``(host, port)`` or ``'*'`` patterns) and collect answers;
    dial the addresses over TCP too.

    Nodes that answer are told they are not needed, so they stay free for real clients.
    """
    tls = TLSConfig(certfile, keyfile)
    found: list[FoundNode] = []
    token = os.urandom(12).hex()

    admission = Admission()

    async def introduced(conn: Connection, dialed: tuple[str, int] | None = None) -> None:
        # The node's node.info, listed (a dialed node at the address it was dialed at, as a
        # cluster knows it); then the node is told it is not needed.
        try:
            async with asyncio.timeout(MSG_TIMEOUT):
                msg, _ = await conn.recv()
            if isinstance(msg, NodeInfo):
                host, port = dialed or (msg.ip_addr, msg.port)
                found.append(FoundNode(host, port, msg.name, msg.cpus, msg.platform, msg.version))
        except (ProtocolError, TimeoutError, ConnectionClosed):
            pass
        await conn.refuse(NOT_WANTED)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)

        def failed(exc: BaseException) -> None:
            error = str(exc) or type(exc).__name__
            found.append(FoundNode(str(peer[0]), 0, "?", 0, "", "", error))

        conn = await admission.accept(
            reader,
            writer,
            logger=log,
            refused_level=logging.DEBUG,  # reported in the list of nodes instead
            dropped_level=logging.DEBUG,
            on_failure=failed,
            secret=secret,
            role="client",
            name="dispy nodes",
            timeout=MSG_TIMEOUT,
        )
        if conn is not None:
            await introduced(conn)

    async def dial(host: str, port: int) -> None:
        # Only answers count: a node that does not answer (or answers another way, or is
        # busy with our own connect-back) is reported by the ping path, if at all.
        try:
            conn = await open_connection(
                host,
                port,
                secret=secret,
                role="client",
                name="dispy nodes",
                timeout=MSG_TIMEOUT,
                ssl_context=tls.client,
            )
        except (ProtocolError, OSError, TimeoutError, ConnectionClosed) as exc:
            log.debug("cannot dial %s:%d: %s", host, port, exc)
            return
        await introduced(conn, (host, port))

    # The connections being answered; whatever is still in flight at the end gets a second.
    answering = TaskOwner("node discovery", log=log)
    server = await start_server(
        on_connect,
        tasks=answering,
        host=ip_addr,
        port=0,
        ssl_context=tls.server,
        handshake_timeout=MSG_TIMEOUT,
    )
    port = server.sockets[0].getsockname()[1]
    udp: PingSender | None = None
    try:
        # Names are resolved once, here: one that does not resolve is an error.
        targets = [
            Target(host) if is_pattern(host) else Target(netinfo.resolve(host), nport)
            for host, nport in ((n, None) if isinstance(n, str) else n for n in nodes)
        ]
        sends = plan_pings(
            targets,
            cluster=token,
            reply_port=port,
            node_port=node_port,
            ip_addrs=[ip_addr],
            interfaces=netinfo.ipv4_interfaces(),
            route=netinfo.route_to,
        )
        udp = PingSender([ip_addr])
        for round_ in range(3):
            udp.send_all(sends)
            await asyncio.sleep(timeout / 3)
            if round_ == 0:
                for target in targets:
                    if not is_pattern(target.host):
                        answering.start(dial(target.host, target.port or node_port))
    finally:
        if udp is not None:
            udp.close()
        server.close()
        await answering.close(grace=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
    # A node that answered both ways (the ping, then the dial) is listed once.
    unique = {(n.ip_addr, n.port, n.name, n.error): n for n in found}
    return sorted(unique.values(), key=lambda n: (n.ip_addr, n.port))
