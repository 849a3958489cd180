"""API entry points whose servers land in later releases; each says so clearly."""

from __future__ import annotations

from typing import Any

from dispy.jobs import DispyJob


class SharedJobCluster:
    """A cluster scheduled by ``dispy-scheduler`` (not available in this release)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "SharedJobCluster needs dispy-scheduler, which is not available in this release; "
            "use JobCluster"
        )


def recover_jobs(
    recover_file: str, timeout: float | None = None, terminate_pending: bool = False
) -> list[DispyJob]:
    """Recover jobs of a crashed client (not available in this release)."""
    raise NotImplementedError("recover_jobs is not available in this release yet")
