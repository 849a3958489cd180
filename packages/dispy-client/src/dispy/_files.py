"""Where files sent by jobs land on the client (they are written by dispy_core.files)."""

from __future__ import annotations

from dispy_core.paths import safe_join


def safe_local_path(base: str, relative: str) -> str:
    """Where a file sent by a job lands under ``base``; refuses escapes.

    Raises:
        dispy_core.paths.UnsafePathError: (a ValueError) absolute path, '..', NUL, no
            name, or a link leading outside ``base``.
    """
    return safe_join(base, relative, "the client's directory")
