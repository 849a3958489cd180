"""The scheduler's store: records survive a kill (reopened from disk), are private, and a
damaged one never stops start-up."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from dispy_core import serialize
from dispy_core.protocol.messages import JobReport
from dispy_scheduler.store import Store, StoreError


def _reply(value: object) -> bytes:
    return bytes(serialize.dumps((value, "out", "", None)))


def _results(*pairs: tuple[int, object]) -> tuple[list[JobReport], bytes]:
    replies = [(job_id, _reply(value)) for job_id, value in pairs]
    reports = [
        JobReport(job_id=job_id, outcome="finished", start=1.0, end=2.0, size=len(data))
        for job_id, data in replies
    ]
    return reports, b"".join(data for _, data in replies)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_record_is_found_again_by_a_new_store_as_after_kill_9(tmp_path: Path) -> None:
    store = Store(tmp_path / "sched")
    cs = store.open(7, 1234, "compute", "function", "client at 127.0.0.1")
    cs.save_start(b"the bundle")
    cs.node_used(("127.0.0.1", 51348))
    cs.node_used(("127.0.0.2", 51348))
    cs.node_used(("127.0.0.1", 51348))  # once per node
    cs.store(*_results((1, "one"), (2, "two")))
    (cs.files_dir / "dep.py").write_text("x = 1")
    # No close, no flush: a new Store sees only what is on disk.
    again = Store(tmp_path / "sched")
    [found] = again.found()
    assert again.get(7) is found
    assert (found.sched_id, found.client_comp_id, found.name, found.kind) == (
        7,
        1234,
        "compute",
        "function",
    )
    assert found.start_payload() == b"the bundle"
    assert found.nodes() == [("127.0.0.1", 51348), ("127.0.0.2", 51348)]
    assert (found.files_dir / "dep.py").read_text() == "x = 1"
    stored = {report.job_id: (report, data) for report, data in found.stored()}
    assert sorted(stored) == [1, 2]
    report, data = stored[2]
    assert report.outcome == "finished"
    assert report.size == len(data)
    assert serialize.loads(data) == ("two", "out", "", None)
    nodes_file = tmp_path / "sched" / "7" / "nodes"
    assert len(nodes_file.read_text().splitlines()) == 2


def test_forget_and_close(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cs = store.open(3, 1, "c", "program", "me")
    cs.store(*_results((1, 1), (2, 2), (3, 3)))
    cs.forget([1, 3])
    assert [r.job_id for r, _ in cs.stored()] == [2]
    assert cs.count() == 1
    cs.close()
    assert store.get(3) is None
    assert not (tmp_path / "3").exists()
    assert not (tmp_path / ".dispy-results" / "3").exists()
    assert Store(tmp_path).found() == []
    cs.store(*_results((4, 4)))  # late: dropped, nothing left behind
    assert not (tmp_path / ".dispy-results" / "3").exists()


def test_the_store_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = Store(tmp_path / "a" / "sched")
        cs = store.open(5, 9, "c", "function", "me")
        cs.save_start(b"x")
        cs.node_used(("127.0.0.1", 1))
        cs.store(*_results((1, "r")))
    finally:
        os.umask(old)
    root = tmp_path / "a" / "sched"
    for folder in (root.parent, root, root / "5", cs.files_dir, root / ".dispy-results" / "5"):
        assert _mode(folder) == 0o700, folder
    for name in ("meta.json", "start", "nodes"):
        assert _mode(root / "5" / name) == 0o600, name
    assert _mode(root / ".dispy-results" / "5" / "1.result") == 0o600


def test_clean_empties_what_an_earlier_run_left_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cs = Store(tmp_path / "s").open(1, 1, "c", "function", "me")
    cs.store(*_results((1, "r"), (2, "s")))
    (tmp_path / "s" / "stray").write_text("x")
    caplog.set_level(logging.INFO, "dispy_scheduler")
    store = Store(tmp_path / "s", clean=True)
    assert store.found() == []
    assert os.listdir(tmp_path / "s") == []
    assert _mode(tmp_path / "s") == 0o700
    [said] = [r.getMessage() for r in caplog.records if "--clean" in r.getMessage()]
    assert f"{tmp_path / 's'}" in said
    assert "1 computation record(s) and 2 kept result(s)" in said
    caplog.clear()
    Store(tmp_path / "fresh", clean=True)  # nothing there: said all the same
    assert any("(0 computation record(s) and 0" in r.getMessage() for r in caplog.records)


def test_damaged_records_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    good = store.open(1, 10, "good", "function", "me")
    good.node_used(("127.0.0.1", 5))
    store.open(2, 20, "bad-json", "function", "me")
    (tmp_path / "2" / "meta.json").write_text("{not json")
    store.open(3, 30, "wrong-dir", "function", "me")
    os.rename(tmp_path / "3", tmp_path / "33")
    (tmp_path / "4").mkdir()  # no meta at all: made, then killed before it was written
    store.open(5, 50, "bad-field", "function", "me")
    (tmp_path / "5" / "meta.json").write_text('{"sched_id": 5, "name": "x"}')
    (tmp_path / "stray-file").write_text("x")
    # a crash of the machine may cut the last line of nodes short
    with open(tmp_path / "1" / "nodes", "a") as fh:
        fh.write('["127.0.0')
    caplog.set_level(logging.WARNING, "dispy_scheduler")
    again = Store(tmp_path)
    assert [cs.sched_id for cs in again.found()] == [1]
    assert again.found()[0].nodes() == [("127.0.0.1", 5)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "dispy_scheduler"]
    assert len(warnings) == 5, warnings
    for name in ("2", "33", "4", "5", "stray-file"):
        assert sum(f"{tmp_path / name} " in w for w in warnings) == 1, name
    assert all("--clean" in w for w in warnings)


def test_open_refuses_a_sched_id_already_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open(1, 1, "c", "function", "me")
    with pytest.raises(FileExistsError, match="computation 1 already"):
        store.open(1, 2, "d", "function", "me")
    with pytest.raises(FileExistsError):
        Store(tmp_path).open(1, 2, "d", "function", "me")


def test_start_payload_missing_says_so(tmp_path: Path) -> None:
    cs = Store(tmp_path).open(1, 1, "c", "function", "me")
    with pytest.raises(FileNotFoundError):
        cs.start_payload()


def test_a_store_that_is_a_file_or_open_to_all_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        Store(tmp_path / "file")
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(StoreError, match="anyone may write"):
        Store(tmp_path / "open" / "sched")


def test_a_store_open_to_others_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s").chmod(0o755)
    caplog.set_level(logging.WARNING, "dispy_scheduler")
    Store(tmp_path / "s")
    assert any(f"chmod 700 {tmp_path / 's'}" in r.getMessage() for r in caplog.records)


def test_subscribers_hear_of_results_after_they_are_stored(tmp_path: Path) -> None:
    cs = Store(tmp_path).open(1, 1, "c", "function", "me")
    heard: list[list[int]] = []

    def sink(reports, payload) -> None:  # type: ignore[no-untyped-def]
        assert cs.count() >= len(reports)  # on disk first
        heard.append([r.job_id for r in reports])

    unsubscribe = cs.subscribe(sink)
    cs.store(*_results((1, "a"), (2, "b")))
    unsubscribe()
    cs.store(*_results((3, "c")))
    assert heard == [[1, 2]]
