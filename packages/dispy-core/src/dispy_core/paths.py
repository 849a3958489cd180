"""The one check for a file name that crosses the wire: it must land inside its directory.

A peer names files relative to a directory of ours: the node's computation directory
(``file.put``, ``dest_path``, a transferred program), the client's working directory
(``dispy_send_file``), and the job's own directory in the worker. Every such name goes
through :func:`safe_join`, so the rules cannot drift apart between the three. The rules are
the strictest any of them had: no absolute path, no ``..`` component, no NUL, a name that
names something below the directory (not the directory itself), and no link on the way
that leads outside it (checked on the real path, with :func:`os.path.realpath`).

The check is made when the name arrives; it does not stop a link planted *after* it (the
writers in :mod:`dispy_core.files` never follow a link at the final name).
"""

from __future__ import annotations

import enum
import os
import re

# Both separators count: a name from a Windows peer must not smuggle '..' past a POSIX check.
_SEPARATORS = re.compile(r"[\\/]+")


class Refusal(enum.Enum):
    """Why a name was refused (callers that word their own message look at this)."""

    ABSOLUTE = "absolute"
    NUL = "nul"
    EMPTY = "empty"
    DOT_DOT = "dot-dot"
    OUTSIDE = "outside"
    BASE = "base"


class UnsafePathError(ValueError):
    """A peer named a path outside its directory; the message names the path and why.

    Attributes:
        path: the name as the peer sent it.
        refusal: which rule of :func:`safe_join` it broke (None: a caller's own rule).
    """

    def __init__(self, message: str, path: str = "", refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.refusal = refusal


def safe_join(base: str, relative: str, where: str = "its directory") -> str:
    """``base/relative`` if it stays inside ``base``.

    Separators may be ``/`` or ``\\``; empty and ``.`` components are dropped, so
    ``"./sub//f"`` is ``base/sub/f``. The result is the joined path (links not
    resolved), for the caller to open or create.

    Args:
        base: the directory the name must stay in (it need not exist yet).
        relative: the name as the peer sent it.
        where: how a refusal calls ``base`` ("the client's directory", ...).

    Returns:
        The path of ``relative`` under ``base``.

    Raises:
        UnsafePathError: absolute path, NUL, no name at all, a ``..`` component, a link
            leading outside ``base``, or a name that resolves to ``base`` itself.

    Example:
        >>> safe_join("/srv/comp", "data/in.txt")
        '/srv/comp/data/in.txt'
    """
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise UnsafePathError(
            f"path {relative!r} must be relative: absolute paths are not accepted",
            relative,
            Refusal.ABSOLUTE,
        )
    if "\0" in relative:
        raise UnsafePathError(f"path {relative!r} holds a NUL character", relative, Refusal.NUL)
    parts = [part for part in _SEPARATORS.split(relative) if part not in ("", ".")]
    if not parts:
        raise UnsafePathError(
            f"path {relative!r} names no file: a name must stay inside {where}, below it",
            relative,
            Refusal.EMPTY,
        )
    if ".." in parts:
        raise UnsafePathError(
            f"path {relative!r} may not contain '..': it must stay inside {where}",
            relative,
            Refusal.DOT_DOT,
        )
    joined = os.path.join(base, *parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(joined)
    if real == real_base:
        raise UnsafePathError(
            f"path {relative!r} leads to {where} itself (a link?), not to a file in it",
            relative,
            Refusal.BASE,
        )
    if not real.startswith(real_base.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"path {relative!r} leads outside {where} (a link?)", relative, Refusal.OUTSIDE
        )
    return joined


__all__ = ["Refusal", "UnsafePathError", "safe_join"]
