"""Computations and helpers of the feature tests (``test_feature_*.py``).

The functions jobs run are shipped by value (registered below, as
:mod:`harness.computations` is by the conftest). Each imports what it needs inside: it runs in
a fresh interpreter on the node. Names that only exist on the node (globals made by
``setup``, objects installed by ``depends``, ``dispy_provisional_result`` and
``dispy_send_file``) are marked ``noqa: F821``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import psutil

from harness.polling import wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- what the tests use on the client side --------------------------------------------------


def wait_nodes(cluster: Any, count: int, timeout: float = 15.0) -> list[Any]:
    """Wait until ``count`` nodes serve ``cluster``; return them."""
    return wait_for(
        lambda: cluster.nodes() if len(cluster.nodes()) >= count else None,
        timeout,
        lambda: f"{count} node(s) should join cluster {cluster.name}; have {cluster.nodes()}",
    )


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """How many of the (start, end) intervals ran at the same time, at most."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


@contextlib.contextmanager
def temp_import(folder: Path, name: str) -> Iterator[ModuleType]:
    """Import module (or package) ``name`` from ``folder``, then forget it again."""
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``folder`` (created); return ``folder``."""
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


class Recorder:
    """Thread-safe list of what callbacks saw: ``callback`` and ``cluster_status`` for a
    cluster. Provisional callbacks get a snapshot of the job, so we copy what we need."""

    def __init__(self, callback_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, int, Any]] = []  # (job.id, status, result)
        self.events: list[tuple[int, Any, Any]] = []  # (status, node, job)
        self.callback_delay = callback_delay

    def callback(self, job: Any) -> None:
        if self.callback_delay:
            time.sleep(self.callback_delay)
        with self.lock:
            self.calls.append((job.id, int(job.status), job.result))

    def cluster_status(self, status: int, node: Any, job: Any) -> None:
        with self.lock:
            self.events.append((int(status), node, job))

    def node_events(self, status: int) -> list[Any]:
        with self.lock:
            return [node for s, node, job in self.events if s == status and job is None]

    def calls_for(self, job_id: Any) -> list[tuple[int, Any]]:
        with self.lock:
            return [(s, r) for i, s, r in self.calls if i == job_id]


# -- computations ------------------------------------------------------------------------


def whereami() -> str:
    import os

    return os.getcwd()


def use_module(x: int) -> tuple[int, str, str]:
    import os

    import helper_mod_xyz  # only the node's copy from depends can satisfy this

    return helper_mod_xyz.triple(x), helper_mod_xyz.VALUE, os.path.dirname(helper_mod_xyz.__file__)


def use_package(x: int) -> tuple[int, str]:
    import helper_pkg_xyz
    from helper_pkg_xyz import sub

    return sub.shift(x), helper_pkg_xyz.NAME


def read_text(name: str) -> str:
    with open(name) as fh:
        return fh.read()


def use_point(p: Any) -> tuple[str, str, int]:
    return type(p).__name__, type(p).__module__, p.norm2()


def call_by_name(x: int) -> Any:
    return helper_fn_xyz(x)  # noqa: F821 - installed on the node by depends


def _make_depends_helper() -> Any:
    # Not a global of this module under its name: otherwise cloudpickle would ship it with
    # call_by_name as one of its globals, and the test would pass without depends.
    def helper_fn_xyz(x: int) -> tuple[str, int]:
        return ("helper", x * 11)

    return helper_fn_xyz


DEPENDS_HELPER = _make_depends_helper()
"""Sent in ``depends``; ``call_by_name`` finds it by its name on the node."""


def job_depends_view(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """What a job sees of its own file (``name``) and of its arguments."""
    import os

    here = os.path.exists(name)
    text = None
    if here:
        with open(name) as fh:
            text = fh.read()
    return {
        "cwd": os.getcwd(),
        "exists": here,
        "text": text,
        "args": args,
        "kwargs": kwargs,
        "listing": sorted(os.listdir(".")),
    }


def setup_record(count_path: str) -> int:
    """Setup (used through functools.partial): record the directory and count runs."""
    import os

    global SETUP_CWD, SETUP_PID
    SETUP_CWD = os.getcwd()
    SETUP_PID = os.getpid()
    with open("made_by_setup.txt", "w") as fh:
        fh.write("setup was here")
    with open(count_path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return 0


def setup_plain() -> int:
    global SETUP_CWD, SETUP_PID
    import os

    SETUP_CWD = os.getcwd()
    SETUP_PID = os.getpid()
    with open("made_by_setup.txt", "w") as fh:
        fh.write("plain setup")
    return 0


def read_setup_globals(n: int) -> dict[str, Any]:
    import os

    with open("made_by_setup.txt") as fh:
        made = fh.read()
    return {
        "n": n,
        "setup_cwd": SETUP_CWD,
        "setup_pid": SETUP_PID,
        "cwd": os.getcwd(),
        "made": made,
        "ppid": os.getppid(),
    }


def setup_nonzero() -> int:
    return 3


def setup_raises() -> int:
    raise RuntimeError("setup exploded on purpose")


def touch(path: str) -> str:
    """A job whose only effect is a file the test can look for."""
    with open(path, "w") as fh:
        fh.write("ran")
    return path


def cleanup_marker(path: str) -> None:
    """Cleanup (used through functools.partial): leave a mark outside the directory."""
    import os

    with open(path, "w") as fh:
        fh.write(os.getcwd())


def interval(seconds: float) -> tuple[float, float]:
    """Sleep ``seconds``; return when the job started and ended."""
    import time as _time

    start = _time.time()
    _time.sleep(seconds)
    return start, _time.time()


def provisional_then_wait(release: str, count: int, timeout: float = 30.0) -> tuple[str, int]:
    """Send ``count`` provisional results, then wait for the file ``release``."""
    import os
    import time as _time

    for i in range(count):
        dispy_provisional_result(("step", i))  # noqa: F821 - provided on the node
    deadline = _time.monotonic() + timeout
    while not os.path.exists(release) and _time.monotonic() < deadline:
        _time.sleep(0.02)
    return ("final", count)


def search(good: bool, started: str) -> str:
    """The reference's optimisation pattern: a provisional result, then keep working."""
    import os
    import time as _time

    with open(started, "w") as fh:
        fh.write(str(os.getpid()))
    if good:
        _time.sleep(0.2)
        dispy_provisional_result(0.001)  # noqa: F821
    else:
        dispy_provisional_result(0.5)  # noqa: F821
    _time.sleep(60)
    return "no better result"


