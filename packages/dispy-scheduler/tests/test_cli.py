"""Unit tests for the `dispy-scheduler` command line (in-process, via CliRunner)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dispy_scheduler
from dispy_scheduler import cli
from dispy_scheduler.service import Settings

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[cli.ServeOptions]:
    """Replace the service call with a recorder so option parsing can be checked."""
    seen: list[cli.ServeOptions] = []
    monkeypatch.setattr(cli, "_run", seen.append)
    return seen


def test_version_prints_version_and_exits_0() -> None:
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dispy-scheduler {dispy_scheduler.__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_serve_command(flag: str) -> None:
    result = runner.invoke(cli.app, [flag])
    assert result.exit_code == 0
    assert "serve" in result.stdout


def test_serve_help_exits_0() -> None:
    result = runner.invoke(cli.app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--scheduler" in result.stdout


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replace the service itself (never started by unit tests) with a recorder."""
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "_serve", seen.append)
    return seen


def test_serve_runs_the_service_with_the_checked_settings(served: list[Settings]) -> None:
    result = runner.invoke(
        cli.app,
        ["serve", "--max_file_size", "2k", "--pulse_interval", "3", "--httpd"],
        env={"DISPY_SECRET": "s"},
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    (settings,) = served
    assert settings.max_file_size == 2048
    assert settings.pulse_interval == 3
    assert settings.httpd is True
    assert settings.node_secret == settings.cluster_secret == "s"
    assert not settings.node_tls.enabled
    assert not settings.cluster_tls.enabled


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--max_file_size", "ten"], "invalid size 'ten'"),
        (["--cluster_keyfile", __file__], "--cluster_keyfile given without --cluster_certfile"),
        (["--node_certfile", __file__], "cannot use certfile"),
    ],
)
def test_serve_rejects_what_the_parser_cannot_check_with_exit_2(
    args: list[str], text: str, served: list[Settings]
) -> None:
    result = runner.invoke(cli.app, ["serve", *args], env={"DISPY_SECRET": "s"})
    assert result.exit_code == 2
    assert served == []
    assert text in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_serve_defaults_match_reference(captured: list[cli.ServeOptions]) -> None:
    result = runner.invoke(cli.app, ["serve"])
    assert result.exit_code == 0, result.output
    (options,) = captured
    assert (options.port, options.node_port, options.scheduler_port) == (51347, 51348, 51349)
    assert options.msg_timeout == 5.0
    assert options.max_file_size == "0"
    assert options.nodes == options.ip_addrs == options.ext_ip_addrs == ()
    assert (options.debug, options.httpd, options.clean) == (False, False, False)


@pytest.mark.parametrize("style", ["underscore", "dash"])
def test_serve_accepts_reference_option_spellings(
    style: str, captured: list[cli.ServeOptions], tmp_path: Path
) -> None:
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    key.write_text("key")
    cert.write_text("cert")

    def opt(name: str) -> str:
        return "--" + (name if style == "underscore" else name.replace("_", "-"))

    args = [
        "serve",
        "-d",
        "-n", "10.0.0.1",
        "--nodes", "10.0.0.2",
        "-i", "192.168.20.55",
        opt("ip_addr"), "192.168.20.56",
        opt("ext_ip_addr"), "203.0.113.7",
        "-p", "1111",
        opt("scheduler_port"), "2222",
        opt("node_port"), "3333",
        opt("node_secret"), "ns",
        opt("cluster_secret"), "cs",
        opt("node_keyfile"), str(key),
        opt("node_certfile"), str(cert),
        opt("cluster_keyfile"), str(key),
        opt("cluster_certfile"), str(cert),
        "--httpd",
        opt("pulse_interval"), "10",
        opt("ping_interval"), "30",
        opt("max_file_size"), "10m",
        "--clean",
        opt("msg_timeout"), "7.5",
        opt("dest_path_prefix"), str(tmp_path / "store"),
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert captured == [
        cli.ServeOptions(
            debug=True,
            nodes=("10.0.0.1", "10.0.0.2"),
            ip_addrs=("192.168.20.55", "192.168.20.56"),
            ext_ip_addrs=("203.0.113.7",),
            port=1111,
            scheduler_port=2222,
            node_port=3333,
            node_secret="ns",
            cluster_secret="cs",
            secret_warnings=(),
            node_keyfile=key,
            node_certfile=cert,
            cluster_keyfile=key,
            cluster_certfile=cert,
            httpd=True,
            pulse_interval=10.0,
            ping_interval=30.0,
            max_file_size="10m",
            clean=True,
            dest_path_prefix=tmp_path / "store",
            msg_timeout=7.5,
        )
    ]


def test_serve_reads_secrets_from_environment(captured: list[cli.ServeOptions]) -> None:
    env = {"DISPY_NODE_SECRET": "from-env-n", "DISPY_CLUSTER_SECRET": "from-env-c"}
    result = runner.invoke(cli.app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    assert (captured[0].node_secret, captured[0].cluster_secret) == ("from-env-n", "from-env-c")


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--pulse_interval", "0"],
        ["serve", "--port", "70000"],
        ["serve", "--node_certfile", "/nonexistent/cert.pem"],
        ["serve", "--no-such-option"],
    ],
)
def test_serve_rejects_bad_options_with_exit_2(
    args: list[str], captured: list[cli.ServeOptions]
) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert captured == []
    assert "Traceback" not in result.output


