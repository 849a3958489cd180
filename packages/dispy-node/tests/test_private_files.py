"""What the node writes for clients stays the node user's own (issue 9, item 9)."""

from __future__ import annotations

import os

import pytest

from dispy_core.result_store import DIRNAME, ResultStore
from dispy_core.results import Reply


@pytest.fixture
def permissive_umask():
    old = os.umask(0)  # protection must not depend on the umask the node was started with
    yield
    os.umask(old)


def test_stored_results_are_private(tmp_path, permissive_umask):
    store = ResultStore(str(tmp_path))
    store.save_meta(7, {"client": "c"})
    store.save(7, [Reply(1, "finished", 1.0, 2.0, b"pickled result")])
    folder = tmp_path / DIRNAME / "7"
    for path in (tmp_path / DIRNAME, folder):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for name in ("meta.json", "1.result"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert sorted(os.listdir(folder)) == ["1.result", "meta.json"]  # no temporary file left
    (reply,) = store.load(7)
    assert (reply.job_id, bytes(reply.payload)) == (1, b"pickled result")


def test_storing_a_result_does_not_follow_a_link_planted_at_a_temporary_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    folder = tmp_path / "prefix" / DIRNAME / "7"
    folder.mkdir(parents=True)
    for name in ("1.result.tmp", "1.result.dispy-part", "meta.json.tmp"):
        (folder / name).symlink_to(victim)
    store = ResultStore(str(tmp_path / "prefix"))
    store.save_meta(7, {"client": "c"})
    store.save(7, [Reply(1, "finished", 1.0, 2.0, b"result")])
    assert victim.read_bytes() == b"precious"
    assert store.count(7) == 1
