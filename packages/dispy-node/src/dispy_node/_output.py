"""A job's captured output, kept to its last ``max_job_output`` bytes (or characters).

A job may print without end; the node keeps only the tail of each stream, so neither the
daemon (program jobs) nor a worker (function jobs) holds more than that, and the reply stays
well under the message limit. The job is told: the kept text starts with a line saying how
much was cut, and its stderr ends with one.
"""

from __future__ import annotations

import io
from collections import deque
from typing import AnyStr, Generic

DEFAULT_MAX_OUTPUT = 64 << 20


class Tail(Generic[AnyStr]):
    """The last ``limit`` units (0: all) of a stream added piece by piece, in O(total)."""

    def __init__(self, limit: int, empty: AnyStr) -> None:
        self.limit = limit
        self.total = 0
        self._empty: AnyStr = empty
        self._parts: deque[AnyStr] = deque()
        self._size = 0

    def clear(self) -> None:
        self._parts.clear()
        self._size = self.total = 0

    def add(self, piece: AnyStr) -> None:
        if not piece:
            return
        self._parts.append(piece)
        self._size += len(piece)
        self.total += len(piece)
        if self.limit:
            # whole pieces that lie entirely before the last ``limit`` units go
            while self._size - len(self._parts[0]) >= self.limit:
                self._size -= len(self._parts.popleft())

    @property
    def dropped(self) -> int:
        return self.total - min(self._size, self.limit) if self.limit else 0

    def value(self) -> AnyStr:
        data: AnyStr = self._empty.join(self._parts)
        cut = len(data) - self.limit if self.limit else 0
        if cut > 0:
            data = data[cut:]
        return data


def cut_notice(stream: str, dropped: int, limit: int, unit: str = "bytes") -> str:
    return (
        f"[dispy-node: the first {dropped} {unit} of this job's {stream} were cut; "
        f"the last {limit} (the node's max_job_output) follow]\n"
    )


def finish(
    stdout: str, out_dropped: int, stderr: str, err_dropped: int, limit: int, unit: str = "bytes"
) -> tuple[str, str]:
    """Both streams, each cut one starting with a notice, and stderr ending with one."""
    notes = []
    if out_dropped:
        stdout = cut_notice("stdout", out_dropped, limit, unit) + stdout
        notes.append(f"stdout: the first {out_dropped} {unit} cut")
    if err_dropped:
        stderr = cut_notice("stderr", err_dropped, limit, unit) + stderr
        notes.append(f"stderr: the first {err_dropped} {unit} cut")
    if notes:
        stderr += (
            f"\n[dispy-node: output over max_job_output ({limit} {unit}) truncated: "
            + "; ".join(notes)
            + "]\n"
        )
    return stdout, stderr


class CapturedText(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a function job: a text stream that keeps its tail."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.tail: Tail[str] = Tail(limit, "")

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.tail.add(s)
        return len(s)
