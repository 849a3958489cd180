"""The recover file, and ``recover_jobs`` that reads it after a client crash.

The recover file is a JSON-lines log, appended (one write per batch, not per job) by the
cluster's loop thread:

* a header: computation id, name, secret, TLS files, node port;
* ``{"c": [[uid, id], ...]}`` jobs submitted; ``{"s": [host, port], "j": [uid, ...]}`` jobs
  sent to that node; ``{"d": [uid, ...]}`` jobs whose result the client has.

``id`` is the job's user id when it is JSON (int, str, ...), else its ``repr``. The file
holds the cluster's secret (unless it came from ``DISPY_SECRET``: then the header names the
variable and ``recover_jobs`` reads it from the environment), so it is created exclusively
with mode 0600: an existing file, or a link planted at its name, is never written through.
A file already there is refused rather than reused: it may be the log of an earlier run
whose jobs are still to be recovered, and truncating it would lose them. A cleanly closed
cluster removes it.

A SharedJobCluster's header also names its scheduler (``"scheduler": [host, port]``) and
the id the scheduler gave the computation (``"sched_id"``): its jobs are then recovered
from the scheduler alone (PROTOCOL.md section 13, "Recovery"), which holds their results or
gets them from the nodes; the nodes in the file only tell where each job ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from dispy._compat import latest_recover_file
from dispy.jobs import DispyJob
from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused, open_connection
from dispy_core.protocol.errors import ProtocolError
from dispy_core.protocol.framing import Payload
from dispy_core.protocol.jobs import JobStatus
from dispy_core.protocol.messages import (
    MAX_IDS,
    CloseComputation,
    ComputationClosed,
    JobAck,
    JobCancel,
    JobDone,
    RecoverRequest,
    RecoverStatus,
)
from dispy_core.results import iter_replies, read_reply
from dispy_core.secret import SECRET_ENV, user_name
from dispy_core.security import TLSConfig

log = logging.getLogger("dispy")

FORMAT = "dispy-recover-1"


def default_recover_file() -> str:
    # Absolute: the program may change directory before close() removes it.
    return os.path.abspath(time.strftime("_dispy_%Y%m%d%H%M%S"))


def secret_record(secret: str, origin: str) -> dict[str, str]:
    """How the header records the cluster's secret (see the module docstring)."""
    return {"secret_env": SECRET_ENV} if origin == SECRET_ENV else {"secret": secret}


