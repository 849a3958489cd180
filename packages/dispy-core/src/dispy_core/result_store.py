"""Results a node could not deliver, kept on disk until delivered or recovered.

In core so that whoever runs jobs for a client that may go away (the node today, the
scheduler next) keeps them the same way.

Layout under ``<dest_path_prefix>/.dispy-results/<comp_id>/``: ``meta.json`` (which
computation, for which client) and one ``<job_id>.result`` file per job: a JSON line with
the job's report, then the pickled reply exactly as the client would have received it.
Files are written to a temporary name and renamed, so a crash never leaves half a result.
Results may hold anything a job returned: folders are 0700 and files 0600, and temporary
files never follow a link planted at their name.

The store is bounded: results older than ``max_age`` seconds go, then the oldest while the
results take more than ``max_bytes`` (node options ``--stored_results_age`` and
``--max_stored_results``); every removal is logged. The total is counted as results are
written, so a write costs no scan; :meth:`expire` scans, at start, hourly, and when a write
takes the total over the quota.

Results sent but not acknowledged wait in their sender's memory up to a budget of the
sender's; :func:`oldest_over_budget` picks those that move here beyond it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from dispy_core.files import atomic_write, makedirs
from dispy_core.protocol.framing import Payload
from dispy_core.results import Reply

# The node's logger: the node is this store's user today; its log lines keep their source.
log = logging.getLogger("dispy_node")

# Under the node's dest_path_prefix; dispy_node._paths keeps computations out of it.
DIRNAME = ".dispy-results"
# Results may hold anything a job returned: the store's user only.
PRIVATE_DIR = 0o700


class ResultStore:
    """The results of jobs whose client could not take them, on disk under ``prefix``.

    Args:
        prefix: the directory the store lives under (the node's ``dest_path_prefix``).
        max_bytes: quota on the results' total size (0: none).
        max_age: seconds a result is kept (0: until delivered).
        clock: wall-clock time, for the age limit (tests pass a fake one).
    """

    def __init__(
        self,
        prefix: str,
        *,
        max_bytes: int = 0,
        max_age: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = os.path.join(prefix, DIRNAME)
        self.max_bytes = max_bytes  # 0: no quota
        self.max_age = max_age  # seconds, 0: kept until delivered
        self._clock = clock
        self._bytes: int | None = None  # results on disk, once scanned

    def _dir(self, comp_id: int) -> str:
        return os.path.join(self.root, str(int(comp_id)))

    def save_meta(self, comp_id: int, meta: dict[str, Any]) -> None:
        folder = self._dir(comp_id)
        makedirs(folder, PRIVATE_DIR)
        path = os.path.join(folder, "meta.json")
        if not os.path.exists(path):
            _atomic_write(path, json.dumps({**meta, "saved": time.time()}).encode())

    def save(self, comp_id: int, replies: list[Reply]) -> None:
        folder = self._dir(comp_id)
        makedirs(folder, PRIVATE_DIR)
        written = 0
        for reply in replies:
            head = json.dumps(
                {
                    "job_id": reply.job_id,
                    "outcome": reply.outcome,
                    "start": reply.start,
                    "end": reply.end,
                }
            ).encode()
            _atomic_write(
                os.path.join(folder, f"{reply.job_id}.result"), head + b"\n" + reply.payload
            )
            written += len(head) + 1 + len(reply.payload)
        if self._bytes is None:
            self.expire()
        else:
            self._bytes += written
            if self.max_bytes and self._bytes > self.max_bytes:
                self.expire()

    def load(self, comp_id: int) -> list[Reply]:
        folder = self._dir(comp_id)
        out: list[Reply] = []
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return out
        for name in sorted(names):
            if not name.endswith(".result"):
                continue
            try:
                with open(os.path.join(folder, name), "rb") as fh:
                    data = fh.read()
                head, _, payload = data.partition(b"\n")
                info = json.loads(head)
                out.append(
                    Reply(
                        int(info["job_id"]),
                        info["outcome"],
                        float(info["start"]),
                        float(info["end"]),
                        payload,
                    )
                )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("stored result %s is unreadable: %s", name, exc)
        return out

    def remove(self, comp_id: int, job_ids: list[int]) -> None:
        folder = self._dir(comp_id)
        for job_id in job_ids:
            path = os.path.join(folder, f"{int(job_id)}.result")
            with contextlib.suppress(FileNotFoundError):
                size = os.stat(path).st_size
                os.remove(path)
                if self._bytes is not None:
                    self._bytes -= size

    def drop(self, comp_id: int) -> None:
        shutil.rmtree(self._dir(comp_id), ignore_errors=True)
        self._bytes = None  # counted again at the next write

    def expire(self) -> int:
        """Remove results past the age limit, then the oldest while over the quota; log
        what went. Returns how many results were removed."""
        now = self._clock()
        results: list[tuple[float, int, str, str]] = []  # mtime, size, path, computation
        metas: dict[str, float] = {}
        try:
            comps = os.listdir(self.root)
        except FileNotFoundError:
            comps = []
        for comp in comps:
            folder = os.path.join(self.root, comp)
            try:
                names = os.listdir(folder)
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    if name.endswith(".result"):
                        results.append((st.st_mtime, st.st_size, path, comp))
                    elif name == "meta.json":
                        metas[comp] = st.st_mtime
        results.sort()
        aged: Counter[str] = Counter()
        over: Counter[str] = Counter()
        total = sum(size for _, size, _, _ in results)
        for mtime, size, path, comp in results:
            if self.max_age and now - mtime > self.max_age:
                aged[comp] += 1
            elif self.max_bytes and total > self.max_bytes:
                over[comp] += 1
            else:
                break  # oldest first: the rest are younger and fit
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            total -= size
        self._bytes = total
        for comp, count in aged.items():
            log.warning(
                "removed %d stored result(s) of computation %s: older than %.0f hours",
                count,
                comp,
                self.max_age / 3600,
            )
        for comp, count in over.items():
            log.warning(
                "removed %d stored result(s) of computation %s, the oldest: stored results "
                "were over --max_stored_results (%d bytes)",
                count,
                comp,
                self.max_bytes,
            )
        # A computation with no result left and nothing written for max_age is forgotten.
        for comp, mtime in metas.items():
            if self.max_age and now - mtime > self.max_age and not self._results_in(comp):
                shutil.rmtree(os.path.join(self.root, comp), ignore_errors=True)
        return sum(aged.values()) + sum(over.values())

    def _results_in(self, comp: str) -> bool:
        try:
            return any(n.endswith(".result") for n in os.listdir(os.path.join(self.root, comp)))
        except FileNotFoundError:
            return False

    def has(self, comp_id: int) -> bool:
        return os.path.isdir(self._dir(comp_id))

    def count(self, comp_id: int) -> int:
        try:
            return sum(1 for n in os.listdir(self._dir(comp_id)) if n.endswith(".result"))
        except FileNotFoundError:
            return 0


def oldest_over_budget(unacked: dict[int, Reply], total: int, budget: int) -> list[Reply]:
    """Which results sent but not yet acknowledged go to the store once memory is over
    ``budget`` bytes: take the oldest out of ``unacked`` (a dict keeps the order they were
    sent in) until at most half of ``budget`` is left of their ``total`` size; return them.

    Down to half, not to the budget, so that results arriving faster than they are
    acknowledged cost one write of many results now and then, not a write per result.
    """
    taken: list[Reply] = []
    for reply in unacked.values():
        if total <= budget // 2:
            break
        taken.append(reply)
        total -= len(reply.payload)
    for reply in taken:
        del unacked[reply.job_id]
    return taken


def _atomic_write(path: str, data: Payload) -> None:
    atomic_write(path, data, 0o600)


__all__ = ["DIRNAME", "PRIVATE_DIR", "ResultStore", "oldest_over_budget"]
