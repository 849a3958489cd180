"""A server's private directory (the node's prefix, the scheduler's store): made 0700 with
any missing parent, or checked when it is there.

Clients' code, files and undelivered results live under such a directory: one another
user owns (or can replace, through a parent they own or anyone may write) would let that
user read them, or plant links and files the server then writes through or runs. Both the
node and the scheduler start by calling :func:`prepare_private_dir`.
"""

from __future__ import annotations

import os
import shutil
import stat

from dispy_core.files import makedirs
from dispy_core.secret import user_name

# Undelivered results and clients' files: the server's user only.
PRIVATE_DIR = 0o700


class PrivateDirError(ValueError):
    """The directory cannot be used safely (the message names it and why)."""


def prepare_private_dir(
    path: str, *, clean: bool, label: str, server: str, note: str = ""
) -> str | None:
    """Make ``path`` (0700, with any missing parent) or check the one that is there; with
    ``clean``, empty it first (only once it is known to be ours).

    Args:
        path: the directory.
        clean: remove what an earlier run left in it.
        label: how messages name it (``"--dest_path_prefix"``).
        server: who runs here, for messages (``"this node"``).
        note: said in the warning about a directory open to others, before the advice.

    Returns:
        A warning to log, if the directory is there and open to others.

    Raises:
        PrivateDirError: naming the directory and its owner.
    """
    for folder in _ancestors(path):
        _check_ancestor(label, path, folder)
    try:
        _check_owner(label, path, os.stat(path), server)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PrivateDirError(f"cannot use {label} {path}: {exc.strerror or exc}") from None
    else:
        if clean:
            shutil.rmtree(path, ignore_errors=True)
    try:
        makedirs(path, PRIVATE_DIR)
        info = os.stat(path)
    except OSError as exc:
        raise PrivateDirError(f"cannot create {label} {path}: {exc.strerror or exc}") from None
    _check_owner(label, path, info, server)
    if info.st_mode & 0o077:
        return (
            f"{label} {path} may be listed by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); {note}{'' if not note else ', but '}"
            f"consider: chmod 700 {path}"
        )
    return None


def _ancestors(path: str) -> list[str]:
    # Of the directory the path resolves to: a link may lead elsewhere.
    real = os.path.dirname(os.path.realpath(path))
    out = [real]
    while os.path.dirname(real) != real:
        real = os.path.dirname(real)
        out.append(real)
    return out


def _check_ancestor(label: str, path: str, folder: str) -> None:
    try:
        info = os.stat(folder)
    except OSError:
        return  # missing: makedirs creates it, private
    if info.st_uid not in (0, os.geteuid()):
        raise PrivateDirError(
            f"{label} {path} is inside {folder}, which belongs to "
            f"{_owner(info.st_uid)}: that user could replace it; choose another directory"
        )
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise PrivateDirError(
            f"{label} {path} is inside {folder}, which anyone may write "
            f"(mode {stat.S_IMODE(info.st_mode):04o}, not sticky): choose another directory"
        )


def _check_owner(label: str, path: str, info: os.stat_result, server: str) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise PrivateDirError(f"{label} {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise PrivateDirError(
            f"{label} {path} belongs to {_owner(info.st_uid)}, not to "
            f"{user_name()!r} who runs {server}: that user could read clients' files and "
            "results; choose another directory (or change its owner)"
        )


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


__all__ = ["PRIVATE_DIR", "PrivateDirError", "prepare_private_dir"]
