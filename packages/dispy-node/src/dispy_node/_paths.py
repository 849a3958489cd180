"""Where a computation's files live on the node, without ever escaping the prefix."""

from __future__ import annotations

import os
import re
import secrets


class UnsafePathError(ValueError):
    """A client asked for a path outside its directory."""


def safe_join(base: str, relative: str) -> str:
    """``base/relative`` if it stays inside ``base`` (no absolute paths, no ``..``, no links).

    Raises:
        UnsafePathError: naming the offending path.
    """
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise UnsafePathError(f"path {relative!r} must be relative")
    parts = [p for p in re.split(r"[\\/]+", relative) if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"path {relative!r} names no file")
    if ".." in parts:
        raise UnsafePathError(f"path {relative!r} may not contain '..'")
    joined = os.path.join(base, *parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(joined)
    if real != real_base and not real.startswith(real_base + os.sep):
        raise UnsafePathError(f"path {relative!r} leads outside its directory (a link?)")
    return joined


def computation_dir(prefix: str, dest_path: str | None, name: str, comp_id: int) -> str:
    """The directory for a computation: ``prefix/dest_path`` or a fresh one under prefix."""
    os.makedirs(prefix, exist_ok=True)
    if dest_path:
        path = safe_join(prefix, dest_path.lstrip("/\\"))
    else:
        clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "computation"
        path = os.path.join(prefix, f"{clean}-{comp_id}-{secrets.token_hex(4)}")
    os.makedirs(path, exist_ok=True)
    return path
