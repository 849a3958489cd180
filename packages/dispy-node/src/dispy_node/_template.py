"""The computation process: loads a computation once, runs setup, forks warm workers.

Run as ``python -m dispy_node._template SPAWN_FD DIRECTORY`` by the node daemon, with the
computation's directory as working directory. Standard input/output carry the control
channel (see :mod:`._wire`); user code that prints during setup writes to the node's stderr.
``SPAWN_FD`` is an inherited Unix socket on which the daemon sends, for each worker, one end
of a socket pair made for that worker alone.

Theory of operation
-------------------
1. Read ``init`` (the pickled bundle: computation, setup, cleanup, depends), unpickle it,
   run ``setup`` once, answer ``ready`` or ``failed``.
2. For each worker socket received on the spawn channel fork a worker that keeps it (the
   computation process closes its copy). The worker becomes a process-group leader (so a
   cancel can kill whatever the job started) and runs jobs one at a time from that socket.
   It inherits setup's globals, so a job costs a message, not a process start.
3. Report every worker's exit status (``exited``) so the daemon can explain a crash.
4. On ``close`` run ``cleanup`` (if a function) and exit.

This process stays single-threaded so that forking it is safe.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from dispy_core import results, serialize
from dispy_core.paths import safe_join
from dispy_core.protocol.framing import DEFAULT_MAX_MESSAGE, Buffer, nbytes
from dispy_node import _wire
from dispy_node._output import DEFAULT_MAX_OUTPUT, CapturedText, finish


class _Control:
    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.buf = bytearray()

    def send(self, obj: dict[str, Any], payload: bytes = b"") -> None:
        data = memoryview(_wire.control_frame(obj, payload))
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]

    def read_available(self) -> bool:
        chunk = os.read(self.rfd, 1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def next(self) -> tuple[dict[str, Any], bytes] | None:
        if len(self.buf) < _wire.CONTROL.size:
            return None
        hlen, plen = _wire.CONTROL.unpack_from(self.buf)
        end = _wire.CONTROL.size + hlen + plen
        if len(self.buf) < end:
            return None
        head = json.loads(bytes(self.buf[_wire.CONTROL.size : _wire.CONTROL.size + hlen]))
        payload = bytes(self.buf[_wire.CONTROL.size + hlen : end])
        del self.buf[:end]
        return head, payload

    def blocking_next(self) -> tuple[dict[str, Any], bytes] | None:
        while True:
            item = self.next()
            if item is not None:
                return item
            if not self.read_available():
                return None


# A name set into a namespace by a job's dispy_job_depends, and what it held before (or
# _ABSENT): restored when the job ends, so one job's functions do not leak into the next.
_ABSENT = object()
Installed = list[tuple[dict[str, Any], str, Any]]


def _namespaces(computation: Any = None) -> list[dict[str, Any]]:
    """Where the computation looks names up: its own module globals (a function sent by
    value has a dict of its own, which 4.15 programs read with ``globals()``), the node's
    ``__main__`` and builtins."""
    import builtins

    spaces = [vars(sys.modules["__main__"]), vars(builtins)]
    own = getattr(computation, "__globals__", None)
    if isinstance(own, dict) and all(own is not space for space in spaces):
        spaces.insert(0, own)
    return spaces


def _set(spaces: list[dict[str, Any]], name: str, value: Any, undo: Installed) -> None:
    for space in spaces:
        undo.append((space, name, space.get(name, _ABSENT)))
        space[name] = value


def _install(objects: Any, computation: Any = None) -> Installed:
    """Make depends visible to the computation by name, as if defined in its module."""
    undo: Installed = []
    spaces = _namespaces(computation)
    for obj in objects or ():
        target = obj if hasattr(obj, "__name__") else type(obj)
        name = getattr(target, "__name__", None)
        if isinstance(name, str) and not inspect.ismodule(obj):
            _set(spaces, name, target, undo)
    return undo


def _set_globals(values: dict[str, str], computation: Any) -> None:
    """The node's names (dispy_node_name, ...) as globals of setup and of every job."""
    spaces = _namespaces(computation)
    for name, value in values.items():
        _set(spaces, name, value, [])


# The modules a 4.15 node had imported where jobs ran: its programs use ``os.getpid()`` or
# ``time.sleep()`` in a computation without importing them. Offered as builtins, so a name
# the computation defines (or imports) itself still wins.
NODE_MODULES = (
    "copy", "errno", "glob", "hashlib", "io", "marshal", "multiprocessing", "os", "pickle",
    "platform", "re", "shutil", "signal", "socket", "stat", "struct", "subprocess", "sys",
    "tempfile", "threading", "time", "traceback",
)  # fmt: skip


