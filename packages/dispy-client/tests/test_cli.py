"""The `dispy` command line's secret handling (in-process, discovery patched out)."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

import dispy.discovery
from dispy import cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def keep_dispy_logger():
    """`dispy recover` attaches a handler to the library's logger: undo it after each test."""
    logger = logging.getLogger("dispy")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


def one_line(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines at the terminal width


@pytest.fixture
def secrets_used(monkeypatch) -> list[str]:
    seen: list[str] = []

    async def discover(hosts, **kwargs):
        seen.append(kwargs["secret"])
        return []

    monkeypatch.setattr(dispy.discovery, "discover", discover)
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    return seen


def test_nodes_takes_the_secret_from_the_environment(secrets_used):
    result = runner.invoke(cli.app, ["nodes"], env={"DISPY_SECRET": "env"})
    assert result.exit_code == 1  # nobody answered
    assert secrets_used == ["env"]
    assert "warning" not in result.stderr


@pytest.mark.parametrize("spelling", ["--secret-file", "--secret_file"])
def test_nodes_takes_the_secret_from_a_file(secrets_used, tmp_path, spelling):
    path = tmp_path / "s"
    path.write_text("from-file\n")
    path.chmod(0o600)
    result = runner.invoke(cli.app, ["nodes", spelling, str(path)], env={"DISPY_SECRET": "e"})
    assert secrets_used == ["from-file"]
    assert "warning" not in result.stderr


def test_nodes_without_a_secret_warns_once(secrets_used):
    result = runner.invoke(cli.app, ["nodes", "-i", "127.0.0.1"])
    assert secrets_used == [""]
    text = one_line(result.stderr)
    assert text.count("warning:") == 1
    assert "dispy nodes has no secret: anyone who can reach 127.0.0.1" in text
    assert "DISPY_SECRET" in text


def test_nodes_with_a_missing_secret_file_exits_2(secrets_used, tmp_path):
    path = str(tmp_path / "nope")
    result = runner.invoke(cli.app, ["nodes", "--secret-file", path])
    assert result.exit_code == 2
    assert secrets_used == []
    assert one_line(result.stderr) == (
        f"dispy nodes: cannot read --secret-file {path!r}: No such file or directory"
    )


def test_recover_without_the_environments_secret_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    path = tmp_path / "r"
    path.write_text('{"format": "dispy-recover-1", "comp_id": 1, "secret_env": "DISPY_SECRET"}\n')
    path.chmod(0o600)
    result = runner.invoke(cli.app, ["recover", str(path)])
    assert result.exit_code == 2
    assert "took its secret from DISPY_SECRET, which is not set here" in one_line(result.stderr)
