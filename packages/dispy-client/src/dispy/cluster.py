"""JobCluster: distribute a Python function (or a program) to dispy nodes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from dispy._callbacks import CallbackRunner
from dispy._compat import (
    ComputationName,
    dispy_port_ports,
    refuse_415_positions,
    refuse_unsupported,
    spellings,
)
from dispy._core import ClusterCore, ClusterOptions
from dispy._facade import (
    ClusterFacade,
    _in_loop,
    absolute,
    as_list,
    cluster_secret,
    prepare_computation,
    resolve_nodes,
    setup_logging,
)
from dispy._node_session import resetup
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, NodeAllocate, to_allocate
from dispy.recovery import default_recover_file
from dispy_core import netinfo
from dispy_core.config import CLIENT_PORT, MSG_TIMEOUT, NODE_PORT
from dispy_core.security import TLSConfig

log = logging.getLogger("dispy")

__all__ = ["JobCluster", "cluster_secret"]


class JobCluster(ClusterFacade):
    """A cluster that runs ``computation`` on dispy nodes, with its own scheduler.

    Args:
        computation: a Python function, or the path of a program to run on the nodes.
        nodes: host names, IP addresses, wildcard patterns (``'*'``, ``'192.168.1.*'``),
            ``(host, port)`` tuples or :class:`NodeAllocate` objects.
        depends: functions, classes, objects, modules or files the computation needs.
        callback: called with the job, in this process, when a job ends (and for each
            provisional result).
        cluster_status: called as ``cluster_status(status, node, job)`` on every change.
        ip_addr: address(es) of this host to use; all interfaces when None.
        ext_ip_addr: address(es) nodes should use to reach this client (NAT).
        port: this client's port (0 picks a free one).
        node_port: the nodes' port.
        secret: shared secret; nodes must use the same one. When it is ``''`` (the
            default), the ``DISPY_SECRET`` environment variable is used if set; with
            neither, the cluster logs a warning, since anyone can then pose as a node.
        keyfile, certfile: enable TLS with this certificate (the key may be in certfile).
        job_status, host, ext_host, dispy_port: dispy 4.15's names for ``callback``,
            ``ip_addr``, ``ext_ip_addr`` and ``port`` (nodes then on ``dispy_port + 1``).
        ipv4_udp_multicast, poll_interval: dispy 4.15 options this release refuses
            (ValueError with the reason) unless left at their defaults.

    Example:
        >>> def compute(n):
        ...     return n * n
        >>> cluster = dispy.JobCluster(compute, nodes=["192.168.1.*"])  # doctest: +SKIP
        >>> jobs = [cluster.submit(i) for i in range(10)]                # doctest: +SKIP
        >>> [job() for job in jobs]                                       # doctest: +SKIP
    """

    def __init__(
        self,
        computation: Callable[..., Any] | str,
        nodes: Sequence[Any] | None = None,
        depends: Sequence[Any] | None = None,
        callback: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[[int, DispyNode | None, DispyJob | None], Any] | None = None,
        ip_addr: str | Sequence[str] | None = None,
        ext_ip_addr: str | Sequence[str] | None = None,
        port: int = CLIENT_PORT,
        node_port: int = NODE_PORT,
        recover_file: str | None = None,
        dest_path: str | None = None,
        loglevel: int = logging.WARNING,
        setup: Callable[..., Any] | None = None,
        cleanup: bool | Callable[[], Any] = True,
        pulse_interval: float | None = None,
        ping_interval: float | None = None,
        reentrant: bool = False,
        secret: str = "",
        keyfile: str | None = None,
        certfile: str | None = None,
        msg_timeout: float = MSG_TIMEOUT,
        *,
        job_status: Callable[[DispyJob], Any] | None = None,
        host: str | Sequence[str] | None = None,
        ext_host: str | Sequence[str] | None = None,
        dispy_port: int | None = None,
        ipv4_udp_multicast: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        # dispy 4.15 spellings (see dispy._compat): job_status is callback, host is ip_addr,
        # ext_host is ext_ip_addr, dispy_port P is port P with nodes on P + 1. Checked before
        # the logger is set up: a refused cluster leaves the logging as it was.
        refuse_unsupported(ipv4_udp_multicast, poll_interval)
        # 4.15.2's 7th and 8th: dispy_port (a number), ext_host (an address)
        number_as_host = ext_ip_addr if isinstance(ext_ip_addr, int) else None
        refuse_415_positions(
            "JobCluster",
            {
                "ext_ip_addr": (number_as_host, "dispy_port"),
                "port": (port if isinstance(port, str) else None, "ext_host"),
            },
        )
        callback, ip_addr, ext_ip_addr = spellings(
            callback, job_status, ip_addr, host, ext_ip_addr, ext_host
        )
        port, node_port = dispy_port_ports(dispy_port, port, node_port)
        setup_logging(loglevel)
        if pulse_interval is not None and not 1 <= pulse_interval <= 600:
            raise ValueError(
                f"pulse_interval must be between 1 and 600 seconds, not {pulse_interval}"
            )
        if ping_interval is not None and ping_interval <= 0:
            raise ValueError(f"ping_interval must be positive, not {ping_interval}")
        resolved = cluster_secret(secret)
        comp = prepare_computation(computation, depends, setup, cleanup, dest_path)
        node_list = resolve_nodes(nodes)
        ip_addrs = []
        for addr in as_list(ip_addr):
            try:
                ip_addrs.append(netinfo.resolve(addr))
            except OSError as exc:
                raise ValueError(f"cannot resolve ip_addr {addr!r}: {exc}") from None
        self._program = comp.kind == "program"
        self.name = name = ComputationName(comp.name)
        self._options = ClusterOptions(
            name=name,
            kind=comp.kind,
            start_payload=comp.start_payload,
            bundle=comp.bundle,
            files=comp.files,
            nodes=node_list,
            ip_addrs=ip_addrs,
            ext_ip_addrs=as_list(ext_ip_addr),
            port=port,
            node_port=node_port,
            secret=resolved.value,
            secret_origin=resolved.origin,
            tls=TLSConfig(absolute(certfile), absolute(keyfile)),
            dest_path=comp.dest_path,
            cleanup=cleanup is not False,
            pulse_interval=pulse_interval,
            ping_interval=ping_interval,
            reentrant=reentrant,
            msg_timeout=msg_timeout,
            callback=callback,
            cluster_status=cluster_status,
            recover_file=os.path.abspath(recover_file) if recover_file else default_recover_file(),
            pick_recover_file=not recover_file,
        )
        callbacks = CallbackRunner(name)
        self._start(name, ClusterCore(self._options, callbacks, self), callbacks)

    @property
    def port(self) -> int:
        """The port this cluster listens on (useful with ``port=0``)."""
        port: int = self._core.port
        return port

    # -- nodes ----------------------------------------------------------------------------

    def allocate_node(self, node: NodeAllocate | str | tuple[str, int]) -> int:
        """Add a node (name, address, pattern or NodeAllocate) to this cluster.

        Returns 0 if the request was accepted, -1 if the node is invalid.
        """
        try:
            alloc = to_allocate(node)
            if not any(c in alloc.host for c in "*?["):
                alloc.ip_addr = netinfo.resolve(alloc.host)
        except (ValueError, OSError) as exc:
            log.error("allocate_node: %s", exc)
            return -1
        self._call_soon(self._core.allocate, alloc)
        return 0

    def resetup_node(
        self,
        node: DispyNode | str,
        terminate_pending: bool = False,
        *,
        setup_args: tuple[Any, ...] | None = None,
    ) -> int:
        """Run ``setup`` on ``node`` again, with ``setup_args`` (none given: the ones its
        NodeAllocate has then, as ``allocate()`` is asked again: how a dispy 4.15 program
        gives new arguments, with 4.15's signature ``resetup_node(node,
        terminate_pending=False)``).

        Jobs wait (or go to other nodes) meanwhile; the node's running jobs finish first
        unless ``terminate_pending``; the computation's globals there start afresh. Returns
        0 once the computation is closed there (set up again as the node comes back), -1 if
        the node does not serve this cluster.
        """
        key = self._node_key(node)
        if key is None:
            return -1
        args = tuple(setup_args) if setup_args is not None else None
        result: int = self._call(resetup(self._core, key, args, terminate_pending))
        return result

    def set_node_cpus(self, node: DispyNode | str, cpus: int) -> int:
        """Use ``cpus`` CPUs of ``node`` (negative: all but that many).

        Returns the CPUs now used, or -1 if the request failed.
        """
        key = self._node_key(node)
        if key is None:
            return -1
        result: int = self._call(self._core.set_cpus(key, int(cpus)))
        return result

    def deallocate_node(self, node: DispyNode | str) -> int:
        """Give ``node`` no more jobs of this cluster; those it has go on (dispy 4.15).

        :meth:`allocate_node` takes it back. Returns 0, or -1 if it does not serve this
        cluster.
        """
        return self._release(node, close=False, terminate=False)

    def close_node(self, node: DispyNode | str, terminate_pending: bool = False) -> int:
        """Close this cluster's computation on ``node`` (dispy 4.15): no more jobs go there;
        those running end first, or are terminated with ``terminate_pending``.

        :meth:`allocate_node` takes it back. Returns 0, or -1 if it does not serve this
        cluster.
        """
        return self._release(node, close=True, terminate=bool(terminate_pending))

    def _release(self, node: DispyNode | str, *, close: bool, terminate: bool) -> int:
        key = self._node_key(node)
        if key is None:
            return -1
        result: int = self._call(_in_loop(self._core.release, key, close, terminate))
        return result