def _offer_node_modules() -> None:
    import builtins
    import importlib

    for name in NODE_MODULES:
        if not hasattr(builtins, name):
            setattr(builtins, name, importlib.import_module(name))


def _uninstall(undo: Installed) -> None:
    for space, name, before in reversed(undo):
        if before is _ABSENT:
            space.pop(name, None)
        else:
            space[name] = before


def _refused(reason: str) -> int:
    """What dispy_send_file and dispy_provisional_result answer when they cannot deliver:
    -1, as in 4.15 (programs test for it), with the reason on the job's stderr."""
    print(reason, file=sys.stderr)
    return -1


class _Worker:  # pragma: no cover - runs in a forked child
    """One warm worker: runs jobs sent by the daemon, one at a time."""

    def __init__(self, computation: Any, sock: socket.socket, limits: dict[str, int]) -> None:
        self.computation = computation
        self.max_file_size = limits["max_file_size"]
        self.max_output = limits["max_output"]
        self.sock = sock  # the daemon made it for this worker alone (and sized its buffers)
        sock.setblocking(True)
        self.inbox = bytearray()  # bytes read past the last frame
        # Jobs' arguments are read into this buffer, reused from job to job (a fresh large
        # buffer per job would cost a page fault per 4 KiB).
        self.job_buffer = bytearray(1 << 16)
        self.job_id = 0
        self.home = os.getcwd()

    def send(
        self, op: int, outcome: int, start: float, end: float, data: serialize.Pickled
    ) -> None:
        size = nbytes(data)
        head = _wire.FROM_WORKER.pack(op, outcome, self.job_id, start, end, size)
        parts = [data] if isinstance(data, bytes) else data
        if size < 65536:
            self.sock.sendall(b"".join([head, *parts]))
            return
        views = [memoryview(head), *(memoryview(p).cast("B") for p in parts)]
        while views:
            sent = self.sock.sendmsg(views)
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def read_frame(self) -> tuple[int, int, Buffer]:
        """The next frame from the daemon; its payload is valid until the next call."""
        inbox = self.inbox
        head = _wire.TO_WORKER
        while len(inbox) < head.size:
            self._receive()
        op, job_id, length = head.unpack_from(inbox)
        end = head.size + length
        if len(inbox) >= end:  # a small job arrives whole in one read
            payload = bytes(inbox[head.size : end])
            del inbox[:end]
            return op, job_id, payload
        # A large one is read straight into the job buffer.
        if len(self.job_buffer) < length:
            self.job_buffer = bytearray(length)
        view = memoryview(self.job_buffer)[:length]
        got = len(inbox) - head.size
        view[:got] = inbox[head.size :]
        inbox.clear()
        while got < length:
            count = self.sock.recv_into(view[got:])
            if not count:
                os._exit(0)
            got += count
        return op, job_id, view

    def _receive(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            os._exit(0)  # the daemon is gone
        self.inbox += chunk

    def provisional_result(
        self, result: Any, relay: bool = False, timeout: float | None = None
    ) -> int:
        """Send ``result`` to the client as the job's provisional result: 0 once sent, -1
        (and why, on the job's stderr) when it cannot go, as 4.15's programs expect."""
        # 4.15's signature: ``relay`` (through a scheduler) is how every result goes anyway
        del relay, timeout
        data = serialize.dumps(result, plain_first=True)  # unpicklable: raises, as in 4.15
        size = nbytes(data)
        if size > DEFAULT_MAX_MESSAGE:
            return _refused(
                f"dispy_provisional_result: {size} bytes pickled, over the "
                f"{DEFAULT_MAX_MESSAGE} bytes one message can carry"
            )
        now = time.time()
        self.send(_wire.OP_PROVISIONAL, 0, now, now, data)
        return 0

    def send_file(self, path: str, relay: bool = False, timeout: float | None = None) -> int:
        """Send the job's file ``path`` to the client: 0 once the client has it, -1 (and
        why, on the job's stderr) when it cannot go, as 4.15's programs expect."""
        del relay, timeout  # as provisional_result
        home = os.path.realpath(self.home)
        try:
            # The job names a file of its own file system (absolute, or relative to where it
            # runs, through links that stay inside); what goes on the wire is its real name
            # below the directory, checked as every name from the wire is.
            rel = os.path.relpath(os.path.realpath(os.path.abspath(path)), home)
            full = safe_join(home, rel, "the computation's directory")
        except ValueError:  # UnsafePathError too; relpath's across drives
            return _refused(
                f"dispy_send_file: {path!r} is outside the computation's directory {home}"
            )
        try:
            stat = os.stat(full)
        except OSError as exc:
            return _refused(f"dispy_send_file: {path!r}: {exc.strerror or exc}")
        if stat.st_size > DEFAULT_MAX_MESSAGE:
            return _refused(
                f"dispy_send_file: {path!r} is {stat.st_size} bytes, over the "
                f"{DEFAULT_MAX_MESSAGE} bytes one message can carry"
            )
        if self.max_file_size and stat.st_size > self.max_file_size:
            return _refused(
                f"dispy_send_file: {path!r} is {stat.st_size} bytes, over this node's "
                f"max_file_size of {self.max_file_size} bytes"
            )
        try:
            with open(full, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return _refused(f"dispy_send_file: {path!r}: {exc.strerror or exc}")
        encoded = rel.encode()
        head = _wire.SEND_FILE.pack(len(encoded), stat.st_mode & 0o7777, stat.st_mtime)
        now = time.time()
        self.send(_wire.OP_SEND_FILE, 0, now, now, [head, encoded, data])
        op, _, reply = self.read_frame()
        if op != _wire.OP_ACK:
            raise RuntimeError("dispy_send_file: unexpected answer from the node")
        if reply:
            return _refused(f"dispy_send_file: {bytes(reply).decode(errors='replace')}")
        return 0

    def run(self) -> None:
        import builtins

        builtins.dispy_provisional_result = self.provisional_result  # type: ignore[attr-defined]
        builtins.dispy_send_file = self.send_file  # type: ignore[attr-defined]
        # A cancel interrupts the running job (KeyboardInterrupt, as 4.15 did) so that it
        # can return a partial result from its handler; between jobs the interrupt is a
        # late one for a job that has ended and is ignored, so the worker stays warm.
        in_job = [False]

        def interrupt(_signum: int, _frame: Any) -> None:
            if in_job[0]:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, interrupt)
        real_out, real_err = sys.stdout, sys.stderr
        # reused from job to job: cleared, not rebuilt, per job
        out, err = CapturedText(self.max_output), CapturedText(self.max_output)
        out_tail, err_tail = out.tail, err.tail
        while True:
            _op, self.job_id, payload = self.read_frame()
            if out_tail.total:
                out_tail.clear()
            if err_tail.total:
                err_tail.clear()
            start = time.time()
            outcome = _wire.OUTCOME_FINISHED
            result: Any = None
            exc_text: str | None = None
            installed: Installed = []
            sys.stdout, sys.stderr = out, err
            try:
                loaded = serialize.loads(payload)
                args, kwargs = loaded[0], loaded[1]
                if len(loaded) > 2:
                    installed = _install(loaded[2], self.computation)
                in_job[0] = True
                try:
                    result = self.computation(*args, **kwargs)
                finally:
                    in_job[0] = False
            except BaseException:
                outcome = _wire.OUTCOME_TERMINATED
                exc_text = traceback.format_exc()
                result = None
            finally:
                sys.stdout, sys.stderr = real_out, real_err
                if installed:
                    _uninstall(installed)
            end = time.time()
            if out_tail.total or err_tail.total:
                stdout, stderr = finish(
                    out_tail.value(),
                    out_tail.dropped,
                    err_tail.value(),
                    err_tail.dropped,
                    self.max_output,
                    "characters",
                )
            else:  # the usual job prints nothing: no output to join or to cut
                stdout = stderr = ""
            outcome, data = pack_reply(outcome, result, stdout, stderr, exc_text)
            self.send(_wire.OP_DONE, outcome, start, end, data)


def pack_reply(
    outcome: int,
    result: Any,
    stdout: str,
    stderr: str,
    exc_text: str | None,
    limit: int = DEFAULT_MAX_MESSAGE,
) -> tuple[int, serialize.Pickled]:
    """A job's reply (:func:`dispy_core.results.pack_reply`) with its outcome on the worker's
    link: a result that cannot travel makes the job terminated."""
    packed, data = results.pack_reply(result, stdout, stderr, exc_text, limit)
    return (outcome if packed else _wire.OUTCOME_TERMINATED), data


def _receive_worker_socket(spawner: socket.socket) -> tuple[int, socket.socket] | None:
    """The next worker's number and socket from the daemon; None once the daemon is gone.

    The kernel ends a read at a message that carries descriptors, so one read takes one
    spawn request whole.
    """
    data, fds, _flags, _addr = socket.recv_fds(spawner, _wire.SPAWN.size, 1)
    if len(data) != _wire.SPAWN.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    os.set_inheritable(fds[0], False)  # a program the job starts must not hold it
    (wid,) = _wire.SPAWN.unpack(data)
    return wid, socket.socket(fileno=fds[0])


def main() -> None:
    # argv: the spawn channel's descriptor, the directory (for ps only)
    spawner = socket.socket(fileno=int(sys.argv[1]))
    os.set_inheritable(spawner.fileno(), False)
    # The control channel moves off stdin/stdout so that user code printing during setup
    # cannot corrupt it.
    ctrl = _Control(os.dup(0), os.dup(1))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.stdout = sys.stderr

    item = ctrl.blocking_next()
    if item is None or item[0].get("op") != "init":
        return
    limits = {
        "max_file_size": int(item[0].get("max_file_size", 0)),
        "max_output": int(item[0].get("max_output", DEFAULT_MAX_OUTPUT)),
    }
    try:
        sys.path.insert(0, os.getcwd())
        bundle = serialize.loads(item[1])
        computation = bundle["computation"]
        setup = bundle.get("setup")
        _offer_node_modules()
        for user in (setup, computation):  # the same dict when both came in one pickle
            _set_globals(item[0].get("globals") or {}, user)
            _install(bundle.get("depends"), user)
        if setup is not None:
            # setup_args: a NodeAllocate's arguments for this node (none by default)
            status = setup(*bundle.get("setup_args", ()))
            if status not in (None, 0):
                ctrl.send({"op": "failed", "reason": f"setup returned {status!r} (not 0)"})
                return
    except BaseException:
        ctrl.send({"op": "failed", "reason": "setup failed:\n" + traceback.format_exc()})
        return
    ctrl.send({"op": "ready", "pid": os.getpid()})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()
    watched: list[Any] = [ctrl.rfd, wake_r, spawner]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
        _reap(children, ctrl)
        if spawner in readable:
            request = _receive_worker_socket(spawner)
            if request is None:
                watched.remove(spawner)  # the daemon closed it; the control channel follows
            else:
                _spawn(request, computation, limits, children, ctrl, spawner, wake_r, wake_w)
        if ctrl.rfd not in readable:
            continue
        if not ctrl.read_available():
            # The node is gone (even SIGKILL ends here): take the jobs down with it rather
            # than leave orphans running.
            _kill_children(children)
            break
        while (msg := ctrl.next()) is not None:
            if msg[0].get("op") == "close":
                _close(bundle, children, ctrl)
                return


def _spawn(
    request: tuple[int, socket.socket],
    computation: Any,
    limits: dict[str, int],
    children: set[int],
    ctrl: _Control,
    *private: socket.socket | int,
) -> None:
    """Fork a worker that keeps ``request``'s socket; close this process's copy of it."""
    wid, sock = request
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for item in private:
                if isinstance(item, int):
                    os.close(item)
                else:
                    item.close()
            os.close(ctrl.rfd)
            os.close(ctrl.wfd)
            os.setpgid(0, 0)
            _Worker(computation, sock, limits).run()
        finally:
            os._exit(0)
    sock.close()  # the worker is now the only process holding it
    # The child makes itself a group leader too; doing it here as well closes the window
    # in which a killpg() would miss a child that has not yet.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    children.add(pid)
    ctrl.send({"op": "spawned", "wid": wid, "pid": pid})


def _reap(children: set[int], ctrl: _Control) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        if os.WIFSIGNALED(status):
            info = {"signal": os.WTERMSIG(status)}
        else:
            info = {"code": os.WEXITSTATUS(status)}
        ctrl.send({"op": "exited", "pid": pid, **info})


def _kill_children(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    children.clear()


def _close(bundle: dict[str, Any], children: set[int], ctrl: _Control) -> None:
    _kill_children(children)
    cleanup = bundle.get("cleanup")
    reason = None
    if callable(cleanup):
        try:
            cleanup(*bundle.get("setup_args", ()))  # setup's arguments, as 4.15 passed them
        except BaseException:
            reason = traceback.format_exc()
    ctrl.send({"op": "closed", "error": reason})


if __name__ == "__main__":
    main()
