"""Small pieces of the service that need no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispy_core.protocol.fanout import Target
from dispy_scheduler._state import new_sched_id, open_store
from dispy_scheduler.service import Scheduler, Settings, _target


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ("node1", Target("node1")),
        ("10.0.0.7:6000", Target("10.0.0.7", 6000)),
        ("10.0.0.*", Target("10.0.0.*")),
        ("host:notaport", Target("host:notaport")),
        ("::1", Target("::1")),
    ],
)
def test_nodes_are_hosts_with_an_optional_port(spec: str, target: Target) -> None:
    assert _target(spec) == target


def test_sched_ids_are_not_reused() -> None:
    taken = {new_sched_id(set()) for _ in range(100)}
    assert len(taken) == 100
    assert new_sched_id(taken) not in taken
    assert all(0 < i < 2**48 for i in taken)


def test_clean_empties_the_store(tmp_path: Path) -> None:
    store = open_store(tmp_path, clean=False)
    record = store.open(5, 9, "c", "function", "127.0.0.1:1")
    (record.files_dir / "dep.txt").write_text("x")
    open_store(tmp_path, clean=True)
    assert not (record.files_dir / "dep.txt").exists()


def test_computations_left_by_a_previous_run_are_being_asked_before_anything_listens(
    tmp_path: Path,
) -> None:
    # A recover_jobs connecting the moment the restarted scheduler listens must wait for
    # the nodes' answers; before this mark was set at construction, it could find nothing
    # pending and close the record, and a result the nodes then gave was dropped.
    open_store(tmp_path, clean=False).open(5, 9, "c", "function", "127.0.0.1:1")
    sched = Scheduler(Settings(store_root=tmp_path))
    [record] = sched.disk.found()
    assert record.asking is not None
    assert not record.asking.is_set()
