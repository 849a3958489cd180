"""Deadline polling: wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _describe(predicate: Callable[[], object], message: str | None) -> str:
    if message:
        return message
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    return f"{name}() to become true"


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a true value; return that value.

    Exceptions raised by ``predicate`` propagate at once (a broken check should not look
    like a slow one).

    Args:
        predicate: the condition to poll; called at least once.
        timeout: seconds before giving up.
        interval: seconds between calls.
        message: what is being waited for, for the failure message.

    Raises:
        AssertionError: the deadline passed; the message names what was awaited and the
            last value the predicate returned.

    Example:
        >>> wait_for(lambda: 42, timeout=1.0)
        42
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {_describe(predicate, message)} "
                f"(last value: {value!r})"
            )
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Like :func:`wait_for` in a coroutine; ``predicate`` may be sync or async.

    Raises:
        AssertionError: the deadline passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {_describe(predicate, message)} "
                f"(last value: {value!r})"
            )
        await asyncio.sleep(interval)