def _create(path: str, pick_free: bool) -> tuple[str, int]:
    """Create the recover file, or with ``pick_free`` the first free ``path-N``.

    Raises:
        FileExistsError: ``path`` exists (and ``pick_free`` is off).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    candidate = path
    for n in itertools.count(1):
        try:
            return candidate, os.open(candidate, flags, 0o600)
        except FileExistsError:
            if not pick_free:
                raise FileExistsError(
                    f"recover file {path!r} already exists: it may hold jobs of an earlier run "
                    f"(collect them with dispy.recover_jobs({path!r})); remove it or give "
                    "another recover_file"
                ) from None
            candidate = f"{path}-{n}"
    raise AssertionError("unreachable")


def _json_id(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return repr(value)


# One encoder for every record: json.dumps() with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _id_text(value: Any) -> str:
    """``_encode(_json_id(value))``, without the encoder for the usual ids (None, an int)."""
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    return _encode(_json_id(value))


def _uids(jobs: list[DispyJob]) -> str:
    return ",".join([str(job._uid) for job in jobs])  # uids are ints: their JSON is str()


class RecoveryLog:
    """Appends what ``recover_jobs`` needs; every method is cheap and never raises.

    Records of submitted and sent jobs are kept as references and written at the next
    :meth:`flush`, so a job's ``id`` set by the program right after ``submit()`` (as the
    reference's examples do) is the one recorded.
    """

    def __init__(self, path: str, header: dict[str, Any], pick_free: bool = False) -> None:
        self.path, fd = _create(path, pick_free)
        self._fh = os.fdopen(fd, "w", buffering=1 << 16)
        self._write({"format": FORMAT, **header})
        self._fh.flush()
        self._broken = False
        # Records not written yet, in order: ("c", None, jobs), ("s", node, jobs) or ("d",
        # None, uids); formatted at the next flush, off the path of the jobs they describe.
        self._pending: list[tuple[str, tuple[str, int] | None, list[Any]]] = []
        self._lock = threading.Lock()  # the program's thread writes id records too

    def _write(self, record: dict[str, Any]) -> None:
        self._write_text(_encode(record))

    def _write_text(self, text: str) -> None:
        self._fh.write(text + "\n")

    def created(self, jobs: list[DispyJob]) -> None:
        with self._lock:
            self._pending.append(("c", None, jobs))

    def sent(self, node: tuple[str, int], jobs: list[DispyJob]) -> None:
        with self._lock:
            self._pending.append(("s", node, jobs))

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        for kind, node, jobs in pending:
            if kind == "d":  # uids whose results the client has
                self._guarded_text(f'{{"d":[{",".join([str(uid) for uid in jobs])}]}}')
                continue
            for job in jobs:
                job._logged = True
            # Written by hand, as _encode would (byte for byte): once per job and record,
            # the encoder's own cost shows in the latency of one job.
            if kind == "c":
                pairs = ",".join([f"[{j._uid},{_id_text(j.id)}]" for j in jobs])
                self._guarded_text(f'{{"c":[{pairs}]}}')
            else:
                assert node is not None
                ids = ",".join([_id_text(j.id) for j in jobs])
                self._guarded_text(
                    f'{{"s":[{_encode(node[0])},{int(node[1])}],"j":[{_uids(jobs)}],"i":[{ids}]}}'
                )

    def node(self, key: tuple[str, int]) -> None:
        """A node joined: recovery asks every such node, so this one is flushed at once."""
        with self._lock:
            self._guarded({"n": list(key)})
            self._flush_locked()

    def ids(self, jobs: list[DispyJob]) -> None:
        """Jobs whose ``id`` the program set after they were recorded (any thread): written
        and flushed at once, since the program may die any moment after."""
        with self._lock:
            self._guarded({"i": [[j._uid, _json_id(j.id)] for j in jobs]})
            self._flush_locked()

    def done(self, uids: list[int]) -> None:
        with self._lock:
            self._pending.append(("d", None, uids))  # after the job's "sent" record

    def _guarded(self, record: dict[str, Any]) -> None:
        self._guarded_text(_encode(record))

    def _guarded_text(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._write_text(text)
        except (OSError, ValueError) as exc:
            self._broken = True
            log.warning("recover file %s can no longer be written: %s", self.path, exc)

    def flush(self) -> None:
        """Hand buffered records to the OS (they then survive the client being killed).

        Called before the frames they describe are written to a socket.
        """
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._broken:
            return
        self._write_pending()
        try:
            self._fh.flush()
        except (OSError, ValueError) as exc:
            self._broken = True
            log.warning("recover file %s can no longer be written: %s", self.path, exc)

    def close(self, remove: bool) -> None:
        with self._lock:
            if not remove:
                self._write_pending()
            self._broken = True  # later writes (a timer firing after close) are no-ops
            with contextlib.suppress(OSError, ValueError):
                self._fh.close()
        if remove:
            with contextlib.suppress(OSError):
                os.remove(self.path)


class _Plan:
    """What the recover file says about each job."""

    def __init__(self, path: str) -> None:
        try:
            with open(path) as fh:
                mode = os.fstat(fh.fileno()).st_mode
                lines = [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(f"recover file {path!r} does not exist") from None
        except ValueError as exc:
            raise ValueError(f"recover file {path!r} is damaged: {exc}") from None
        if not lines or lines[0].get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a dispy recover file")
        if mode & 0o077:
            log.warning(
                "recover file %s may be read by other users (mode %04o): the secret in it may "
                "be known to them; restrict it with: chmod 600 %s",
                path,
                stat.S_IMODE(mode),
                path,
            )
        self.header = lines[0]
        self.secret = _header_secret(path, self.header)
        self.scheduler = _header_scheduler(path, self.header)
        self.ids: dict[int, Any] = {}
        self.where: dict[int, tuple[str, int]] = {}
        self.nodes: set[tuple[str, int]] = set()
        self.done: set[int] = set()
        for record in lines[1:]:
            if "c" in record:
                for uid, ident in record["c"]:
                    self.ids[uid] = ident
            elif "s" in record:
                node = (str(record["s"][0]), int(record["s"][1]))
                self.nodes.add(node)
                for uid in record["j"]:
                    self.where[uid] = node
                for uid, ident in zip(record["j"], record.get("i", []), strict=False):
                    if ident is not None:
                        self.ids[uid] = ident
            elif "i" in record and "s" not in record:
                for uid, ident in record["i"]:
                    self.ids[uid] = ident
            elif "n" in record:
                self.nodes.add((str(record["n"][0]), int(record["n"][1])))
            elif "d" in record:
                self.done.update(record["d"])


def _header_scheduler(path: str, header: dict[str, Any]) -> tuple[str, int] | None:
    """A SharedJobCluster's scheduler (host, port), or None for a JobCluster's file."""
    if "scheduler" not in header:
        return None
    try:
        host, port = header["scheduler"]
        int(header["sched_id"])
        return str(host), int(port)
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"recover file {path!r} is damaged: its scheduler or sched_id is unreadable"
        ) from None


def _header_secret(path: str, header: dict[str, Any]) -> str:
    name = header.get("secret_env")
    if name is None:
        return str(header.get("secret", ""))
    secret = os.environ.get(str(name), "")
    if not secret:
        raise ValueError(
            f"the cluster of {path!r} took its secret from {name}, which is not set here: "
            "set it to the same secret to recover"
        )
    return secret


def recover_jobs(
    recover_file: str | None = None, timeout: float | None = None, terminate_pending: bool = False
) -> list[DispyJob]:
    """Collect the jobs of a client that stopped, from the nodes that ran them.

    Args:
        recover_file: the cluster's recover file (``recover_file`` of JobCluster or
            SharedJobCluster, by default ``_dispy_YYYYMMDDHHMMSS`` in the directory it ran
            in). None (as dispy 4.15 allowed): the newest ``_dispy_*`` file in the current
            directory; if there is none, a warning and no jobs. A SharedJobCluster's jobs are
            recovered through its scheduler.
        timeout: seconds to wait for jobs still running (None: until all are done).
        terminate_pending: cancel the jobs that are not done when ``timeout`` passes.

    Returns:
        One DispyJob per job the client had submitted and not yet received: with its result
        (or exception) when a node had it; still ``Running`` if it did not finish within
        ``timeout``; ``Abandoned`` (with the reason in ``exception``) if it never reached a
        node, no node has it any more, or the node (or scheduler) that has it cannot be
        reached now. Nodes are released once nothing is left to wait for. The recover file
        is removed once every job is accounted for; it stays while jobs run, or when a node
        or scheduler could not be asked (call again once it is back: a scheduler being
        restarted, a node on a network that is down).
    """
    if recover_file is None:
        recover_file = latest_recover_file(".")
        if recover_file is None:
            log.warning(
                "recover_jobs: no recover file given and none (_dispy_*) in %s", os.getcwd()
            )
            return []
    plan = _Plan(recover_file)
    if not plan.secret:
        peers = [plan.scheduler] if plan.scheduler is not None else sorted(plan.nodes)
        nodes = ", ".join(f"{host}:{port}" for host, port in peers) or "(none)"
        log.warning(
            "recover_jobs has no secret (the cluster had none): whoever answers at %s (the "
            "nodes, or anyone posing as them) can send back results this program unpickles, "
            "running their code as user %r here. Next time set the same secret on every "
            "client and node, with the %s environment variable or JobCluster(secret=...).",
            nodes,
            user_name(),
            SECRET_ENV,
        )
    jobs, unasked = asyncio.run(_recover(plan, timeout, terminate_pending, recover_file))
    if not unasked and all(j.status != JobStatus.Running for j in jobs):
        with contextlib.suppress(OSError):
            os.remove(recover_file)
    return jobs


@dataclass(slots=True)
class _Wanted:
    """What every peer asked shares: the jobs still wanted, those pending on some peer, all
    jobs by id, and whether the peer is where the jobs ran (a node; not a scheduler)."""

    wanted: set[int]
    pending: set[int]
    jobs: dict[int, DispyJob]
    peer_ran_it: bool


async def _recover(
    plan: _Plan, timeout: float | None, terminate: bool, path: str
) -> tuple[list[DispyJob], bool]:
    """The jobs, and whether a peer that may hold some of them could not be asked."""
    header = {**plan.header, "secret": plan.secret}
    jobs: dict[int, DispyJob] = {}
    for uid in sorted(set(plan.ids) | set(plan.where)):
        if uid in plan.done:
            continue
        job = DispyJob(uid, (), {})
        job.id = plan.ids.get(uid, uid)
        job.status = JobStatus.Running
        if uid in plan.where:
            job.ip_addr = plan.where[uid][0]
        jobs[uid] = job
    tls = TLSConfig(header.get("certfile"), header.get("keyfile"))
    deadline = None if timeout is None else time.monotonic() + timeout
    wanted = set(jobs)
    pending: set[int] = set()
    # Jobs handed back here are marked done in the file before the nodes may forget them,
    # so a later recover_jobs (for jobs still running now) does not ask for them again.
    if plan.scheduler is not None:
        # Shared: the scheduler answers for every node, under its own id of the computation.
        header["comp_id"] = int(header["sched_id"])
        peers, peer_ran_it = [plan.scheduler], False
    else:
        peers, peer_ran_it = sorted(plan.nodes), True
    with open(path, "a") as ledger:  # noqa: ASYNC230 - a few small appends, flushed
        answers = await asyncio.gather(
            *(
                _recover_node(
                    header,
                    tls,
                    peer,
                    _Wanted(wanted, pending, jobs, peer_ran_it),
                    deadline,
                    terminate,
                    ledger,
                )
                for peer in peers
            )
        )
    # A peer that did not answer may hold results still: its jobs are not given up for good.
    unasked = {peer: why for peer, why in zip(peers, answers, strict=True) if why is not None}
    for uid in sorted(wanted - pending):
        job = jobs[uid]
        job.status = JobStatus.Abandoned
        peer = plan.scheduler or plan.where.get(uid)
        if peer is not None and peer in unasked:
            kind = "node" if plan.scheduler is None else "scheduler"
            job.exception = (
                f"{kind} {peer[0]}:{peer[1]} could not be asked ({unasked[peer]}); the recover "
                "file is kept: call recover_jobs again once it is back"
            )
        elif plan.scheduler is not None:
            host, port = plan.scheduler
            job.exception = (
                f"scheduler {host}:{port} does not have this job (it never reached a node: the "
                "client stopped before sending it, or the scheduler was killed before placing "
                "it, or stopped when no node was set up for it; or the scheduler was started "
                "with --clean)"
            )
        elif uid in plan.where:
            node = plan.where[uid]
            job.exception = f"node {node[0]}:{node[1]} does not have this job (was it restarted?)"
        else:
            job.exception = "the client stopped before this job reached a node"
        job._mark_done()
    return [jobs[uid] for uid in sorted(jobs)], bool(unasked)


async def _recover_node(
    header: dict[str, Any],
    tls: TLSConfig,
    node: tuple[str, int],
    asked: _Wanted,
    deadline: float | None,
    terminate: bool,
    ledger: TextIO,
) -> str | None:
    """Recover from one node (or the scheduler); why it could not be asked, if it could
    not."""
    wanted, pending_anywhere, jobs = asked.wanted, asked.pending, asked.jobs
    comp_id = int(header["comp_id"])
    msg_timeout = float(header.get("msg_timeout", 5.0))
    kind = "node" if asked.peer_ran_it else "scheduler"
    where = f"{node[0]}:{node[1]}"
    opened = await _open_recovery(header, tls, node, comp_id, msg_timeout, kind)
    if isinstance(opened, str):
        return opened
    conn, status = opened

    async def take(msg: JobDone, payload: Payload) -> None:
        _apply(msg, payload, jobs, node if asked.peer_ran_it else None, wanted)
        ledger.write(json.dumps({"d": [r.job_id for r in msg.jobs]}) + "\n")
        ledger.flush()
        for report in msg.jobs:
            pending.discard(report.job_id)
            pending_anywhere.discard(report.job_id)
        await conn.send(JobAck(comp_id=comp_id, job_ids=[r.job_id for r in msg.jobs]))

    pending: set[int] = set()
    try:
        pending = set(status.pending)
        pending_anywhere.update(pending & wanted)
        expected = status.stored
        received = 0
        while pending or received < expected:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    msg, payload = await conn.recv()
            except TimeoutError:
                break
            if isinstance(msg, JobDone):
                received += len(msg.jobs)
                await take(msg, payload)
        if pending and terminate:
            cancel = sorted(pending)
            for at in range(0, len(cancel), MAX_IDS):
                await conn.send(JobCancel(comp_id=comp_id, job_ids=cancel[at : at + MAX_IDS]))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(msg_timeout * 2):
                    while pending:
                        msg, payload = await conn.recv()
                        if isinstance(msg, JobDone):
                            await take(msg, payload)
        if not pending:
            await conn.send(CloseComputation(comp_id=comp_id, terminate=True))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(msg_timeout):
                    while True:
                        msg, _ = await conn.recv()
                        if isinstance(msg, ComputationClosed):
                            break
    except (ConnectionClosed, ProtocolError) as exc:
        log.warning("recover: %s %s: %s", kind, where, exc)
    finally:
        await conn.close()
    return None


async def _open_recovery(
    header: dict[str, Any],
    tls: TLSConfig,
    node: tuple[str, int],
    comp_id: int,
    msg_timeout: float,
    kind: str = "node",
) -> tuple[Connection, RecoverStatus] | str:
    """Connect and ask; retry while the node (or scheduler: ``kind``) has not yet noticed
    its client is gone. A text: why it could not be asked."""
    where = f"{node[0]}:{node[1]}"
    deadline = time.monotonic() + max(2 * msg_timeout, 5.0)
    while True:
        conn: Connection | None = None
        try:
            conn = await open_connection(
                node[0],
                node[1],
                secret=header.get("secret", ""),
                role="recover",
                name=str(header.get("name", "recover")),
                timeout=msg_timeout,
                ssl_context=tls.client,
            )
            await conn.send(RecoverRequest(comp_id=comp_id))
            async with asyncio.timeout(msg_timeout):
                status, _ = await conn.recv()
            if not isinstance(status, RecoverStatus):
                raise ProtocolError(f"unexpected {status.type}")
            return conn, status
        except PeerRefused as exc:
            if conn is not None:
                await conn.close()
            if "still connected" in exc.reason and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                continue
            log.warning("recover: %s %s: %s", kind, where, exc.reason)
            return f"it refused: {exc.reason}"
        except (OSError, TimeoutError, ConnectionClosed, ProtocolError) as exc:
            if conn is not None:
                await conn.close()
            why = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):  # it says nothing by itself
                why = f"no answer within msg_timeout ({msg_timeout:g} s)"
            log.warning("recover: cannot reach %s %s: %s", kind, where, why)
            return why


def _apply(
    msg: JobDone,
    payload: Payload,
    jobs: dict[int, DispyJob],
    node: tuple[str, int] | None,
    wanted: set[int],
) -> None:
    """Apply the results in ``msg``; ``node``: where they ran (None: as the file says)."""
    for report, data in iter_replies(msg, payload):
        job = jobs.get(report.job_id)
        if job is None or report.job_id not in wanted:
            continue
        wanted.discard(report.job_id)
        status, job.result, job.stdout, job.stderr, job.exception = read_reply(report.outcome, data)
        job.start_time, job.end_time = report.start, report.end
        if node is not None:
            job.ip_addr = node[0]
        job.status = status
        job._mark_done()


__all__ = ["RecoveryLog", "recover_jobs"]
