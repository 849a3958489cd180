"""Turning ``depends`` (and ``dispy_job_depends``) into objects and files for the nodes.

Functions, classes and instances travel inside the pickled bundle (or job payload) and are
made visible by name on the node; modules and data files travel as files into the
computation's directory, which is on the computation's ``sys.path``.
"""

from __future__ import annotations

import inspect
import os
import sys
import sysconfig
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dispy_core import serialize
from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE, parts_of


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A file for the node: where it goes (relative) and what it holds."""

    path: str
    data: bytes
    mode: int
    mtime: float


class DependencyError(ValueError):
    """A dependency cannot be sent (missing file, unsupported object)."""


def read_file(path: str, rel: str) -> FileSpec:
    """A file to send, read whole (it travels as one message)."""
    try:
        stat = os.stat(path)
        if stat.st_size > DEFAULT_MAX_MESSAGE:
            raise DependencyError(
                f"file {path!r} is {stat.st_size} bytes, over the {DEFAULT_MAX_MESSAGE} bytes "
                "one message can carry"
            )
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DependencyError(f"file {path!r} cannot be read: {reason}") from None
    return FileSpec(rel, data, stat.st_mode & 0o777, stat.st_mtime)


def _module_files(module: ModuleType) -> list[FileSpec]:
    filename = getattr(module, "__file__", None)
    if not filename:
        return []  # built into Python: every node has it
    if hasattr(module, "__path__") and os.path.basename(filename).startswith("__init__."):
        root = os.path.dirname(filename)
        base = os.path.basename(root)
        out: list[FileSpec] = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(folder, name)
                rel = os.path.join(base, os.path.relpath(full, root))
                out.append(read_file(full, rel))
        return out
    if filename.endswith((".pyc", ".pyo")):
        filename = filename[:-1]
    return [read_file(filename, os.path.basename(filename))]


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def user_modules(objects: list[Any]) -> list[ModuleType]:
    """Modules (other than ``__main__``) that define these objects and are the user's own
    code, not the standard library or an installed package: they must travel by value."""
    roots = _installed_roots()
    out: list[ModuleType] = []
    for obj in objects:
        target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
        module = sys.modules.get(getattr(target, "__module__", "") or "")
        if module is None or module.__name__ == "__main__" or module in out:
            continue
        filename = getattr(module, "__file__", None)
        if not filename or os.path.realpath(filename).startswith(roots):
            continue
        out.append(module)
    return out


def split_depends(
    depends: list[Any] | tuple[Any, ...] | None, *, program: bool = False
) -> tuple[list[Any], list[FileSpec]]:
    """(objects for the bundle, files for the directory).

    Raises:
        DependencyError: a file is missing, or an object is given for a program computation.
    """
    objects: list[Any] = []
    files: list[FileSpec] = []
    for dep in depends or ():
        if isinstance(dep, str | os.PathLike):
            path = os.fspath(dep)
            if not os.path.isfile(path):
                raise DependencyError(f"dependency file {path!r} does not exist")
            files.append(read_file(path, os.path.basename(path)))
        elif inspect.ismodule(dep):
            files.extend(_module_files(dep))
        elif program:
            raise DependencyError(
                f"a program computation takes only modules and files as dependencies, "
                f"not {type(dep).__name__}"
            )
        else:
            objects.append(dep)
    return objects, files


def own_setup(
    bundle: dict[str, Any] | None, depends: list[Any], setup_args: tuple[Any, ...]
) -> tuple[list[FileSpec], bytes | None]:
    """A node's own files and computation.start payload, for a NodeAllocate's ``depends``
    and ``setup_args`` (``bundle`` None: a program computation, whose payload stays the
    common one, so None is returned for it).

    JobCluster and SharedJobCluster both use it: the bundle is pickled again with the extra
    objects and the arguments, so only that node's setup sees them.

    Raises:
        DependencyError: a dependency cannot be read, or ``setup_args`` are given for a
            program computation (it has no setup to call with them).
    """
    objects, files = split_depends(depends, program=bundle is None)
    if bundle is None:
        if setup_args:
            raise DependencyError("setup_args need a Python function computation with setup")
        return files, None
    own = dict(bundle)
    own["depends"] = list(own["depends"]) + objects
    own["setup_args"] = tuple(setup_args)
    pickled = serialize.dumps(own)
    # one buffer: the scheduler is told its size (a list's parts arrive concatenated anyway)
    return files, pickled if isinstance(pickled, bytes) else b"".join(parts_of(pickled))
