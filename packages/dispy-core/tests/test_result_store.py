"""Stored results have a quota and an age limit, oldest removed first (issue 9, item 8e)."""

from __future__ import annotations

import logging
import os

from dispy_core.result_store import ResultStore, oldest_over_budget
from dispy_core.results import Reply

HOUR = 3600.0
DAY = 24 * HOUR


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reply(job_id: int, size: int = 1000) -> Reply:
    return Reply(job_id, "finished", 1.0, 2.0, b"r" * size)


def stored(store: ResultStore, comp_id: int) -> list[int]:
    return sorted(r.job_id for r in store.load(comp_id))


def age(store: ResultStore, comp_id: int, job_id: int, mtime: float) -> None:
    os.utime(os.path.join(store._dir(comp_id), f"{job_id}.result"), (mtime, mtime))


def test_results_past_the_age_limit_are_removed_and_logged(tmp_path, caplog):
    clock = Clock(100 * DAY)
    store = ResultStore(str(tmp_path), max_age=7 * DAY, clock=clock)
    store.save_meta(1, {"name": "c"})
    store.save(1, [reply(1), reply(2), reply(3)])
    age(store, 1, 1, clock.now - 8 * DAY)
    age(store, 1, 2, clock.now - 6 * DAY)
    age(store, 1, 3, clock.now)
    with caplog.at_level(logging.WARNING, logger="dispy_node"):
        assert store.expire() == 1
    assert stored(store, 1) == [2, 3]
    assert "removed 1 stored result(s) of computation 1: older than 168 hours" in caplog.text
    clock.now += 2 * DAY  # now 2 is 8 days old too
    assert store.expire() == 1
    assert stored(store, 1) == [3]


def test_a_write_over_the_quota_removes_the_oldest_first(tmp_path, caplog):
    clock = Clock(1000 * DAY)
    store = ResultStore(str(tmp_path), max_bytes=10_000, clock=clock)
    for job_id in range(1, 9):  # 8 results of about 1 KB, oldest first
        store.save(1, [reply(job_id)])
        age(store, 1, job_id, clock.now - 100 + job_id)
    store.save(2, [reply(50)])
    age(store, 2, 50, clock.now)
    assert stored(store, 1) == list(range(1, 9))  # 9 KB: under the quota
    with caplog.at_level(logging.WARNING, logger="dispy_node"):
        store.save(2, [reply(51, 3000)])  # 12 KB: the oldest go
    assert stored(store, 1) == list(range(4, 9))
    assert stored(store, 2) == [50, 51]
    assert "over --max_stored_results (10000 bytes)" in caplog.text
    total = sum(
        os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(store.root)
        for n in names
        if n.endswith(".result")
    )
    assert total <= 10_000


def test_removed_and_acknowledged_results_free_their_quota(tmp_path):
    store = ResultStore(str(tmp_path), max_bytes=5_000, clock=Clock(DAY))
    store.save(1, [reply(1), reply(2), reply(3), reply(4)])
    store.remove(1, [1, 2, 3])
    store.save(1, [reply(5), reply(6), reply(7)])
    assert stored(store, 1) == [4, 5, 6, 7]  # nothing had to go


def test_no_limits_keep_everything(tmp_path):
    store = ResultStore(str(tmp_path), clock=Clock(1e10))
    store.save(1, [reply(1, 100_000)])
    age(store, 1, 1, 0.0)
    assert store.expire() == 0
    assert stored(store, 1) == [1]


def test_a_computation_with_nothing_left_is_forgotten_after_the_age_limit(tmp_path):
    clock = Clock(100 * DAY)
    store = ResultStore(str(tmp_path), max_age=DAY, clock=clock)
    store.save_meta(7, {"name": "gone"})
    store.save(7, [reply(1)])
    meta = os.path.join(store._dir(7), "meta.json")
    os.utime(meta, (clock.now - 2 * DAY,) * 2)
    age(store, 7, 1, clock.now - 2 * DAY)
    store.expire()
    assert not store.has(7)


def test_oldest_unacknowledged_results_go_until_half_the_given_budget():
    unacked = {i: Reply(i, "finished", 0.0, 0.0, b"x" * 10) for i in range(10)}  # 100 bytes
    assert oldest_over_budget(dict(unacked), 100, budget=200) == []  # within half already
    taken = oldest_over_budget(unacked, 100, budget=120)
    assert [r.job_id for r in taken] == [0, 1, 2, 3]  # 60 left: half of 120
    assert list(unacked) == [4, 5, 6, 7, 8, 9]
