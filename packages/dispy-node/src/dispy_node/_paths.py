"""Where a computation's files live on the node, without ever escaping the prefix.

Every name a client sends goes through :func:`dispy_core.paths.safe_join` (re-exported
here); this module adds what only the node has: the prefix, ``dest_path`` and the result
store that no computation may use.
"""

from __future__ import annotations

import os
import re
import secrets

from dispy_core.files import makedirs
from dispy_core.paths import Refusal, UnsafePathError, safe_join
from dispy_core.private_dir import PrivateDirError, prepare_private_dir
from dispy_core.result_store import DIRNAME, PRIVATE_DIR

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
    """Make the prefix (0700, with any missing parent) or check the one that is there
    (:func:`dispy_core.private_dir.prepare_private_dir`, shared with the scheduler).

    Returns:
        A warning to log, if the prefix is there and open to others.

    Raises:
        PrefixError: naming the directory and its owner.
    """
    try:
        return prepare_private_dir(
            prefix,
            clean=clean,
            label="--dest_path_prefix",
            server="this node",
            note="each computation's files stay private",
        )
    except PrivateDirError as exc:
        raise PrefixError(str(exc)) from None


__all__ = [
    "PRIVATE_DIR",
    "RESULTS_DIRNAME",
    "PrefixError",
    "UnsafePathError",
    "computation_dir",
    "prepare_prefix",
    "safe_join",
]
