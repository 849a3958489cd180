"""Writing files that arrive over a connection (the node's depends, the client's job files)."""

from __future__ import annotations

import os

from dispy_core.protocol.framing import Payload


def store_file(path: str, data: Payload, mode: int, mtime: float | None) -> None:
    """Write ``data`` to ``path`` whole or not at all (via a temporary file), with the
    sender's mode and modification time; creates missing directories."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.dispy-part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode & 0o777)
    os.replace(tmp, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
