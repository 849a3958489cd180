"""The functions jobs run on the nodes.

They live here, not in the test modules, and are shipped by value (see
:func:`ship_by_value`): pytest imports test modules under names a node could not import, and
a real user's function travels by value too. Each one imports what it needs inside, since it
runs in a fresh interpreter on the node.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle


def ship_by_value() -> None:
    """Make cloudpickle send this module's functions by value, not as an import."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_plus(n: int, k: int = 7) -> int:
    """Pure and cheap: the history checker's reference function."""
    return n * n + k


def talk(n: int) -> int:
    """Print to stdout and stderr, then return; raise for negative ``n``."""
    import sys as _sys

    print(f"out {n}")
    print(f"err {n}", file=_sys.stderr)
    if n < 0:
        raise ValueError(f"boom {n}")
    return n * 10


def crash(mode: str, n: int = 0) -> Any:
    """Fail the way ``mode`` says: ``exit`` (os._exit(3)), ``segv`` (NULL read), ``sysexit``
    (sys.exit(5)), ``unpicklable`` (return a lock) or ``ok``."""
    import os
    import sys as _sys

    if mode == "exit":
        os._exit(3)
    if mode == "sysexit":
        _sys.exit(5)
    if mode == "unpicklable":
        import threading

        return threading.Lock()
    if mode == "segv":
        import ctypes

        return ctypes.string_at(0)
    return ("ok", n)


def getenv(name: str) -> str | None:
    import os

    return os.environ.get(name)


def tagged(tag: str, n: int) -> tuple[str, str | None, int]:
    """Where the job ran (the node's ``NODE_TAG``), for whom (``tag``), and ``n``."""
    import os

    return (tag, os.environ.get("NODE_TAG"), n * 3)


def block_on(marker: str, seconds: float = 60.0) -> int:
    """Write our pid to ``marker``, then sleep: a job the test knows is running."""
    import os
    import time

    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(seconds)
    return os.getpid()


def deaf_to_interrupt(marker: str, seconds: float = 60.0) -> int:
    """Like :func:`block_on`, but ignoring SIGINT: a job a cancel must kill."""
    import os
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return os.getpid()


def pid_and_value(n: int) -> tuple[int, int]:
    import os

    return (os.getpid(), n + 1)


def reshape(data: Any, extra: dict[str, Any] | None = None) -> Any:
    """Return large arguments in a few shapes: bare, in a tuple, in a dict, nested deep."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes | bytearray) else None
    return (data, {"again": data, "extra": extra}, [[[data]]], digest)


def echo_len(tag: int, data: bytes) -> tuple[int, int, bytes]:
    """Echo ``data`` with its tag and length."""
    return (tag, len(data), data)


def file_modes(*names: str) -> list[int]:
    """Permission bits of the job's directory and of each of ``names`` in it."""
    import os

    return [os.stat(p).st_mode & 0o7777 for p in (".", *names)]


def send_with_mode(relpath: str, mode: int) -> Any:
    """Write ``relpath``, give it ``mode``, and send it to the client."""
    import os

    with open(relpath, "w") as fh:
        fh.write("sent")
    os.chmod(relpath, mode)
    return dispy_send_file(relpath)  # type: ignore[name-defined]  # noqa: F821


def loud(megabytes: int) -> int:
    """Print ``megabytes`` MiB to stdout, then one last line."""
    import sys

    block = ("y" * 1023 + "\n") * 1024
    for _ in range(megabytes):
        sys.stdout.write(block)
    print("last line")
    return megabytes


def setup_forever() -> int:
    """A setup that never ends, with a child process of its own (both must be stopped)."""
    import subprocess
    import time

    subprocess.Popen(["sleep", "3600"])
    time.sleep(3600)
    return 0
