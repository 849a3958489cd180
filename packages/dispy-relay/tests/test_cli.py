"""Unit tests for the `dispy-relay` command line (in-process, via CliRunner)."""

from __future__ import annotations

import runpy
import sys

import pytest
from typer.testing import CliRunner

import dispy_relay
from dispy_relay import cli

runner = CliRunner()

NOT_IMPLEMENTED = "dispy-relay run: not implemented yet (the relay lands in a later release)"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[cli.RunOptions]:
    """Replace the service call with a recorder so option parsing can be checked."""
    seen: list[cli.RunOptions] = []
    monkeypatch.setattr(cli, "_run", seen.append)
    return seen


def test_version_prints_version_and_exits_0() -> None:
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dispy-relay {dispy_relay.__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_run_command(flag: str) -> None:
    result = runner.invoke(cli.app, [flag])
    assert result.exit_code == 0
    assert "run" in result.stdout


def test_run_help_exits_0() -> None:
    result = runner.invoke(cli.app, ["run", "--help"])
    assert result.exit_code == 0
    assert "--listen" in result.stdout


def test_run_reports_not_implemented_and_exits_2() -> None:
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == NOT_IMPLEMENTED
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    assert "Traceback" not in result.output


def test_run_defaults_match_reference(captured: list[cli.RunOptions]) -> None:
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    assert captured == [
        cli.RunOptions(
            debug=False,
            node_port=51348,
            listen_port=51348,  # listen_port defaults to node_port
            scheduler_nodes=(),
            scheduler_port=51349,
        )
    ]


@pytest.mark.parametrize("style", ["underscore", "dash"])
def test_run_accepts_reference_option_spellings(style: str, captured: list[cli.RunOptions]) -> None:
    def opt(name: str) -> str:
        return "--" + (name if style == "underscore" else name.replace("_", "-"))

    args = [
        "run",
        "-d",
        opt("node_port"), "1111",
        opt("listen_port"), "2222",
        opt("scheduler_node"), "172.16.3.2",
        opt("scheduler_node"), "172.16.3.3",
        opt("scheduler_port"), "3333",
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert captured == [
        cli.RunOptions(
            debug=True,
            node_port=1111,
            listen_port=2222,
            scheduler_nodes=("172.16.3.2", "172.16.3.3"),
            scheduler_port=3333,
        )
    ]


@pytest.mark.parametrize(
    "args",
    [["run", "--node_port", "-1"], ["run", "--listen_port", "x"], ["run", "--nope"]],
)
def test_run_rejects_bad_options_with_exit_2(
    args: list[str], captured: list[cli.RunOptions]
) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert captured == []
    assert "Traceback" not in result.output


def test_python_dash_m_runs_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dispy-relay", "--version"])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_module("dispy_relay", run_name="__main__", alter_sys=True)
    assert excinfo.value.code == 0


def test_all_is_importable_and_sorted() -> None:
    assert dispy_relay.__all__ == sorted(dispy_relay.__all__)
    for name in dispy_relay.__all__:
        assert hasattr(dispy_relay, name)
