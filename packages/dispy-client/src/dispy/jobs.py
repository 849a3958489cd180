"""DispyJob: one submitted execution of a computation, as the user sees it."""

from __future__ import annotations

import threading
from _thread import LockType, allocate_lock
from collections.abc import Callable
from time import time as _now
from typing import Any

from dispy_core.protocol.jobs import TERMINAL, JobStatus
from dispy_core.serialize import Pickled


class DispyJob:
    """A submitted job. ``id`` is yours to set (by default a number unique in this cluster,
    in submission order); everything else is filled in by dispy.

    Calling the job (``job()``) waits for it to end and returns its result. ``finish`` is an
    event set when the result is in.
    """

    Created = JobStatus.Created
    Running = JobStatus.Running
    ProvisionalResult = JobStatus.ProvisionalResult
    Cancelled = JobStatus.Cancelled
    Terminated = JobStatus.Terminated
    Abandoned = JobStatus.Abandoned
    Finished = JobStatus.Finished

    __slots__ = (
        "_done",
        "_event",
        "_files",
        "_id",
        "_logged",
        "_on_id",
        "_payload",
        "_pinned",
        "_uid",
        "_waiter",
        "args",
        "end_time",
        "exception",
        "ip_addr",
        "kwargs",
        "result",
        "start_time",
        "status",
        "stderr",
        "stdout",
        "submit_time",
    )

    _event_lock = threading.Lock()

    def __init__(self, uid: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._uid = uid
        self._id: Any = uid  # 4.15 programs count jobs by id without setting it
        self._on_id: Callable[[DispyJob], None] | None = None
        self._logged = False  # a record with its id is in the recover file
        self.args = args
        self.kwargs = kwargs
        self.status: int = JobStatus.Created
        self.ip_addr: str | None = None
        self.result: Any = None
        self.stdout: str | bytes | None = None  # bytes from a program computation
        self.stderr: str | bytes | None = None
        self.exception: str | None = None
        self.submit_time = _now()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self._payload: Pickled | None = None
        self._pinned: tuple[str, int] | None = None
        self._files: list[Any] | None = None
        self._done = False
        self._event: threading.Event | None = None
        self._waiter: LockType | None = None  # held while job() waits without an Event

    @property
    def id(self) -> Any:
        """Yours to set: any value that tells your jobs apart (kept by recover_jobs)."""
        return self._id

    @id.setter
    def id(self, value: Any) -> None:
        self._id = value
        on_id = self._on_id
        if on_id is not None:
            on_id(self)

    def __repr__(self) -> str:
        ident = self.id if self.id is not None else self._uid
        return f"<DispyJob {ident} {JobStatus(self.status).name}>"

    # __slots__ keep submit() cheap; these give programs the ``vars(job)`` and pickling
    # that a plain object has, with the fields that mean something outside this process.
    _PUBLIC = (
        "args",
        "kwargs",
        "status",
        "ip_addr",
        "result",
        "stdout",
        "stderr",
        "exception",
        "submit_time",
        "start_time",
        "end_time",
    )

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        """The job's fields by name (``vars(job)``); a copy, not the live attributes."""
        fields = {"id": self._id}
        for name in DispyJob._PUBLIC:
            fields[name] = getattr(self, name)
        return fields

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_job, (self._uid, self.__dict__))

    @property
    def finish(self) -> threading.Event:
        """Set once the job has ended (Finished, Terminated, Cancelled or Abandoned)."""
        with DispyJob._event_lock:
            if self._event is None:
                self._event = threading.Event()
                if self._done:
                    self._event.set()
            return self._event

    def _mark_done(self) -> None:
        with DispyJob._event_lock:
            self._done = True
            event, waiter = self._event, self._waiter
        if waiter is not None:
            waiter.release()
        if event is not None:
            event.set()

    def __call__(self, clear: bool = False) -> Any:
        """Wait for the job to end and return its result (None if it failed)."""
        # A bare lock rather than the ``finish`` Event when none was asked for: a program
        # that waits for each job in turn pays an Event's Condition twice per job (made,
        # then set from the loop thread) on the latency of that job.
        event: threading.Event | None = None
        waiter: LockType | None = None
        with DispyJob._event_lock:
            if not self._done:
                event = self._event
                if event is None:
                    waiter = self._waiter
                    if waiter is None:
                        waiter = self._waiter = allocate_lock()
                        waiter.acquire()  # released once, by _mark_done
        if waiter is not None:
            waiter.acquire()
            waiter.release()  # for any other thread waiting on this job
        elif event is not None:
            event.wait()
        result = self.result
        if clear:
            self.result = None
        return result


def _rebuild_job(uid: int, fields: dict[str, Any]) -> DispyJob:
    """An unpickled job: its fields, ended (its waiters and cluster stay behind)."""
    job = DispyJob(uid, fields.pop("args"), fields.pop("kwargs"))
    job._id = fields.pop("id")
    for name, value in fields.items():
        setattr(job, name, value)
    job._done = job.status in TERMINAL
    return job
