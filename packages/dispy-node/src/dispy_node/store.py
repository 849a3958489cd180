"""Results a node could not deliver, kept on disk until delivered or recovered.

Layout under ``<dest_path_prefix>/.dispy-results/<comp_id>/``: ``meta.json`` (which
computation, for which client) and one ``<job_id>.result`` file per job: a JSON line with
the job's report, then the pickled reply exactly as the client would have received it.
Files are written to a temporary name and renamed, so a crash never leaves half a result.
Results may hold anything a job returned: folders are 0700 and files 0600, and temporary
files never follow a link planted at their name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

from dispy_core.files import atomic_write, makedirs
from dispy_core.protocol.framing import Payload
from dispy_node._paths import PRIVATE_DIR, RESULTS_DIRNAME
from dispy_node.executor import Reply

log = logging.getLogger("dispy_node")

DIRNAME = RESULTS_DIRNAME


class ResultStore:
    def __init__(self, prefix: str) -> None:
        self.root = os.path.join(prefix, DIRNAME)

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
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, f"{int(job_id)}.result"))

    def drop(self, comp_id: int) -> None:
        shutil.rmtree(self._dir(comp_id), ignore_errors=True)

    def has(self, comp_id: int) -> bool:
        return os.path.isdir(self._dir(comp_id))

    def count(self, comp_id: int) -> int:
        try:
            return sum(1 for n in os.listdir(self._dir(comp_id)) if n.endswith(".result"))
        except FileNotFoundError:
            return 0


def _atomic_write(path: str, data: Payload) -> None:
    atomic_write(path, data, 0o600)
