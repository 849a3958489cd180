"""Functions the shared-execution end-to-end tests run on the nodes (shipped by value).

Each imports what it needs inside: it runs in a fresh interpreter on a node. A job learns
which node it runs on from ``NODE_TAG`` (the tests start nodes with it set to their names).
"""

from __future__ import annotations

import sys

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def mark_and_sleep(marks: str, n: int, seconds: float) -> tuple[str | None, int]:
    """Leave ``<marks>/<n>.<node>`` when the job starts, sleep, return (node, n)."""
    import os
    import time

    node = os.environ.get("NODE_TAG")
    with open(os.path.join(marks, f"{n}.{node}"), "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return node, n


def where(n: int) -> tuple[str | None, int]:
    import os

    return os.environ.get("NODE_TAG"), n * n


def fail_on_tag(tag: str) -> int:
    """A setup that fails (returns 1) on the node whose ``NODE_TAG`` is ``tag``."""
    import os

    return 1 if os.environ.get("NODE_TAG") == tag else 0
