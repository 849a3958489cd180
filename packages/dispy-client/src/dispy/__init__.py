"""Distribute Python functions to dispy nodes and collect their results.

Example:
    >>> import dispy
    >>> def compute(n):
    ...     return n * n
    >>> cluster = dispy.JobCluster(compute, nodes=["*"])  # doctest: +SKIP
"""

from dispy.cluster import JobCluster
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, DispyNodeAvailInfo, NodeAllocate
from dispy.recovery import recover_jobs
from dispy.shared import SchedulerError, SharedJobCluster

__all__ = [
    "DispyJob",
    "DispyNode",
    "DispyNodeAvailInfo",
    "JobCluster",
    "NodeAllocate",
    "SchedulerError",
    "SharedJobCluster",
    "recover_jobs",
]
__version__ = "0.1.0"
