"""The daemon's end of a worker's channel: the worker's record and the parser of its frames.

A worker (forked by the computation process, see :mod:`dispy_node._template`) talks to the
daemon over its own socket pair (:mod:`dispy_node._wire`). :class:`_WorkerProtocol` reads what
it sends without a copy for large results and cuts off a worker that announces more than it
may send; :class:`~dispy_node.executor.Computation` acts on each frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE, DIRECT_PAYLOAD, make_room
from dispy_node import _wire

if TYPE_CHECKING:
    from dispy_node.executor import Computation

log = logging.getLogger("dispy_node.executor")

SCRATCH_SIZE = 64 << 10
# The most a worker may announce in one frame: a reply or provisional result is at most one
# network message (the worker checks, see dispy_core.results.pack_reply); a file from
# dispy_send_file also carries its header and path (a u16 length).
SEND_FILE_OVERHEAD = _wire.SEND_FILE.size + 0xFFFF
MAX_FROM_WORKER = DEFAULT_MAX_MESSAGE + SEND_FILE_OVERHEAD


@dataclass(eq=False)
class _Worker:
    wid: int
    transport: asyncio.WriteTransport = field(init=False)
    pid: int = 0
    registered: bool = False  # counted among the computation's workers
    lost: bool = False  # its channel closed before it was registered
    spawned: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    job: int | None = None
    job_start: float = 0.0
    cancelling: bool = False
    retired: bool = False
    fault: str | None = None  # why the daemon cut the worker off, if it did
    writable: asyncio.Event = field(default_factory=asyncio.Event)
    exit_info: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def describe_exit(info: dict[str, Any] | None) -> str:
    if not info:
        return "the job's process ended unexpectedly"
    if "signal" in info:
        try:
            name = signal.Signals(info["signal"]).name
        except ValueError:
            name = f"signal {info['signal']}"
        return f"the job's process was killed by {name}"
    return (
        f"the job's process exited with status {info.get('code')} "
        "(did the job call os._exit or sys.exit?)"
    )


class _WorkerProtocol(asyncio.BufferedProtocol):
    """Parses a worker's frames as they arrive and hands them to its computation.

    Small frames are read into a scratch buffer; a large result is read by the socket
    straight into a buffer of its own, which then travels on to the client as it is.
    """

    def __init__(self, computation: Computation, worker: _Worker) -> None:
        self._comp = computation
        self._worker = worker
        self._buf = bytearray(SCRATCH_SIZE)
        self._start = 0
        self._end = 0
        # a large reply being received: its header fields, its buffer, bytes filled
        self._big: tuple[tuple[int, int, int, float, float], bytearray | memoryview] | None = None
        self._filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._worker.transport = transport  # before any byte of the worker is parsed

    def pause_writing(self) -> None:
        self._worker.writable.clear()

    def resume_writing(self) -> None:
        self._worker.writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big[1])[self._filled :]
        if self._end == len(self._buf):
            self._make_room()
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is None:
            self._end += nbytes
            self._parse()
            return
        self._filled += nbytes
        fields, target = self._big
        if self._filled == len(target):
            self._big = None
            self._comp._worker_message(self._worker, *fields, target)

    def _make_room(self) -> None:
        self._buf, self._end = make_room(self._buf, self._start, self._end)
        self._start = 0

    def _refuse(self, op: int, length: int) -> None:
        """A worker announced more than it may send: cut it off before reading any of it."""
        comp, worker = self._comp, self._worker
        if op == _wire.OP_SEND_FILE:
            what = f"a file of {length} bytes (this node's max_file_size is {comp.max_file_size})"
        else:
            what = f"a message of {length} bytes (at most {comp.max_reply} may be sent)"
        worker.fault = f"the job's process sent {what}; the node stopped it"
        log.error("worker %s of %s: %s", worker.wid, comp.name, worker.fault)
        self._start = self._end = 0
        if worker.pid:
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)
        worker.transport.close()

    def _parse(self) -> None:
        head = _wire.FROM_WORKER
        buf = self._buf
        while self._end - self._start >= head.size:
            op, outcome, job_id, start, end, length = head.unpack_from(buf, self._start)
            if length > self._comp.max_reply or (
                op == _wire.OP_SEND_FILE and length > self._comp.max_send_file
            ):
                self._refuse(op, length)
                return
            body = self._start + head.size
            have = self._end - body
            if have >= length:
                payload = bytes(buf[body : body + length])
                self._start = body + length
                self._comp._worker_message(self._worker, op, outcome, job_id, start, end, payload)
                continue
            if length >= DIRECT_PAYLOAD:
                target = self._comp.allocate(length)
                target[:have] = buf[body : self._end]
                self._big = ((op, outcome, job_id, start, end), target)
                self._filled = have
                self._start = self._end = 0
                return
            break
        if self._start == self._end:
            self._start = self._end = 0

    def connection_lost(self, exc: Exception | None) -> None:
        worker = self._worker
        worker.writable.set()  # lets a streaming task see the closed transport
        if not worker.registered:
            worker.lost = True  # _add_worker, still waiting for it, reports it
            return
        self._comp._tasks.start(self._comp._worker_lost(worker))
