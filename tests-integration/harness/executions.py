"""Jobs that leave a trace of every execution, so a test can count them (Jepsen's node side).

:func:`recorded` is the job of the fault-injection suite. Each execution writes
``<log_dir>/<n>.<uuid>.start`` (holding the job process's pid and the node's ``NODE_TAG``)
when it starts and ``<n>.<uuid>.end`` when it returns, both atomically (temporary name, then
rename). It can wait for a :class:`Gate` file the test creates, so a test knows exactly which
jobs are running when it injects a fault. Its result is :func:`expected` of its arguments,
the pure function the history checkers compare Finished results with.

:class:`ExecutionLog` reads those files back; :func:`recovery_problems` checks what a killed
client saw plus what ``recover_jobs`` returned (the client-side history of a crashed client).
Like :mod:`harness.computations`, this module is shipped to nodes by value.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from dispy import DispyJob

cloudpickle.register_pickle_by_value(sys.modules[__name__])

GATE_LIMIT = 120.0


def recorded(n: int, log_dir: str, seconds: float = 0.0, gate: str | None = None) -> Any:
    """Record this execution, wait for ``gate`` (a file) if given, sleep, print, return."""
    import os as _os
    import time as _time
    import uuid

    tag = f"{n}.{uuid.uuid4().hex}"

    def put(suffix: str, text: str) -> None:
        path = _os.path.join(log_dir, f"{tag}.{suffix}")
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        _os.replace(path + ".tmp", path)

    put("start", f"{_os.getpid()} {_os.environ.get('NODE_TAG', '')}")
    if gate is not None:
        limit = _time.monotonic() + GATE_LIMIT
        while not _os.path.exists(gate) and _time.monotonic() < limit:
            _time.sleep(0.02)
    if seconds:
        _time.sleep(seconds)
    print(f"job {n} says hello")
    put("end", "")
    return (n, n * n + 7)


def expected(n: int, *_args: Any, **_kwargs: Any) -> tuple[int, int]:
    """What a Finished :func:`recorded` job must return."""
    return (n, n * n + 7)


def expected_stdout(n: int) -> str:
    return f"job {n} says hello\n"


class Gate:
    """A file the test creates to let gated jobs go on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def open(self) -> None:
        self.path.write_text("go")


@dataclass(frozen=True)
class Execution:
    n: int
    uid: str
    pid: int
    node: str
    ended: bool


class ExecutionLog:
    """The executions :func:`recorded` jobs left in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return str(self.root)

    def executions(self) -> list[Execution]:
        names = set(os.listdir(self.root))
        out = []
        for name in sorted(names):
            if not name.endswith(".start"):
                continue
            n_text, uid, _ = name.split(".")
            pid_text, _, node = (self.root / name).read_text().partition(" ")
            ended = f"{n_text}.{uid}.end" in names
            out.append(Execution(int(n_text), uid, int(pid_text), node, ended))
        return out

    def starts(self) -> Counter[int]:
        """How many times each job (by ``n``) started."""
        return Counter(e.n for e in self.executions())

    def ends(self) -> Counter[int]:
        """How many times each job (by ``n``) ran to its end."""
        return Counter(e.n for e in self.executions() if e.ended)

    def running(self, node: str | None = None) -> list[Execution]:
        """Executions started and not ended (on ``node``, a NODE_TAG, if given)."""
        return [e for e in self.executions() if not e.ended and (node is None or e.node == node)]

    def wait_running(self, count: int, timeout: float, node: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while len(self.running(node)) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} running execution(s) on {node or 'any node'} within "
                    f"{timeout:g} s; executions: {self.executions()}"
                )
            time.sleep(0.05)


def recovery_problems(
    submitted: Iterable[int],
    seen_by_client: Iterable[int],
    recovered: Iterable[DispyJob],
    *,
    allow_redelivery: bool = True,
) -> list[str]:
    """Check a crashed client's history: what it saw before dying plus what recovery returned.

    Every submitted job must end exactly once across the two (Finished, with
    :func:`expected`'s result and the job's stdout); ``allow_redelivery`` tolerates a job
    the client saw whose result recovery returns again (the client died between getting it
    and logging it: at-least-once across a crash), but never a job recovered twice.
    """
    submitted = set(submitted)
    seen = list(seen_by_client)
    out: list[str] = []
    counts = Counter(seen)
    out += [f"job {n}: the client saw it end {c} times" for n, c in counts.items() if c > 1]
    out += [
        f"job {n}: seen by the client but never submitted" for n in counts if n not in submitted
    ]
    got: Counter[int] = Counter()
    for job in recovered:
        label = f"recovered {job!r} (id {job.id!r})"
        if job.status != DispyJob.Finished:
            out.append(f"{label}: status {job.status}, exception {job.exception!r}")
            continue
        if not isinstance(job.result, tuple) or len(job.result) != 2:
            out.append(f"{label}: unexpected result {job.result!r}")
            continue
        n = job.result[0]
        got[n] += 1
        if job.result != expected(n):
            out.append(f"{label}: result {job.result!r} != {expected(n)!r}")
        if job.stdout != expected_stdout(n):
            out.append(f"{label}: stdout {job.stdout!r}")
        if job.exception:
            out.append(f"{label}: exception {job.exception!r}")
        if n not in submitted:
            out.append(f"{label}: job {n} was never submitted")
        elif n in counts and not allow_redelivery:
            out.append(f"{label}: job {n} had already ended at the client")
    out += [f"job {n}: recovered {c} times" for n, c in got.items() if c > 1]
    lost = sorted(submitted - set(counts) - set(got))
    if lost:
        out.append(f"jobs {lost}: neither seen by the client nor recovered")
    return out
