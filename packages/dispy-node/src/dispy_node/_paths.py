"""Where a computation's files live on the node, without ever escaping the prefix.

Every name a client sends goes through :func:`dispy_core.paths.safe_join` (re-exported
here); this module adds what only the node has: the prefix, ``dest_path`` and the result
store that no computation may use.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat

from dispy_core.files import makedirs
from dispy_core.paths import Refusal, UnsafePathError, safe_join
from dispy_core.result_store import DIRNAME, PRIVATE_DIR
from dispy_core.secret import user_name

# The node's store of undelivered results, under the prefix (dispy_core.result_store): no
# computation may live there, or it would read other clients' results and its cleanup
# would delete them. Computation directories, like the store, are the node's user's only
# (PRIVATE_DIR).
RESULTS_DIRNAME = DIRNAME


class PrefixError(ValueError):
    """The node cannot use its ``dest_path_prefix`` safely."""


def computation_dir(prefix: str, dest_path: str | None, name: str, comp_id: int) -> str:
    """The directory for a computation: ``prefix/dest_path`` or a fresh one under prefix.

    Raises:
        UnsafePathError: ``dest_path`` escapes the prefix, or names the prefix itself or
            the node's result store.
    """
    makedirs(prefix, PRIVATE_DIR)
    if dest_path:
        try:
            path = safe_join(prefix, dest_path.lstrip("/\\"))
        except UnsafePathError as exc:
            if exc.refusal is Refusal.BASE:  # in the node's own words
                raise UnsafePathError(
                    f"path {dest_path!r} is the node's dest_path_prefix itself",
                    dest_path,
                    Refusal.BASE,
                ) from None
            raise
        _refuse_node_own(prefix, path, dest_path)
    else:
        clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "computation"
        path = os.path.join(prefix, f"{clean}-{comp_id}-{secrets.token_hex(4)}")
    makedirs(path, PRIVATE_DIR)
    return path


def _refuse_node_own(prefix: str, path: str, dest_path: str) -> None:
    real_prefix = os.path.realpath(prefix)
    real = os.path.realpath(path)  # not the prefix itself: safe_join refused that
    store = os.path.join(real_prefix, RESULTS_DIRNAME)
    # Compare each level with the store by identity too, for file systems that ignore case.
    probe = real
    while probe.startswith(real_prefix + os.sep):
        if probe == store or (
            os.path.lexists(store) and os.path.exists(probe) and os.path.samefile(probe, store)
        ):
            raise UnsafePathError(
                f"path {dest_path!r} is inside the node's result store ({RESULTS_DIRNAME})",
                dest_path,
            )
        probe = os.path.dirname(probe)


def prepare_prefix(prefix: str, clean: bool) -> str | None:
    """Make the prefix (0700, with any missing parent) or check the one that is there.

    Clients' code, files and undelivered results live under it: a prefix another user owns
    (or can replace, through a parent they own or anyone may write) would let that user
    read them, or plant links and files the node then writes through or runs.

    Returns:
        A warning to log, if the prefix is there and open to others.

    Raises:
        PrefixError: naming the directory and its owner.
    """
    for folder in _ancestors(prefix):
        _check_ancestor(prefix, folder)
    try:
        _check_owner(prefix, os.stat(prefix))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PrefixError(
            f"cannot use --dest_path_prefix {prefix}: {exc.strerror or exc}"
        ) from None
    else:
        if clean:
            shutil.rmtree(prefix, ignore_errors=True)
    try:
        makedirs(prefix, PRIVATE_DIR)
        info = os.stat(prefix)
    except OSError as exc:
        raise PrefixError(
            f"cannot create --dest_path_prefix {prefix}: {exc.strerror or exc}"
        ) from None
    _check_owner(prefix, info)
    if info.st_mode & 0o077:
        return (
            f"--dest_path_prefix {prefix} may be listed by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); each computation's files stay private, "
            f"but consider: chmod 700 {prefix}"
        )
    return None


def _ancestors(path: str) -> list[str]:
    # Of the directory the prefix resolves to: a link may lead elsewhere.
    real = os.path.dirname(os.path.realpath(path))
    out = [real]
    while os.path.dirname(real) != real:
        real = os.path.dirname(real)
        out.append(real)
    return out


def _check_ancestor(prefix: str, folder: str) -> None:
    try:
        info = os.stat(folder)
    except OSError:
        return  # missing: makedirs creates it, private
    if info.st_uid not in (0, os.geteuid()):
        raise PrefixError(
            f"--dest_path_prefix {prefix} is inside {folder}, which belongs to "
            f"{_owner(info.st_uid)}: that user could replace it; choose another prefix"
        )
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise PrefixError(
            f"--dest_path_prefix {prefix} is inside {folder}, which anyone may write "
            f"(mode {stat.S_IMODE(info.st_mode):04o}, not sticky): choose another prefix"
        )


def _check_owner(prefix: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise PrefixError(f"--dest_path_prefix {prefix} is not a directory")
    if info.st_uid != os.geteuid():
        raise PrefixError(
            f"--dest_path_prefix {prefix} belongs to {_owner(info.st_uid)}, not to "
            f"{user_name()!r} who runs this node: that user could read clients' files and "
            "results; choose another prefix (or change its owner)"
        )


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


__all__ = [
    "PRIVATE_DIR",
    "RESULTS_DIRNAME",
    "PrefixError",
    "UnsafePathError",
    "computation_dir",
    "prepare_prefix",
    "safe_join",
]
