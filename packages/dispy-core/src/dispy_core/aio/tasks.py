"""Background tasks that never die silently.

An asyncio task whose exception nobody retrieves is reported (if ever) only when it is
garbage collected, long after the state it left behind did its harm. Every task the roles
start goes through :func:`spawn`: its owner keeps it (so it is not collected mid-flight and
can be cancelled on close) and hears of its exception the moment it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def spawn(
    coro: Coroutine[Any, Any, T],
    tasks: set[asyncio.Task[Any]],
    *,
    log: logging.Logger,
    what: str,
    on_error: Callable[[BaseException], None] | None = None,
) -> asyncio.Task[T]:
    """Run ``coro`` as a task kept in ``tasks`` until it ends.

    If it raises, ``on_error(exc)`` is called (it must log or pass the error on), or without
    one the error is logged with its traceback, naming ``what``. Cancellation is not an error.
    """
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)

    def done(task: asyncio.Task[T]) -> None:
        tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if on_error is not None:
            try:
                on_error(exc)
                return
            except Exception:
                log.exception("while handling the failure of %s", what)
        log.error("%s failed: %s", what, exc, exc_info=exc)

    task.add_done_callback(done)
    return task
