"""API entry points whose servers land in later releases; each says so clearly."""

from __future__ import annotations

from typing import Any


class SharedJobCluster:
    """A cluster scheduled by ``dispy-scheduler`` (not available in this release)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "SharedJobCluster needs dispy-scheduler, which is not available in this release; "
            "use JobCluster"
        )
