"""Nodes as the user sees them: DispyNode, DispyNodeAvailInfo and NodeAllocate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispy_core.protocol.discovery import is_pattern, matches
from dispy_core.protocol.jobs import NodeStatus

if TYPE_CHECKING:
    from dispy_core.protocol.messages import AvailInfo

log = logging.getLogger("dispy")


class DispyNodeAvailInfo:
    """A node's availability: ``cpu`` (idle %), ``memory`` and ``disk`` (bytes free),
    ``swap`` (% used)."""

    __slots__ = ("cpu", "disk", "memory", "swap")

    def __init__(self, cpu: float, memory: int, disk: int, swap: float) -> None:
        self.cpu = cpu
        self.memory = memory
        self.disk = disk
        self.swap = swap

    @classmethod
    def _from_wire(cls, info: AvailInfo | None) -> DispyNodeAvailInfo | None:
        if info is None:
            return None
        return cls(info.cpu, info.memory, info.disk, info.swap)

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        """``vars(info)``: the four fields (a copy; __slots__ keep these small)."""
        return {"cpu": self.cpu, "memory": self.memory, "disk": self.disk, "swap": self.swap}

    def __reduce__(self) -> tuple[Any, ...]:
        return (DispyNodeAvailInfo, (self.cpu, self.memory, self.disk, self.swap))

    def __repr__(self) -> str:
        return (
            f"DispyNodeAvailInfo(cpu={self.cpu:.1f}, memory={self.memory}, "
            f"disk={self.disk}, swap={self.swap:.1f})"
        )


class DispyNode:
    """A node that serves (or served) this cluster; passed to ``cluster_status``."""

    Initialized = NodeStatus.Initialized
    Closed = NodeStatus.Closed
    AvailInfo = NodeStatus.AvailInfo
    SetupFailed = NodeStatus.SetupFailed
    AbandonedNode = NodeStatus.AbandonedNode

    def __init__(self, ip_addr: str, port: int, name: str, cpus: int, platform: str) -> None:
        self.ip_addr = ip_addr
        self.port = port
        self.name = name
        self.cpus = cpus
        self.platform = platform
        self.avail_cpus = cpus
        self.busy = 0
        self.jobs_done = 0
        self.cpu_time = 0.0
        self.tx = 0  # bytes of job arguments sent to it (as in 4.15)
        self.rx = 0  # bytes of job replies received from it
        self.avail_info: DispyNodeAvailInfo | None = None
        self.update_time = 0.0
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"<DispyNode {self.name} {self.ip_addr}:{self.port} cpus={self.cpus}>"


class NodeAllocate:
    """Which nodes a cluster uses, and how many of their CPUs.

    Args:
        host: an IP address, a host name, or a wildcard pattern such as ``'192.168.3.*'``.
        port: the node's port; None means the cluster's ``node_port``.
        cpus: at most this many CPUs per node (0 = all).
        depends: dependencies (files, modules, objects) sent only to the nodes this object
            allocates, besides the cluster's ``depends``.
        setup_args: arguments ``setup`` is called with on those nodes.

    Subclass and override :meth:`allocate` to choose nodes by name, platform or
    availability; it may set ``self.depends`` and ``self.setup_args`` for the node it is
    asked about (they are read right after it returns).
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        cpus: int = 0,
        depends: Sequence[Any] = (),
        setup_args: Sequence[Any] = (),
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"NodeAllocate host must be a non-empty string, not {host!r}")
        if port is not None and not (0 < int(port) < 65536):
            raise ValueError(f"NodeAllocate port must be 1..65535, not {port!r}")
        self.host = host
        self.port = port
        self.cpus = cpus
        self.ip_addr: str = host
        self.depends: list[Any] = list(depends)
        self.setup_args: tuple[Any, ...] = tuple(setup_args)

    def allocate(
        self,
        cluster: Any,
        ip_addr: str,
        name: str,
        cpus: int,
        avail_info: DispyNodeAvailInfo | None = None,
        platform: str = "",
    ) -> int:
        """CPUs to use on the node at ``ip_addr`` (0 = do not use it)."""
        if self.cpus > 0:
            return min(self.cpus, cpus)
        if self.cpus < 0:
            return max(cpus + self.cpus, 0)
        return cpus

    def _matches(self, ip_addr: str, port: int, default_port: int) -> bool:
        if not matches(self.ip_addr, ip_addr):
            return False
        if self.port is not None:
            return self.port == port
        return is_pattern(self.ip_addr) or port == default_port

    def _target(self, default_port: int) -> tuple[str, int] | None:
        if is_pattern(self.ip_addr):
            return None
        return (self.ip_addr, self.port or default_port)


def find_allocation(
    nodes: list[NodeAllocate], ip_addr: str, port: int, node_port: int
) -> NodeAllocate | None:
    """The first of a cluster's ``nodes`` that matches the node at ``ip_addr:port``."""
    for alloc in nodes:
        if alloc._matches(ip_addr, port, node_port):
            return alloc
    return None


def cpus_for(
    nodes: list[NodeAllocate],
    node_port: int,
    cluster: Any,
    *,
    ip_addr: str,
    port: int,
    name: str,
    cpus: int,
    avail: DispyNodeAvailInfo | None,
    platform: str,
) -> int:
    """The CPUs a cluster's NodeAllocate objects give a node (0: not used).

    A JobCluster asks this when a node connects, a SharedJobCluster when the scheduler
    offers one: the same patterns and the same (user's) ``allocate()`` decide both. An
    ``allocate()`` that raises is logged and counts as 0.
    """
    alloc = find_allocation(nodes, ip_addr, port, node_port)
    if alloc is None:
        return 0
    try:
        return max(0, int(alloc.allocate(cluster, ip_addr, name, cpus, avail, platform)))
    except Exception:
        log.exception("allocate() of %r raised for node %s", alloc, name)
        return 0


def to_allocate(item: Any) -> NodeAllocate:
    """A NodeAllocate for each accepted form: string, ``(host, port)``, DispyNode or
    NodeAllocate."""
    if isinstance(item, NodeAllocate):
        return item
    if isinstance(item, DispyNode):  # as cluster_status and status() give them (4.15)
        return NodeAllocate(item.ip_addr, item.port)
    if isinstance(item, str):
        return NodeAllocate(item)
    if isinstance(item, tuple | list) and len(item) == 2:
        return NodeAllocate(str(item[0]), int(item[1]))
    raise ValueError(
        f"invalid node {item!r}: give a host name, an IP address, a pattern like '192.168.1.*', "
        "a (host, port) tuple, a DispyNode or a NodeAllocate"
    )
