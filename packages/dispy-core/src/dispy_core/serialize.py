"""The one place where dispy turns bytes into Python objects.

Only call :func:`loads` on payloads that arrived on an authenticated connection (or from a
process this node started itself): unpickling runs code.
"""

from __future__ import annotations

import pickle
from types import ModuleType
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


class SerializationError(ValueError):
    """An object could not be pickled (or a payload unpickled)."""


def dumps(obj: Any) -> bytes:
    """Pickle with cloudpickle so lambdas, closures and local functions travel too.

    Raises:
        SerializationError: naming the object's type and the reason.
    """
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
        return data
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {type(obj).__name__} object: {type(exc).__name__}: {exc}"
        ) from exc


def pickle_by_value(module: ModuleType) -> None:
    """Send ``module``'s functions and classes by value from now on (this process).

    For code the nodes do not have: without it, cloudpickle refers to them by module name.
    """
    cloudpickle.register_pickle_by_value(module)


def dumps_plain(obj: Any) -> bytes:
    """Pickle data made only of builtin types (faster than cloudpickle)."""
    return pickle.dumps(obj, protocol=PROTOCOL)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle an authenticated payload.

    Raises:
        SerializationError: the payload cannot be unpickled here (e.g. a missing module).
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot deserialize: {type(exc).__name__}: {exc}") from exc
