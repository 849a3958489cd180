"""Real ``dispy.SharedJobCluster``s in the test's own process, closed at teardown.

:class:`SharedFactory` creates them toward a ``dispy-scheduler serve`` of the test (loopback,
a port of their own, the test's cluster secret) and, at the end, closes with
``terminate=True`` any the test left open, in bounded time. The ``shared_factory``
fixture of the shared-execution tests is one of these.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import dispy
from harness.ports import LOOPBACK

CLOSE_TIMEOUT = 30.0


class SharedFactory:
    """``factory(computation, sched, **kwargs)`` -> an open SharedJobCluster."""

    def __init__(self, cluster_secret: str) -> None:
        self.cluster_secret = cluster_secret
        self.clusters: list[dispy.SharedJobCluster] = []

    def __call__(
        self, computation: Callable[..., Any] | str, sched: Any, **kwargs: Any
    ) -> dispy.SharedJobCluster:
        options: dict[str, Any] = {
            "scheduler_node": LOOPBACK,
            "scheduler_port": sched.scheduler_port,
            "ip_addr": LOOPBACK,
            "port": 0,
            "secret": self.cluster_secret,
            "loglevel": logging.INFO,
            **kwargs,
        }
        cluster = dispy.SharedJobCluster(computation, **options)
        self.clusters.append(cluster)
        return cluster

    def teardown(self) -> list[str]:
        problems = []
        for cluster in self.clusters:
            if cluster._closed:
                continue
            closer = threading.Thread(
                target=cluster.close, kwargs={"terminate": True}, name="close-shared", daemon=True
            )
            closer.start()
            closer.join(CLOSE_TIMEOUT)
            if closer.is_alive():
                problems.append(f"shared cluster {cluster.name}: close(terminate=True) hangs")
        return problems
