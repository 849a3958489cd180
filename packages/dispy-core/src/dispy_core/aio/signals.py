"""Stopping a server on SIGINT and SIGTERM, for every role's ``serve``.

The handlers go in before the server starts: a signal that comes while it starts (as soon
as it says it serves, a supervisor or a test may stop it) then stops it cleanly once it has
started, instead of interrupting the start with a KeyboardInterrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["stop_on_signals"]


def stop_on_signals(stopped: asyncio.Event) -> None:
    """Set ``stopped`` on SIGINT or SIGTERM (where the loop can handle signals)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopped.set)
