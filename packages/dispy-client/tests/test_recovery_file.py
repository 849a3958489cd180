"""The recover file holds the cluster's secret: created exclusively, 0600 (issue 9, item 9),
and a secret from DISPY_SECRET stays in the environment (item 1)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from dispy.cluster import cluster_secret
from dispy.recovery import RecoveryLog, _Plan, secret_record

HEADER = {"comp_id": 7, "name": "c", "secret": "s3cret", "node_port": 1}


def _header(path) -> dict:
    with open(path) as fh:
        return json.loads(fh.readline())


def test_recover_file_is_created_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "recover"
    old = os.umask(0)
    try:
        log = RecoveryLog(str(path), HEADER)
    finally:
        os.umask(old)
    log.close(remove=False)
    assert path.stat().st_mode & 0o777 == 0o600
    assert _header(path)["secret"] == "s3cret"


def test_an_existing_recover_file_is_refused_not_truncated(tmp_path):
    # It may be the log of an earlier run still to recover; and its mode may be 0644, which
    # the old code kept while writing the secret into it.
    path = tmp_path / "recover"
    path.write_text("earlier run\n")
    path.chmod(0o644)
    with pytest.raises(FileExistsError) as err:
        RecoveryLog(str(path), HEADER)
    assert str(err.value) == (
        f"recover file {str(path)!r} already exists: it may hold jobs of an earlier run "
        f"(collect them with dispy.recover_jobs({str(path)!r})); remove it or give another "
        "recover_file"
    )
    assert path.read_text() == "earlier run\n"


def test_a_link_planted_at_the_recover_file_is_not_followed(tmp_path):
    victim = tmp_path / "readable-by-all"
    victim.write_text("")
    victim.chmod(0o644)
    (tmp_path / "recover").symlink_to(victim)
    with pytest.raises(FileExistsError):
        RecoveryLog(str(tmp_path / "recover"), HEADER)
    assert victim.read_text() == "", "the secret must not be written through the link"


def test_a_default_name_already_taken_moves_to_the_next_free_one(tmp_path):
    base = tmp_path / "_dispy_20260101000000"
    base.write_text("other run")
    (tmp_path / "_dispy_20260101000000-1").symlink_to(tmp_path / "elsewhere")
    log = RecoveryLog(str(base), HEADER, pick_free=True)
    log.close(remove=False)
    assert log.path == f"{base}-2"
    assert base.read_text() == "other run"
    assert not (tmp_path / "elsewhere").exists()
    assert os.stat(log.path).st_mode & 0o777 == 0o600


# --- the secret in the header ----------------------------------------------------------------


def test_a_secret_from_the_environment_is_not_written_to_the_file():
    assert secret_record("s", "DISPY_SECRET") == {"secret_env": "DISPY_SECRET"}
    assert secret_record("s", "secret=") == {"secret": "s"}
    assert secret_record("", "") == {"secret": ""}


def _write(path, header: dict, mode: int = 0o600) -> str:
    path.write_text(json.dumps({"format": "dispy-recover-1", **header}) + "\n")
    path.chmod(mode)
    return str(path)


def test_recovery_reads_a_secret_recorded_as_from_the_environment(tmp_path, monkeypatch):
    path = _write(tmp_path / "r", {"comp_id": 1, "secret_env": "DISPY_SECRET"})
    monkeypatch.setenv("DISPY_SECRET", "from-env")
    assert _Plan(path).secret == "from-env"


def test_recovery_without_the_environments_secret_says_what_to_set(tmp_path, monkeypatch):
    path = _write(tmp_path / "r", {"comp_id": 1, "secret_env": "DISPY_SECRET"})
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    with pytest.raises(ValueError, match="took its secret from DISPY_SECRET, which is not set"):
        _Plan(path)


def test_recovery_uses_the_recorded_secret_even_with_the_environment_set(tmp_path, monkeypatch):
    path = _write(tmp_path / "r", {"comp_id": 1, "secret": "recorded"})
    monkeypatch.setenv("DISPY_SECRET", "other")
    assert _Plan(path).secret == "recorded"


def test_a_recover_file_others_may_read_gives_a_warning(tmp_path):
    path = _write(tmp_path / "r", {"comp_id": 1, "secret": "x"}, 0o644)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dispy")
    logger.addHandler(handler)
    try:
        _Plan(path)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        f"recover file {path} may be read by other users (mode 0644): the secret in it may be "
        f"known to them; restrict it with: chmod 600 {path}"
    ]


# --- which secret a cluster uses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ("", "from-env", ("from-env", "DISPY_SECRET")),
        ("mine", "from-env", ("mine", "secret=")),
        ("", None, ("", "")),
    ],
)
def test_cluster_secret(monkeypatch, given, env, expected):
    if env is None:
        monkeypatch.delenv("DISPY_SECRET", raising=False)
    else:
        monkeypatch.setenv("DISPY_SECRET", env)
    got = cluster_secret(given)
    assert (got.value, got.origin) == expected
