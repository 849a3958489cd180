"""Runs the user's callbacks in one thread of their process, in order.

Callbacks never run on the network thread, so a slow callback delays other callbacks but
not the cluster. ``drain`` lets ``wait()`` return only after the callbacks of every job
that has finished so far have run.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dispy")


class CallbackRunner:
    def __init__(self, name: str) -> None:
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"dispy-callbacks-{name}", daemon=True
        )
        self._thread.start()

    def post(self, func: Callable[..., Any], *args: Any) -> None:
        with self._cond:
            self._queue.append((func, args))
            if len(self._queue) == 1:
                self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every posted callback has run."""
        if threading.current_thread() is self._thread:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    if self._stopping:
                        return
                    self._cond.wait()
                self._busy = True
                batch = list(self._queue)
                self._queue.clear()
            for func, args in batch:
                try:
                    func(*args)
                except Exception:
                    log.exception("callback %s raised", getattr(func, "__name__", func))
