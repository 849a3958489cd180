"""Structured concurrency for the services: every background task has an owner.

A service object (a node, a client session on it, a computation, the client's cluster core)
holds one :class:`TaskOwner` and starts every background task through it. The owner keeps a
reference to each task (asyncio holds tasks only weakly), reports a task's exception the
moment it ends, and on shutdown cancels what is left and waits until it is gone::

    async with TaskOwner("node", log=log) as tasks:
        tasks.start(expire_stored(), name="expire stored results")
        tasks.start(serve(conn), on_error=session_failed)
        await stopped.wait()
    # every task has ended here; an error of any was logged with its traceback

Why not :class:`asyncio.TaskGroup` itself: a task group ends every sibling, and its parent,
when one child fails, and it lives exactly as long as one ``async with`` block of one task.
Neither fits these services: one connection's failure must not end the node, and a session
outlives the connection (the coroutine) it started on, so its tasks must too. The owner is
therefore a set of tasks with a done callback each: a failing child is handed to its
``on_error`` (or logged once) and its siblings go on; cancelling siblings is the owner's
decision (``on_error`` may call :meth:`TaskOwner.cancel` or end the service).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

ErrorHandler = Callable[[BaseException], None]

_log = logging.getLogger(__name__)


class TaskOwner:
    """The background tasks of one service object (see the module docstring).

    Args:
        name: What owns the tasks, for log lines ("session", "computation x").
        log: The owner's logger; failures are logged there.
        on_error: The handler of a task's failure when :meth:`start` names none.
    """

    def __init__(
        self, name: str, *, log: logging.Logger = _log, on_error: ErrorHandler | None = None
    ) -> None:
        self.name = name
        self._log = log
        self._on_error = on_error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        """How many tasks have not ended yet."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        on_error: ErrorHandler | None = None,
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this owner.

        If it raises, ``on_error(exc)`` is called (it must log or pass the error on), or
        without one the error is logged with its traceback, naming the task; either way
        once, and its siblings go on. Cancellation is not an error. After :meth:`close`, the
        task is cancelled before its first step: a late callback of a closed service must
        neither raise nor leave work running behind it.
        """
        what = name or getattr(coro, "__qualname__", None) or "task"
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}: {what}")
        self._tasks.add(task)
        handler = on_error or self._on_error
        task.add_done_callback(lambda t: self._done(t, what, handler))
        if self._closed:
            task.cancel()
        return task

    def _done(self, task: asyncio.Task[Any], what: str, on_error: ErrorHandler | None) -> None:
        self._tasks.discard(task)
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
                self._log.exception("%s: while handling the failure of %s", self.name, what)
        self._log.error("%s: %s failed: %s", self.name, what, exc, exc_info=exc)

    def cancel(self) -> None:
        """Cancel every task but the caller's own; the owner stays open for new tasks."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def close(self, *, grace: float | None = None) -> None:
        """Stop every task (but the caller's own) and wait until each has ended.

        With ``grace``, tasks first get that many seconds to end by themselves. Tasks that
        a task starts while being cancelled are cancelled and awaited too. Errors raised
        meanwhile are reported as in :meth:`start`; none is raised here. Afterwards the
        owner is closed: a task started later is cancelled at once.
        """
        self._closed = True
        current = asyncio.current_task()
        if grace is not None:
            others = [t for t in self._tasks if t is not current]
            if others:
                await asyncio.wait(others, timeout=grace)
        while others := [t for t in self._tasks if t is not current]:
            for task in others:
                task.cancel()
            await asyncio.wait(others)

    async def __aenter__(self) -> TaskOwner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Unlike a TaskGroup's, the block's end cancels: a service's tasks are loops and
        # connections that do not end by themselves.
        await self.close()
