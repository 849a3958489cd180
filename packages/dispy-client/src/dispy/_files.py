"""Where files sent by jobs land on the client, and how they are written."""

from __future__ import annotations

import os

from dispy_core.protocol.framing import Payload


def safe_local_path(base: str, relative: str) -> str:
    """Where a file sent by a job lands under ``base``; refuses escapes.

    Raises:
        ValueError: absolute path, '..', or a link leading outside ``base``.
    """
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise ValueError("absolute paths are not accepted")
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError("the path must stay inside the client's directory")
    path = os.path.join(base, *parts)
    real_base = os.path.realpath(base)
    if not os.path.realpath(path).startswith(real_base + os.sep):
        raise ValueError("the path leads outside the client's directory")
    return path


def store_file(path: str, data: Payload, mode: int, mtime: float | None) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.dispy-part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode & 0o777)
    os.replace(tmp, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
