"""Unit tests for the `dispy-relay` command line (in-process, via CliRunner)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dispy_relay
from dispy_relay import cli

runner = CliRunner()


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


def test_run_that_cannot_start_says_why_in_one_line_and_exits_2() -> None:
    # 192.0.2.77 (TEST-NET-1) is no address of this host.
    result = runner.invoke(cli.app, ["run", "-i", "192.0.2.77"], env={"DISPY_SECRET": "s"})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "dispy-relay run: -i 192.0.2.77 is not an IPv4 address of an interface of this host; "
        "give this host's address on the network to relay into with -i"
    )
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    assert "Traceback" not in result.output


def test_run_defaults_match_reference(
    captured: list[cli.RunOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    assert captured == [
        cli.RunOptions(
            debug=False,
            ip_addr=None,
            node_port=51348,
            listen_port=51348,  # listen_port defaults to node_port
            scheduler_nodes=(),
            scheduler_port=51349,
            secret="",
            secret_warnings=(),
        )
    ]


@pytest.mark.parametrize("style", ["underscore", "dash"])
def test_run_accepts_reference_option_spellings(style: str, captured: list[cli.RunOptions]) -> None:
    def opt(name: str) -> str:
        return "--" + (name if style == "underscore" else name.replace("_", "-"))

    args = [
        "run",
        "-d",
        opt("ip_addr"), "10.1.2.3",
        opt("node_port"), "1111",
        opt("listen_port"), "2222",
        opt("scheduler_node"), "172.16.3.2",
        opt("scheduler_node"), "172.16.3.3",
        opt("scheduler_port"), "3333",
        "-s", "s",
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert captured == [
        cli.RunOptions(
            debug=True,
            ip_addr="10.1.2.3",
            node_port=1111,
            listen_port=2222,
            scheduler_nodes=("172.16.3.2", "172.16.3.3"),
            scheduler_port=3333,
            secret="s",
            secret_warnings=(),
        )
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--node_port", "-1"],
        ["run", "--node_port", "0"],
        ["run", "--listen_port", "x"],
        ["run", "--listen-port", "65536"],
        ["run", "--scheduler_port", "0"],
        ["run", "-i"],
        ["run", "--nope"],
        ["run", "extra"],
    ],
)
def test_run_rejects_bad_options_with_exit_2(
    args: list[str], captured: list[cli.RunOptions]
) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert captured == []
    assert "Traceback" not in result.output


def test_short_ip_option(captured: list[cli.RunOptions]) -> None:
    result = runner.invoke(cli.app, ["run", "-i", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    assert captured[0].ip_addr == "127.0.0.1"


def test_python_dash_m_runs_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dispy-relay", "--version"])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_module("dispy_relay", run_name="__main__", alter_sys=True)
    assert excinfo.value.code == 0


def test_all_is_importable_and_sorted() -> None:
    assert dispy_relay.__all__ == sorted(dispy_relay.__all__)
    for name in dispy_relay.__all__:
        assert hasattr(dispy_relay, name)


# --- the secret (issue 9, item 1) -----------------------------------------------------------


def test_run_without_a_secret_does_not_warn(
    monkeypatch: pytest.MonkeyPatch, captured: list[cli.RunOptions]
) -> None:
    # The relay needs no secret (pings carry none and nodes authenticate whom they
    # connect to), so running without one exposes nothing to warn about.
    monkeypatch.delenv("DISPY_SECRET", raising=False)
    result = runner.invoke(cli.app, ["run", "--listen-port", "4242", "--node-port", "4343"])
    assert result.exit_code == 0
    assert result.stderr == ""
    assert captured[0].secret == ""


@pytest.mark.parametrize("spelling", ["--secret-file", "--secret_file"])
def test_run_reads_the_secret_from_a_file(
    spelling: str, captured: list[cli.RunOptions], tmp_path: Path
) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    path.chmod(0o600)
    result = runner.invoke(cli.app, ["run", spelling, str(path)], env={"DISPY_SECRET": "env"})
    assert result.exit_code == 0, result.output
    assert (captured[0].secret, captured[0].secret_warnings) == ("from-file", ())


def test_run_reads_the_secret_from_the_environment(captured: list[cli.RunOptions]) -> None:
    result = runner.invoke(cli.app, ["run"], env={"DISPY_SECRET": "env"})
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "env"


def test_run_with_a_missing_secret_file_exits_2(
    captured: list[cli.RunOptions], tmp_path: Path
) -> None:
    path = tmp_path / "nope"
    result = runner.invoke(cli.app, ["run", "--secret-file", str(path)])
    assert result.exit_code == 2
    assert captured == []
    assert result.stderr.strip() == (
        f"dispy-relay run: cannot read --secret-file {str(path)!r}: No such file or directory"
    )