def make_and_send(relpath: str, size: int) -> Any:
    """Write ``size`` bytes to ``relpath`` (under the job's directory) and send it."""
    import os

    folder = os.path.dirname(relpath)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(relpath, "wb") as fh:
        fh.write(pattern_bytes(size))
    return dispy_send_file(relpath)  # noqa: F821


def pattern_bytes(size: int) -> bytes:
    """``size`` bytes of a fixed pattern (a prime period, so truncation shows)."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def send_path(path: str, create: bool) -> Any:
    """Send ``path`` (absolute or relative, e.g. '../x'); create it first if asked."""
    if create:
        with open(path, "w") as fh:
            fh.write("should never reach the client")
    return dispy_send_file(path)  # noqa: F821


def send_link(target: str) -> Any:
    """Send a link (inside the job's directory) that points at ``target`` outside it."""
    import os

    os.symlink(target, "innocent.txt")
    return dispy_send_file("innocent.txt")  # noqa: F821


def block_until(release: str, started: str, timeout: float = 30.0) -> int:
    """Write our pid to ``started``, then wait for the file ``release``."""
    import os
    import time as _time

    with open(started + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(started + ".tmp", started)
    deadline = _time.monotonic() + timeout
    while not os.path.exists(release) and _time.monotonic() < deadline:
        _time.sleep(0.02)
    return os.getpid()


def node_tag(n: int) -> tuple[str | None, int]:
    import os

    return os.environ.get("NODE_TAG"), n


def span(release: str, started: str, seconds: float = 0.0, timeout: float = 30.0) -> tuple:
    """Note the start in ``started``, wait for the file ``release``, sleep ``seconds``;
    return (start, end) wall times."""
    import os
    import time as _time

    start = _time.time()
    with open(started + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(started + ".tmp", started)
    deadline = _time.monotonic() + timeout
    while not os.path.exists(release) and _time.monotonic() < deadline:
        _time.sleep(0.02)
    _time.sleep(seconds)
    return start, _time.time()


def setup_own(data_file: str | None = None, tag: str = "common") -> int:
    """Setup for a node's own set-up: keep its ``setup_args`` and its own file's text
    (a node given none keeps the defaults) in globals the jobs read."""
    global OWN_TAG, OWN_DATA
    OWN_TAG = tag
    OWN_DATA = None
    if data_file is not None:
        with open(data_file) as fh:
            OWN_DATA = fh.read()
    return 0


def own_values(n: int) -> tuple[int, str | None, str, str | None, list[str]]:
    """(n, the node's name, setup's tag and file text, the data files in the directory)."""
    import os
    import time as _time

    _time.sleep(0.2)  # long enough for every node to take jobs
    files = sorted(name for name in os.listdir(".") if name.startswith("own-data-"))
    return n, globals().get("dispy_node_name"), OWN_TAG, OWN_DATA, files
