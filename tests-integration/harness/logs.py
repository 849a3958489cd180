"""Capture of the client's log.

The ``dispy`` logger does not propagate (it installs its own stderr handler), so pytest's
``caplog`` never sees it; we attach our own handler instead.
"""

from __future__ import annotations

import logging
import threading


class LogCapture(logging.Handler):
    """Keeps every record of one logger while attached."""

    def __init__(self, logger_name: str = "dispy") -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger_name)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def attach(self) -> LogCapture:
        self.logger.addHandler(self)
        return self

    def detach(self) -> None:
        self.logger.removeHandler(self)

    def messages(self, level: int = logging.NOTSET) -> list[str]:
        with self._records_lock:
            records = list(self.records)
        return [r.getMessage() for r in records if r.levelno >= level]

    def find(self, text: str, level: int = logging.NOTSET) -> str | None:
        """The first message containing ``text``, if any."""
        return next((m for m in self.messages(level) if text in m), None)

    def text(self) -> str:
        with self._records_lock:
            records = list(self.records)
        return "\n".join(self.format(r) for r in records)
