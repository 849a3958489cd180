"""Deadline polling (Dask ``poll_for``, Ray ``wait_for_condition``): never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    *,
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    An exception raised by ``predicate`` counts as "not yet" and is shown if time runs out.

    Raises:
        AssertionError: after ``timeout`` seconds, with ``message`` (a string, or a function
            called then so it can describe the state at the deadline).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # a predicate may race with the state it reads
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s; last value: {last!r})")
        time.sleep(interval)
