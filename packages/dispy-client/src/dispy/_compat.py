"""What programs written for dispy 4.15 use that our reference spells differently.

4.15 named some JobCluster arguments after what they were (``host``, ``dispy_port``,
``job_status``) where the reference names them after what they carry (``ip_addr``, ``port``,
``callback``); both spellings are accepted and mean the same. Its options that have no
behaviour here (UDP multicast, polling) are refused with the reason, so a program does not
run believing it got them.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from dispy.nodes import DispyNode


class ClusterStatus(NamedTuple):
    """What ``cluster.status()`` returns: the nodes known to the cluster, jobs not ended."""

    nodes: list[DispyNode]
    jobs_pending: int


class ComputationName(str):
    """A cluster's ``name``: the computation's name, also callable (``cluster.name()``) as
    4.15's method was; printing it shows the name either way."""

    __slots__ = ()

    def __call__(self) -> str:
        return str(self)


class _Logger(logging.Logger):
    """The ``dispy`` logger, with the level names 4.15 programs read off it
    (``dispy.logger.DEBUG``)."""

    DEBUG = logging.DEBUG
    INFO = logging.INFO
    WARNING = logging.WARNING
    WARN = logging.WARNING
    ERROR = logging.ERROR
    CRITICAL = logging.CRITICAL


def dispy_logger() -> logging.Logger:
    """The ``dispy`` logger, made a :class:`_Logger` so the level names are on it."""
    logger = logging.getLogger("dispy")
    if not isinstance(logger, _Logger):
        # The logger object is shared by every module (getLogger returns this one), so the
        # class is changed in place rather than a second logger made.
        logger.__class__ = _Logger
    return logger


def pick_callback(
    callback: Callable[..., Any] | None, job_status: Callable[..., Any] | None
) -> Callable[..., Any] | None:
    """4.15's ``job_status`` is our ``callback`` (same calls); 4.15 took job_status when
    both were given."""
    if job_status is not None and callback is not None and job_status is not callback:
        logging.getLogger("dispy").warning("'callback' is ignored in favor of 'job_status'")
    return job_status if job_status is not None else callback


def spellings(
    callback: Callable[..., Any] | None,
    job_status: Callable[..., Any] | None,
    ip_addr: Any,
    host: Any,
    ext_ip_addr: Any,
    ext_host: Any,
) -> tuple[Callable[..., Any] | None, Any, Any]:
    """``callback``, ``ip_addr`` and ``ext_ip_addr``, each from our spelling or 4.15's
    (``job_status``, ``host``, ``ext_host``): what both cluster classes accept."""
    return (
        pick_callback(callback, job_status),
        pick(ip_addr, host, "ip_addr", "host"),
        pick(ext_ip_addr, ext_host, "ext_ip_addr", "ext_host"),
    )


def pick(ours: Any, theirs: Any, ours_name: str, theirs_name: str) -> Any:
    """``ours`` or the 4.15 spelling ``theirs`` of the same option (not both, differing)."""
    if theirs is None:
        return ours
    if ours is not None and ours != theirs:
        raise ValueError(f"give {ours_name} or {theirs_name}, not both")
    return theirs


def refuse_unsupported(ipv4_udp_multicast: bool, poll_interval: float | None) -> None:
    """Refuse the 4.15 options this release cannot honour, saying what to do instead."""
    if ipv4_udp_multicast:
        raise ValueError(
            "ipv4_udp_multicast is not supported: nodes are found by UDP broadcast on the "
            "local network and by listing them in nodes= (addresses or (host, port))"
        )
    if poll_interval is not None:
        raise ValueError(
            "poll_interval is not supported: nodes reach this client over TCP; behind a "
            "firewall give ext_ip_addr (NAT) or run dispy-relay / an SSH forward instead"
        )


def refuse_415_positions(cls: str, misplaced: dict[str, tuple[Any, str]]) -> None:
    """Refuse 4.15 arguments given by position where our signature (the reference's) has
    another parameter: ``misplaced`` maps a parameter to (its value, what 4.15 had there)
    for values that cannot be that parameter (a function as an address, a number as a host).
    One clear error rather than a cluster that silently means something else."""
    for name, (value, theirs) in misplaced.items():
        if value is not None:
            raise TypeError(
                f"{cls}: {value!r} was given as {name}, where dispy 4.15.2 took {theirs}; "
                f"arguments after depends follow the reference's order: give {theirs} "
                "(and 4.15's other arguments) by keyword"
            )


def dispy_port_ports(dispy_port: int | None, port: int, node_port: int) -> tuple[int, int]:
    """4.15's ``dispy_port`` P: the client listens on P, nodes on P + 1 (given, it wins
    over ``port`` and ``node_port``; 4.15's default P was 9700, ours stay the reference's
    51347 / 51348)."""
    if dispy_port is None:
        return port, node_port
    if not 0 < int(dispy_port) < 65535:
        raise ValueError(f"dispy_port must be 1..65534, not {dispy_port!r}")
    return int(dispy_port), int(dispy_port) + 1


def latest_recover_file(directory: str) -> str | None:
    """The newest recover file named by default (``_dispy_*``) in ``directory``: what
    ``recover_jobs()`` without a file collects, as in 4.15."""
    found = [
        path
        for path in glob.glob(os.path.join(glob.escape(directory), "_dispy_*"))
        if os.path.isfile(path)
    ]
    return max(found, key=lambda path: (os.path.getmtime(path), path)) if found else None