def test_python_dash_m_runs_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dispy-scheduler", "--version"])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_module("dispy_scheduler", run_name="__main__", alter_sys=True)
    assert excinfo.value.code == 0


def test_all_is_importable_and_sorted() -> None:
    assert dispy_scheduler.__all__ == sorted(dispy_scheduler.__all__)
    for name in dispy_scheduler.__all__:
        assert hasattr(dispy_scheduler, name)


# --- the secrets (issue 9, item 1) ----------------------------------------------------------


@pytest.fixture
def no_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPY_SECRET", "DISPY_NODE_SECRET", "DISPY_CLUSTER_SECRET"):
        monkeypatch.delenv(name, raising=False)


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_serve_without_secrets_warns_once_naming_ports_and_remedy(
    no_env_secrets: None, served: list[Settings]
) -> None:
    args = ["serve", "--ip-addr", "127.0.0.1", "--port", "4001", "--scheduler-port", "4002"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0
    (warning,) = result.stderr.strip().splitlines()
    assert warning == (
        "dispy-scheduler: warning: dispy-scheduler has no cluster or node secret: anyone who "
        "can reach 127.0.0.1 port 4002 can submit computations, which run any code as the "
        "nodes' users on every node it uses; anyone who can reach 127.0.0.1 port 4001 can "
        "pose as a node: receive the clients' computations and arguments and send back forged "
        "results. Set the secrets with DISPY_SECRET (or DISPY_CLUSTER_SECRET / "
        "DISPY_NODE_SECRET), --secret-file PATH, or --cluster-secret / --node-secret."
    )


def test_serve_with_only_a_node_secret_warns_about_clients(
    no_env_secrets: None, served: list[Settings]
) -> None:
    result = runner.invoke(cli.app, ["serve"], env={"DISPY_NODE_SECRET": "n"})
    warning = result.stderr.strip().splitlines()[0]
    assert "has no cluster secret: anyone who can reach any address of this host port 51349" in (
        warning
    )
    assert "pose as a node" not in warning


def test_dispy_secret_serves_both_peers(captured: list[cli.ServeOptions]) -> None:
    result = runner.invoke(cli.app, ["serve"], env={"DISPY_SECRET": "shared"})
    assert result.exit_code == 0, result.output
    assert (captured[0].node_secret, captured[0].cluster_secret) == ("shared", "shared")


@pytest.mark.parametrize("spelling", ["--secret-file", "--secret_file"])
def test_secret_file_serves_both_peers_and_wins_over_the_environment(
    captured: list[cli.ServeOptions], tmp_path: Path, spelling: str
) -> None:
    path = _file(tmp_path, "s", "from-file\n")
    env = {"DISPY_SECRET": "e", "DISPY_NODE_SECRET": "en", "DISPY_CLUSTER_SECRET": "ec"}
    result = runner.invoke(cli.app, ["serve", spelling, path], env=env)
    assert result.exit_code == 0, result.output
    assert (captured[0].node_secret, captured[0].cluster_secret) == ("from-file", "from-file")


def test_own_secret_files_and_options_win_over_the_shared_file(
    captured: list[cli.ServeOptions], tmp_path: Path, no_env_secrets: None
) -> None:
    shared = _file(tmp_path, "s", "shared")
    nodes = _file(tmp_path, "n", "for-nodes")
    args = ["serve", "--secret-file", shared, "--node-secret-file", nodes]
    result = runner.invoke(cli.app, [*args, "--cluster-secret", "opt"])
    assert result.exit_code == 0, result.output
    assert (captured[0].node_secret, captured[0].cluster_secret) == ("for-nodes", "opt")


def test_node_secret_and_its_file_together_exit_2(
    captured: list[cli.ServeOptions], tmp_path: Path
) -> None:
    path = _file(tmp_path, "n", "x")
    result = runner.invoke(cli.app, ["serve", "--node-secret", "a", "--node-secret-file", path])
    assert result.exit_code == 2
    assert captured == []
    assert result.stderr.strip() == (
        "dispy-scheduler serve: give --node-secret or --node-secret-file, not both"
    )


def test_missing_secret_file_exits_2(captured: list[cli.ServeOptions], tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    result = runner.invoke(cli.app, ["serve", "--secret-file", path])
    assert result.exit_code == 2
    assert captured == []
    assert result.stderr.strip() == (
        f"dispy-scheduler serve: cannot read --secret-file {path!r}: No such file or directory"
    )


def test_serve_accepts_dispy_415_spellings(captured: list[cli.ServeOptions]) -> None:
    # dispyscheduler.py of 4.15: --node, --host, --ext_host, and --daemon (the scheduler
    # never reads its input)
    args = ["serve", "--daemon", "--node", "10.0.0.1", "--host", "127.0.0.1"]
    result = runner.invoke(cli.app, [*args, "--ext_host", "203.0.113.7"])
    assert result.exit_code == 0, result.output
    (options,) = captured
    assert options.nodes == ("10.0.0.1",)
    assert options.ip_addrs == ("127.0.0.1",)
    assert options.ext_ip_addrs == ("203.0.113.7",)
