"""Distribute Python functions to dispy nodes and collect their results.

Example:
    >>> import dispy
    >>> def compute(n):
    ...     return n * n
    >>> cluster = dispy.JobCluster(compute, nodes=["*"])  # doctest: +SKIP
"""

from dispy._compat import ClusterStatus, dispy_logger
from dispy.cluster import JobCluster
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy.recovery import recover_jobs
from dispy.shared import SchedulerError, SharedJobCluster
from dispy_core.config import MSG_TIMEOUT

logger = dispy_logger()
"""The ``dispy`` logger; level names on it, as dispy 4.15 had (``dispy.logger.DEBUG``)."""
MsgTimeout = MSG_TIMEOUT
"""Seconds a message to a node may take (dispy 4.15's name; ``msg_timeout=`` sets it)."""

__all__ = [
    "ClusterStatus",
    "DispyJob",
    "DispyNode",
    "DispyNodeAvailInfo",
    "JobCluster",
    "MsgTimeout",
    "NodeAllocate",
    "SchedulerError",
    "SharedJobCluster",
    "logger",
    "recover_jobs",
]
__version__ = "0.1.0"
