"""SharedJobCluster: run a computation on nodes that dispy-scheduler shares among clients."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from dispy._callbacks import CallbackRunner
from dispy._compat import (
    ComputationName,
    dispy_port_ports,
    pick,
    refuse_415_positions,
    refuse_unsupported,
    spellings,
)
from dispy._core import ClusterOptions
from dispy._facade import (
    ClusterFacade,
    absolute,
    as_list,
    cluster_secret,
    prepare_computation,
    resolve_nodes,
    setup_logging,
)
from dispy._shared_core import SchedulerError, SharedCore, SharedOptions
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, NodeAllocate, to_allocate
from dispy.recovery import default_recover_file
from dispy_core import netinfo
from dispy_core.config import CLIENT_PORT, MSG_TIMEOUT, NODE_PORT, SCHEDULER_PORT
from dispy_core.protocol.discovery import is_pattern
from dispy_core.security import TLSConfig

log = logging.getLogger("dispy")

__all__ = ["SchedulerError", "SharedJobCluster"]


def scheduler_hosts(nodes: Sequence[NodeAllocate], node_port: int) -> list[str]:
    """The ``nodes`` entries the scheduler should ping, as its ``--nodes`` values.

    Patterns are left out (the scheduler's broadcast covers its LAN). An entry with a port,
    or any entry when ``node_port`` is not the default, is ``host:port``: the scheduler
    would ping a bare name at its own ``--node_port`` and miss a node listening elsewhere.
    """
    hosts = []
    for alloc in nodes:
        if is_pattern(alloc.host):
            continue
        port = alloc.port if alloc.port is not None else node_port
        bare = port == NODE_PORT or ":" in alloc.host  # IPv6 literals: host only
        hosts.append(alloc.host if bare else f"{alloc.host}:{port}")
    return hosts[:1024]


class SharedJobCluster(ClusterFacade):
    """A cluster whose jobs dispy-scheduler runs on nodes it shares with other clients.

    It has the methods, jobs and callbacks of :class:`dispy.JobCluster`; the scheduler
    (``dispy-scheduler serve``) decides where and when the jobs run, sharing the nodes'
    CPUs fairly between the computations of all its clients.

    Args:
        computation: a Python function, or the path of a program to run on the nodes.
        nodes: which of the scheduler's nodes to use, as for JobCluster (names, addresses,
            patterns, ``(host, port)`` tuples, :class:`NodeAllocate` objects): the scheduler
            offers each of its nodes and these decide, here, whether and with how many
            CPUs. Names and addresses (not patterns) are also given to the scheduler, which
            looks for nodes there. A NodeAllocate's own ``depends`` and ``setup_args`` (also
            set by its ``allocate()``) go to the scheduler with that node's answer, and the
            node is set up with them, as with JobCluster.
        depends: functions, classes, objects, modules or files the computation needs.
        ip_addr: the local address to connect from (any when None).
        port: the local port to connect from when it is free (51347 by default; 0 or a
            busy port: any free port), so several clients run on one host. Read the port
            used from ``cluster.port``.
        scheduler_node: the scheduler's host name or address; None: this host.
        scheduler_port: the scheduler's port for clients (its ``--scheduler_port``); None:
            51349.
        ext_ip_addr: this client connects out and needs no address nodes can reach; when
            given, it is only announced to the scheduler (in the client's name, for its
            logs).
        dest_path: the computation's directory on each node.
        loglevel: the ``dispy`` logger's level.
        cleanup: remove the computation's files on the nodes when it closes (or a
            function to run there then).
        reentrant: when a node is lost, run its jobs elsewhere (else they end Cancelled).
        exclusive: wait until the computations running on the scheduler close, then have
            its nodes alone (those that come meanwhile wait for their turn, in order).
        secret: the scheduler's ``--cluster_secret``; ``''`` takes ``DISPY_SECRET``.
        keyfile, certfile: TLS toward the scheduler: its ``--cluster_keyfile`` and
            ``--cluster_certfile``.
        callback, cluster_status, setup, recover_file, msg_timeout, node_port: as for
            JobCluster (``node_port`` only matters for ``nodes`` entries without a port).
        pulse_interval, ping_interval: accepted and not used: the scheduler watches the
            nodes with its own ``--pulse_interval``.
        job_status, host, ext_host, client_port, scheduler_host: dispy 4.15's names for
            ``callback``, ``ip_addr``, ``ext_ip_addr``, ``port`` and ``scheduler_node``.
        dispy_port: dispy 4.15's base port P: this client on P, nodes on P + 1, the
            scheduler on P + 2 (``client_port`` and ``scheduler_port`` override).
        poll_interval: dispy 4.15's polling, refused (ValueError) unless None.

    Raises:
        SchedulerError: the scheduler cannot be reached, refuses this client, or does not
            share its secret or TLS setting (the message says which was tried).

    Example:
        >>> def compute(n):
        ...     return n * n
        >>> cluster = dispy.SharedJobCluster(compute, scheduler_node="sched")  # doctest: +SKIP
        >>> jobs = [cluster.submit(i) for i in range(10)]                  # doctest: +SKIP
        >>> [job() for job in jobs]                                         # doctest: +SKIP
        >>> cluster.close()                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        computation: Callable[..., Any] | str,
        nodes: Sequence[Any] | None = None,
        depends: Sequence[Any] | None = None,
        ip_addr: str | Sequence[str] | None = None,
        port: int = CLIENT_PORT,
        scheduler_node: str | None = None,
        scheduler_port: int | None = None,
        ext_ip_addr: str | Sequence[str] | None = None,
        dest_path: str | None = None,
        loglevel: int = logging.WARNING,
        cleanup: bool | Callable[[], Any] = True,
        reentrant: bool = False,
        exclusive: bool = False,
        secret: str = "",
        keyfile: str | None = None,
        certfile: str | None = None,
        *,
        callback: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[[int, DispyNode | None, DispyJob | None], Any] | None = None,
        setup: Callable[..., Any] | None = None,
        recover_file: str | None = None,
        msg_timeout: float = MSG_TIMEOUT,
        node_port: int = NODE_PORT,
        pulse_interval: float | None = None,
        ping_interval: float | None = None,
        job_status: Callable[[DispyJob], Any] | None = None,
        host: str | Sequence[str] | None = None,
        ext_host: str | Sequence[str] | None = None,
        client_port: int | None = None,
        scheduler_host: str | None = None,
        dispy_port: int | None = None,
        poll_interval: float | None = None,
    ) -> None:
        # dispy 4.15 spellings (see dispy._compat): its dispy_port P put this client on P
        # (client_port overrides), the nodes on P + 1 and the scheduler on P + 2. Checked
        # before the logger is set up: a refused cluster leaves the logging as it was.
        refuse_unsupported(False, poll_interval)
        refuse_415_positions(
            "SharedJobCluster",
            {  # 4.15.2's 4th and 5th: job_status and cluster_status (functions)
                "ip_addr": (ip_addr if callable(ip_addr) else None, "job_status"),
                "port": (port if callable(port) else None, "cluster_status"),
            },
        )
        callback, ip_addr, ext_ip_addr = spellings(
            callback, job_status, ip_addr, host, ext_ip_addr, ext_host
        )
        scheduler_node = pick(scheduler_node, scheduler_host, "scheduler_node", "scheduler_host")
        if dispy_port is not None:
            port, node_port = dispy_port_ports(dispy_port, port, node_port)
            if scheduler_port is None:
                scheduler_port = port + 2
        if client_port is not None:
            port = int(client_port)
        setup_logging(loglevel)
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        sched_port = SCHEDULER_PORT if scheduler_port is None else int(scheduler_port)
        if not 0 < sched_port <= 65535:
            raise ValueError(f"scheduler_port must be 1..65535, not {scheduler_port}")
        if pulse_interval is not None or ping_interval is not None:
            log.debug("SharedJobCluster: pulse_interval and ping_interval are not used")
        resolved = cluster_secret(secret)
        comp = prepare_computation(computation, depends, setup, cleanup, dest_path)
        node_list = resolve_nodes(nodes)
        sched_name = scheduler_node or "127.0.0.1"
        try:
            sched_addr = netinfo.resolve(sched_name)
        except OSError as exc:
            raise ValueError(f"cannot resolve scheduler_node {sched_name!r}: {exc}") from None
        ip_addrs = []
        for addr in as_list(ip_addr)[:1]:
            try:
                ip_addrs.append(netinfo.resolve(addr))
            except OSError as exc:
                raise ValueError(f"cannot resolve ip_addr {addr!r}: {exc}") from None
        self._program = comp.kind == "program"
        self.name = name = ComputationName(comp.name)
        self.scheduler = (sched_addr, sched_port)
        self._options = ClusterOptions(
            name=name,
            kind=comp.kind,
            start_payload=comp.start_payload,
            files=comp.files,
            bundle=comp.bundle,
            nodes=node_list,
            ip_addrs=ip_addrs,
            ext_ip_addrs=as_list(ext_ip_addr),
            port=int(port),
            node_port=node_port,
            secret=resolved.value,
            secret_origin=resolved.origin,
            tls=TLSConfig(absolute(certfile), absolute(keyfile)),
            dest_path=comp.dest_path,
            cleanup=cleanup is not False,
            pulse_interval=None,
            ping_interval=None,
            reentrant=reentrant,
            msg_timeout=msg_timeout,
            callback=callback,
            cluster_status=cluster_status,
            recover_file=os.path.abspath(recover_file) if recover_file else default_recover_file(),
            pick_recover_file=not recover_file,
        )
        shared = SharedOptions(
            scheduler=self.scheduler,
            scheduler_name=sched_name,
            exclusive=bool(exclusive),
            hosts=scheduler_hosts(node_list, node_port),
        )
        callbacks = CallbackRunner(name)
        self._start(name, SharedCore(self._options, shared, callbacks, self), callbacks)

    @property
    def port(self) -> int:
        """The local port of the connection to the scheduler."""
        port: int = self._core.port
        return port

    def allocate_node(self, node: NodeAllocate | str | tuple[str, int]) -> int:
        """Use a node the scheduler offered earlier and this cluster declined, and any it
        offers later that ``node`` matches (a name, address, pattern or NodeAllocate).

        Returns 0 if the request was accepted, -1 if the node is invalid.
        """
        try:
            alloc = to_allocate(node)
            if not is_pattern(alloc.host):
                alloc.ip_addr = netinfo.resolve(alloc.host)
        except (ValueError, OSError) as exc:
            log.error("allocate_node: %s", exc)
            return -1
        self._call_soon(self._core.allocate, alloc)
        return 0

    def set_node_cpus(self, node: DispyNode | str, cpus: int) -> int:
        """Leaves the CPUs unchanged: the node is shared with other clients.

        Returns the CPUs this cluster uses on ``node``, or -1 if it is not one of its nodes.
        """
        key = self._node_key(node)
        if key is None:
            return -1
        known = self._core.known_nodes.get(key)
        if known is None:
            return -1
        log.info("set_node_cpus: a SharedJobCluster does not change a node's CPUs")
        used: int = known.cpus
        return used

    def deallocate_node(self, node: DispyNode | str) -> int:
        """Not available on a shared cluster: the scheduler places its jobs. Returns -1."""
        log.error("deallocate_node: a SharedJobCluster's nodes are the scheduler's to place")
        return -1

    def resetup_node(
        self,
        node: DispyNode | str,
        terminate_pending: bool = False,
        *,
        setup_args: tuple[Any, ...] | None = None,
    ) -> int:
        """Not available on a shared cluster (dispy 4.15 had none that worked for one
        either): the scheduler sets its nodes up. Returns -1."""
        log.error(
            "resetup_node: a SharedJobCluster's nodes are set up by the scheduler; give "
            "per-node setup_args with a NodeAllocate, or use JobCluster"
        )
        return -1

    def close_node(self, node: DispyNode | str, terminate_pending: bool = False) -> int:
        """Not available on a shared cluster: the scheduler places its jobs. Returns -1."""
        log.error("close_node: a SharedJobCluster's nodes are the scheduler's to place")
        return -1
