"""Where files sent by jobs land on the client (they are written by dispy_core.files)."""

from __future__ import annotations

import os


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
