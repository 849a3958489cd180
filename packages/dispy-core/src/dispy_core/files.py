"""Writing files that arrive over a connection (the node's depends, the client's job files).

Modes come from the peer, so they are masked: a file written here is never readable or
writable by others, whatever the sender asked. Temporary files are created by ``mkstemp``
(``O_EXCL``, never through a link that someone planted at the name) and renamed over the
target, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from dispy_core.protocol.framing import Payload

# Owner: as sent; group: read and execute at most; others: nothing.
FILE_MODE_MASK = 0o750
DIR_MODE = 0o750


def makedirs(path: str, mode: int = DIR_MODE) -> None:
    """``os.makedirs(path, exist_ok=True)``, but every directory it creates gets ``mode``
    (``os.makedirs`` gives ``mode`` to the last one only)."""
    missing: list[str] = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise


def atomic_write(path: str, data: Payload, mode: int = 0o600, mtime: float | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all, with ``mode`` (masked by
    :data:`FILE_MODE_MASK`) and, if given, ``mtime``; the directory must exist."""
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=".dispy-part", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode & FILE_MODE_MASK)
            if mtime is not None:
                os.utime(fh.fileno(), (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def store_file(path: str, data: Payload, mode: int, mtime: float | None) -> None:
    """Write ``data`` to ``path`` whole or not at all, with the sender's mode (masked by
    :data:`FILE_MODE_MASK`) and modification time; creates missing directories."""
    makedirs(os.path.dirname(path) or ".")
    atomic_write(path, data, mode, mtime)
