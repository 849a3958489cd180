"""A Jepsen-style history of one cluster's jobs, and the checks we run on it.

Pass ``history.callback`` and ``history.cluster_status`` to the cluster, submit through
``history.submit(cluster, *args)``, wait, then call ``history.check(fn)``. The history
records, per job: its arguments, every status ``cluster_status`` reported for it, and every
call of ``callback``. The checks (all problems are reported at once):

* every submitted job reached exactly one terminal status (Finished, Terminated, Cancelled
  or Abandoned), and its ``finish`` event is set;
* the job statuses reported for it follow the allowed transitions
  (``dispy_core.protocol.jobs.TRANSITIONS``) and nothing comes after the terminal one;
* ``callback`` ran exactly once per job, after the job ended, and never for a job that was
  not submitted here;
* each Finished job's result equals ``fn(*args, **kwargs)``; a Terminated job has no result
  and an exception text.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dispy import DispyJob
from dispy_core.protocol.jobs import TERMINAL, JobStatus, can_move

_JOB_STATUSES = frozenset(int(s) for s in JobStatus)


@dataclass
class JobRecord:
    job: DispyJob
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    statuses: list[int] = field(default_factory=list)
    nodes: list[str | None] = field(default_factory=list)
    callbacks: list[int] = field(default_factory=list)
    submitted: bool = False


class History:
    """What one cluster reported about its jobs; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, JobRecord] = {}
        self.node_events: list[tuple[int, str]] = []

    # -- recording ------------------------------------------------------------------------

    def submit(self, cluster: Any, *args: Any, **kwargs: Any) -> DispyJob:
        job = cluster.submit(*args, **kwargs)
        assert job is not None, f"submit{args!r} returned None"
        self.add(job, args, kwargs)
        return job

    def add(
        self, job: DispyJob, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            # cluster_status may report the job before submit() returned
            record = self._record(job)
            record.args, record.kwargs = args, dict(kwargs or {})
            record.submitted = True

    def _record(self, job: DispyJob) -> JobRecord:
        record = self._records.get(id(job))
        if record is None:
            record = JobRecord(job, (), {})
            self._records[id(job)] = record
        return record

    def callback(self, job: DispyJob) -> None:
        """For ``JobCluster(callback=...)``."""
        with self._lock:
            self._record(job).callbacks.append(int(job.status))

    def cluster_status(self, status: int, node: Any, job: DispyJob | None) -> None:
        """For ``JobCluster(cluster_status=...)``."""
        with self._lock:
            if job is None:
                name = getattr(node, "name", None) or repr(node)
                self.node_events.append((int(status), name))
                return
            record = self._record(job)
            record.statuses.append(int(status))
            record.nodes.append(getattr(node, "name", None) if node is not None else None)

    # -- reading ------------------------------------------------------------------------

    @property
    def jobs(self) -> list[DispyJob]:
        with self._lock:
            return [r.job for r in self._records.values()]

    def records(self) -> list[JobRecord]:
        with self._lock:
            return list(self._records.values())

    def finished_on(self) -> Counter[str | None]:
        """How many jobs ended Finished on each node (by node name)."""
        counts: Counter[str | None] = Counter()
        for record in self.records():
            for status, node in zip(record.statuses, record.nodes, strict=True):
                if status == JobStatus.Finished:
                    counts[node] += 1
        return counts

    def by_status(self) -> Counter[str]:
        return Counter(JobStatus(r.job.status).name for r in self.records())

    # -- checking -------------------------------------------------------------------------

    def problems(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        allowed: Iterable[int] = TERMINAL,
        expect_status_events: bool = True,
    ) -> list[str]:
        """Everything wrong with the history (empty when all is well).

        Args:
            fn: the pure function of the job's arguments that a Finished result must equal.
            allowed: the terminal statuses acceptable in this test.
            expect_status_events: whether ``cluster_status`` was passed to the cluster.
        """
        allowed = frozenset(int(s) for s in allowed)
        out: list[str] = []
        for record in self.records():
            job = record.job
            label = f"job {job!r} args={record.args!r}"
            if not record.submitted:
                out.append(f"{label}: reported by the cluster but never submitted here")
                continue
            status = int(job.status)
            if status not in TERMINAL:
                out.append(f"{label}: not ended (status {JobStatus(status).name})")
                continue
            if status not in allowed:
                names = sorted(JobStatus(s).name for s in allowed)
                out.append(
                    f"{label}: ended {JobStatus(status).name}, expected one of {names}; "
                    f"exception: {job.exception!r}"
                )
            if not job.finish.is_set():
                out.append(f"{label}: status is terminal but job.finish is not set")
            if len(record.callbacks) != 1:
                out.append(f"{label}: callback ran {len(record.callbacks)} times, not once")
            elif record.callbacks[0] != status:
                out.append(
                    f"{label}: callback saw status {record.callbacks[0]}, job ended {status}"
                )
            if expect_status_events:
                out += self._check_transitions(label, record, status)
            if status == JobStatus.Finished and fn is not None:
                expected = fn(*record.args, **record.kwargs)
                if job.result != expected:
                    out.append(f"{label}: result {job.result!r} != expected {expected!r}")
            if status == JobStatus.Terminated:
                if job.result is not None:
                    out.append(f"{label}: Terminated with a result {job.result!r}")
                if not job.exception:
                    out.append(f"{label}: Terminated without an exception text")
        return out

    @staticmethod
    def _check_transitions(label: str, record: JobRecord, final: int) -> list[str]:
        out = []
        statuses = [s for s in record.statuses if s in _JOB_STATUSES]
        terminal = [s for s in statuses if s in TERMINAL]
        if len(terminal) != 1:
            names = [JobStatus(s).name for s in terminal]
            out.append(f"{label}: {len(terminal)} terminal statuses reported ({names}), not 1")
        if statuses and statuses[-1] != final:
            out.append(
                f"{label}: last reported status {JobStatus(statuses[-1]).name}, "
                f"job says {JobStatus(final).name}"
            )
        previous = JobStatus.Created
        for s in statuses:
            new = JobStatus(s)
            if new == previous == JobStatus.Created:
                continue
            if not can_move(previous, new):
                trail = " -> ".join(JobStatus(x).name for x in statuses)
                out.append(
                    f"{label}: impossible transition {previous.name} -> {new.name} ({trail})"
                )
                break
            previous = new
        return out

    def check(self, fn: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        """Assert :meth:`problems` is empty (showing at most 20 problems)."""
        problems = self.problems(fn, **kwargs)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise AssertionError(
                f"{len(problems)} problem(s) in the history of {len(self.records())} job(s):\n"
                f"  {shown}{more}"
            )

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status().items()))
