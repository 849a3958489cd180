"""The user's side of a cluster, shared by JobCluster and SharedJobCluster.

Both are a thin synchronous layer over an asyncio *core* running on the cluster's own loop
thread: :class:`dispy._core.ClusterCore` (nodes, with the engine inside) or
:class:`dispy._shared_core.SharedCore` (one connection to dispy-scheduler). This module
checks what the user passes (the computation, its dependencies, a job's arguments), turns it
into what the wire carries, and hands it to the core; ``wait()`` counts the jobs not ended
yet. The two cores offer the same methods to it (``start``, ``close``, ``submit_threadsafe``,
``cancel``, ``send_file``, ``node_jobs``, ``node_keys``, ``ready_nodes``, ``known_nodes``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from dispy._callbacks import CallbackRunner
from dispy._compat import ClusterStatus
from dispy._depends import DependencyError, FileSpec, read_file, split_depends, user_modules
from dispy.jobs import DispyJob
from dispy.nodes import DispyNode, NodeAllocate, to_allocate
from dispy_core import netinfo, serialize
from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE, nbytes
from dispy_core.protocol.messages import MAX_NAME, MAX_PATH
from dispy_core.secret import Secret, resolve_secret

log = logging.getLogger("dispy")

_live_clusters: weakref.WeakSet[ClusterFacade] = weakref.WeakSet()


@dataclass
class Computation:
    """A computation as the wire carries it."""

    name: str
    kind: str  # "function" or "program"
    start_payload: serialize.Pickled  # computation.start's payload
    files: list[FileSpec]  # dependencies (and a transferred program)
    dest_path: str | None
    # The bundle's objects (functions only), kept so that a node given its own setup_args
    # or depends by a NodeAllocate gets a bundle of its own.
    bundle: dict[str, Any] | None = None


def prepare_computation(
    computation: Callable[..., Any] | str,
    depends: Sequence[Any] | None,
    setup: Callable[..., Any] | None,
    cleanup: bool | Callable[[], Any],
    dest_path: str | None,
) -> Computation:
    """Check ``computation`` and its options and pack them for the nodes.

    Raises:
        TypeError, ValueError: with the reason (DependencyError for a missing file).
    """
    if not isinstance(computation, str) and not callable(computation):
        raise TypeError(f"computation must be a function or a program path, not {computation!r}")
    # What the wire refuses (section 7.3 of PROTOCOL.md) is refused here, once, rather
    # than by every node.
    if isinstance(computation, str) and (not computation or "\0" in computation):
        raise ValueError(f"program {computation!r} is empty or holds a NUL")
    dest_path = dest_path or None  # '' asks for a fresh directory, as None does
    if dest_path is not None and ("\0" in dest_path or len(dest_path) > MAX_PATH):
        raise ValueError(
            f"dest_path must be at most {MAX_PATH} characters without NUL, not {dest_path!r}"
        )
    program = isinstance(computation, str)
    objects, files = split_depends(list(depends or []), program=program)
    if isinstance(computation, str):
        name = os.path.basename(computation) or computation
        if setup is not None or callable(cleanup):
            raise ValueError("setup and cleanup functions need a Python function computation")
        transferred = os.path.isfile(computation)
        if transferred:
            files.append(program_file(computation))
        start_payload: serialize.Pickled = json.dumps(
            {"program": name if transferred else computation, "transferred": transferred}
        ).encode()
    else:
        name = getattr(computation, "__name__", "computation")
        for module in user_modules(objects):
            serialize.pickle_by_value(module)
        bundle: dict[str, Any] | None = {
            "computation": computation,
            "setup": setup,
            "cleanup": cleanup if callable(cleanup) else None,
            "depends": objects,
        }
        start_payload = serialize.dumps(bundle)
    return Computation(
        name[:MAX_NAME],
        "program" if program else "function",
        start_payload,
        files,
        dest_path,
        bundle if not program else None,
    )


def resolve_nodes(nodes: Sequence[Any] | None) -> list[NodeAllocate]:
    """The ``nodes`` argument as NodeAllocate objects, names resolved to addresses.

    Raises:
        ValueError: an entry is invalid or a name does not resolve.
    """
    node_list = [to_allocate(n) for n in (nodes if nodes is not None else ["*"])]
    for alloc in node_list:
        if alloc.host != "*" and not any(c in alloc.host for c in "*?["):
            try:
                alloc.ip_addr = netinfo.resolve(alloc.host)
            except OSError as exc:
                raise ValueError(f"cannot resolve node {alloc.host!r}: {exc}") from None
    return node_list


class ClusterFacade:
    """What JobCluster and SharedJobCluster have in common (see the module docstring).

    A subclass builds its options and core, then calls :meth:`_start`.
    """

    name: str
    recover_file: str
    _core: Any
    _program: bool

    def _start(self, name: str, core: Any, callbacks: CallbackRunner) -> None:
        self._callbacks = callbacks
        self._core = core
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._pending = 0
        self._closed = False
        self._start_time = time.time()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"dispy-{name}", daemon=True
        )
        self._thread.start()
        try:
            self._call(core.start())
        except BaseException:
            self._stop_loop()
            raise
        self.recover_file = core.opts.recover_file
        _live_clusters.add(self)

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _call_soon(self, func: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(func, *args)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._callbacks.stop()

    def _job_ended(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._lock.notify_all()

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Schedule ``computation(*args, **kwargs)`` on some node; return its job.

        Returns None (and logs why) if the arguments cannot be serialized.
        """
        return self._submit(None, args, kwargs)

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Like :meth:`submit`, with the job's ``id`` set to ``job_id`` (dispy 4.15)."""
        return self._submit(None, args, kwargs, job_id)

    def submit_job_id_node(
        self, job_id: Any, node: DispyNode | str, *args: Any, **kwargs: Any
    ) -> DispyJob | None:
        """Like :meth:`submit_node`, with the job's ``id`` set to ``job_id`` (dispy 4.15)."""
        key = self._pin(node, "submit_job_id_node")
        if key is None:
            return None
        return self._submit(key, args, kwargs, job_id)

    def submit_node(self, node: DispyNode | str, *args: Any, **kwargs: Any) -> DispyJob | None:
        """Like :meth:`submit`, but run the job only on ``node``."""
        key = self._pin(node, "submit_node")
        if key is None:
            return None
        return self._submit(key, args, kwargs)

    def _pin(self, node: DispyNode | str, caller: str) -> tuple[str, int] | None:
        key = self._node_key(node)
        if key is None:
            log.error("%s: %r is not a node of this cluster", caller, node)
            return None
        if key in getattr(self._core, "released", ()):
            # it would wait there for ever: the node takes no more jobs of this cluster
            log.error(
                "%s: %r was deallocated or closed (allocate_node takes it back)", caller, node
            )
            return None
        return key

    def _submit(
        self,
        pin: tuple[str, int] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        job_id: Any = None,
    ) -> DispyJob | None:
        if self._closed:
            log.error("submit: cluster %s is closed", self.name)
            return None
        job_depends = kwargs.pop("dispy_job_depends", None)
        job = DispyJob(next(self._ids), args, kwargs)
        try:
            objects: list[Any] = []
            if job_depends is not None:
                objects, job._files = split_depends(job_depends, program=self._program)
            job._payload = self._job_payload(args, kwargs, objects)
        except (serialize.SerializationError, DependencyError, ValueError) as exc:
            log.error("submit: job not created: %s", exc)
            return None
        job._pinned = pin
        if job_id is not None:
            job._id = job_id  # before the core sees the job: recorded with its first record
        job._on_id = self._core.id_changed
        with self._lock:
            self._pending += 1
        self._core.submit_threadsafe(job)
        return job

    def _job_payload(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], objects: list[Any]
    ) -> serialize.Pickled:
        if self._program:
            if kwargs:
                raise ValueError("a program computation takes no keyword arguments")
            if not all(isinstance(a, str | int | float) for a in args):
                raise ValueError("a program computation takes only string arguments")
            return json.dumps([str(a) for a in args]).encode()
        try:
            payload = serialize.dumps((args, kwargs, objects) if objects else (args, kwargs))
        except serialize.SerializationError as exc:
            raise serialize.SerializationError(f"the arguments {exc}") from None
        size = len(payload) if type(payload) is bytes else nbytes(payload)
        if size > DEFAULT_MAX_MESSAGE:
            raise serialize.SerializationError(
                f"the arguments are {size} bytes pickled, over the {DEFAULT_MAX_MESSAGE} bytes "
                "one message can carry"
            )
        return payload

    def cancel(self, job: DispyJob) -> int:
        """Cancel a queued or running job. Returns 0, or -1 if the job already ended."""
        if job._done:
            return -1
        self._call_soon(self._core.cancel, job)
        return 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has ended and its callbacks ran.

        Returns False if ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._lock.wait_for(lambda: self._pending <= 0, timeout):
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._callbacks.drain(left)

    def __call__(self) -> bool:
        return self.wait()

    def status(self) -> ClusterStatus:
        """The nodes serving this cluster (set up, as :meth:`nodes`) and the number of jobs
        not ended (dispy 4.15)."""
        with self._lock:
            pending = self._pending
        return ClusterStatus(self.nodes(), pending)

    def discover_nodes(self, nodes: Any) -> int:
        """Look for ``nodes`` (one or a list: names, addresses, patterns, ``(host, port)``
        or NodeAllocate) now, and use those that answer, as :meth:`allocate_node` does.

        dispy 4.15 only pinged them; a node found is used here as well, since the nodes a
        4.15 program discovers are the ones it listed. Returns 0, or -1 if one is invalid.
        """
        items = nodes if isinstance(nodes, list) else [nodes]
        results = [self.allocate_node(item) for item in items]  # type: ignore[attr-defined]
        return -1 if -1 in results else 0

    def shutdown(self) -> None:
        """Close the cluster (dispy 4.15; there is no scheduler here to stop with it)."""
        self.close()

    def close(self, timeout: float | None = None, terminate: bool = False) -> bool:
        """Wait for the jobs (cancel them with ``terminate=True``), release the nodes.

        Returns False if jobs were still running after ``timeout`` and were cancelled.
        """
        if self._closed:
            return True
        finished = True
        if not terminate:
            finished = self.wait(timeout)
        self._closed = True
        try:
            self._call(self._core.close(terminate or not finished), timeout=60)
        except Exception as exc:
            log.warning("closing cluster %s: %r", self.name, exc)
        self._callbacks.drain(10)
        self._stop_loop()
        _live_clusters.discard(self)
        return finished

    # -- nodes ----------------------------------------------------------------------------

    def _node_key(self, node: DispyNode | str) -> tuple[str, int] | None:
        if isinstance(node, DispyNode):
            return (node.ip_addr, node.port)
        try:
            addr = netinfo.resolve(str(node))
        except OSError:
            return None
        for key in self._core.node_keys():
            if key[0] == addr:
                return key  # type: ignore[no-any-return]
        return None

    def send_file(self, path: str, node: DispyNode | str, relay: bool = False) -> int:
        """Copy ``path`` (by its base name) into the computation's directory on ``node``.

        ``relay`` (dispy 4.15) changes nothing: the file goes the way jobs go.

        Returns 0 on success, -1 on failure (the reason is logged).
        """
        key = self._node_key(node)
        if key is None:
            log.error("send_file: %r is not a node of this cluster", node)
            return -1
        try:
            spec = program_file(path)
        except DependencyError as exc:
            log.error("send_file: %s", exc)
            return -1
        error = self._call(self._core.send_file(key, spec))
        if error:
            log.error("send_file %s to %s:%d failed: %s", path, key[0], key[1], error)
            return -1
        return 0

    def node_jobs(self, node: DispyNode | str, from_node: bool = False) -> list[DispyJob]:
        """Jobs running (or queued to run) on ``node`` now.

        ``from_node`` (dispy 4.15) changes nothing: the client knows them already.
        """
        key = self._node_key(node)
        if key is None:
            return []
        result: list[DispyJob] = self._call(_in_loop(self._core.node_jobs, key))
        return result

    def nodes(self) -> list[DispyNode]:
        """The nodes serving this cluster now."""
        result: list[DispyNode] = self._core.ready_nodes()  # read-only: any thread
        return result

    def print_status(self, wall_time: float | None = None) -> None:
        """Print a table of nodes: CPUs, jobs done, seconds per job, node time."""
        from dispy.progress import print_status

        nodes = list(self._core.known_nodes.values())
        print_status(self.name, nodes, wall_time or time.time() - self._start_time)

    stats = print_status

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(terminate=exc[0] is not None)

    def __del__(self) -> None:
        # A cluster dropped without close(): free the loop thread; its peers see the
        # connections close.
        if not getattr(self, "_closed", True) and getattr(self, "_loop", None) is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _close_at_exit() -> None:
    for cluster in list(_live_clusters):
        if not cluster._closed:
            with contextlib.suppress(Exception):
                cluster.close(timeout=0, terminate=True)


atexit.register(_close_at_exit)


async def _in_loop(func: Callable[..., Any], *args: Any) -> Any:
    return func(*args)


def cluster_secret(secret: str) -> Secret:
    """The secret a cluster uses: ``secret``, or ``DISPY_SECRET`` when ``secret`` is ''.

    '' is the documented default, so an explicit ``secret=''`` cannot be told from an
    omitted one; both take the environment's secret. That is deliberate: a program that
    passes '' along from its own defaults becomes authenticated by its environment too,
    and '' is never a secret worth insisting on (unset DISPY_SECRET to run without one).
    """
    if not isinstance(secret, str):
        raise TypeError("secret must be a string")
    return resolve_secret(secret, option_name="secret=")


def program_file(path: str) -> FileSpec:
    return read_file(path, os.path.basename(path))


def absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def setup_logging(level: int) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("dispy %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)
