"""The `dispy-node` command line (in-process, via CliRunner, with the node itself patched out)."""

from __future__ import annotations

import runpy
import sys

import pytest
from typer.testing import CliRunner

import dispy_node
from dispy_node import cli
from dispy_node.config import NodeConfig

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch) -> list[NodeConfig]:
    """Record the config `run` would serve with, instead of starting a node."""
    seen: list[NodeConfig] = []
    monkeypatch.setattr(cli, "_run", seen.append)
    monkeypatch.setattr(cli, "_setup_logging", lambda debug: None)  # keep logging untouched
    return seen


def one_line(text: str) -> str:
    return " ".join(text.split())  # Rich wraps long lines at the terminal width


def test_version_prints_version_and_exits_0():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dispy-node {dispy_node.__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_the_run_command(flag):
    result = runner.invoke(cli.app, [flag])
    assert result.exit_code == 0
    assert "run" in result.stdout


def test_run_defaults(captured):
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.cpus, config.node_port, config.ip_addr) == (0, 51348, None)
    assert config.max_file_size == 10 * 1024 * 1024
    assert config.zombie_interval == 60 * 60.0  # minutes on the command line, seconds inside


@pytest.mark.parametrize("spelling", ["--ip_addr", "--ip-addr", "-i"])
def test_ip_addr_accepts_every_spelling(captured, spelling):
    result = runner.invoke(cli.app, ["run", spelling, "127.0.0.1"])
    assert result.exit_code == 0, result.output
    assert captured[0].ip_addr == "127.0.0.1"


@pytest.mark.parametrize("args", [["-c", "-1"], ["--cpus", "-1"], ["--cpus=-1"]])
def test_negative_cpus_are_passed_through(captured, args):
    result = runner.invoke(cli.app, ["run", *args])
    assert result.exit_code == 0, result.output
    assert captured[0].cpus == -1


@pytest.mark.parametrize(("text", "size"), [("5m", 5242880), ("512k", 524288), ("0", 0)])
@pytest.mark.parametrize("spelling", ["--max_file_size", "--max-file-size"])
def test_max_file_size_is_parsed(captured, spelling, text, size):
    result = runner.invoke(cli.app, ["run", spelling, text])
    assert result.exit_code == 0, result.output
    assert captured[0].max_file_size == size


def test_memory_and_disk_limits_default(captured):
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert config.max_job_output == 64 << 20
    assert config.max_stored_results == 1 << 30
    assert config.stored_results_age == 7 * 24 * 3600.0  # hours on the command line


@pytest.mark.parametrize("dash", [False, True])
def test_memory_and_disk_limits_accept_both_spellings(captured, dash):
    options = ["--max_job_output", "1m", "--max_stored_results", "2g", "--stored_results_age", "2"]
    if dash:
        options = [o.replace("_", "-") if o.startswith("--") else o for o in options]
    result = runner.invoke(cli.app, ["run", *options])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.max_job_output, config.max_stored_results) == (1 << 20, 2 << 30)
    assert config.stored_results_age == 7200.0


def test_invalid_max_file_size_exits_2_with_a_clear_message(captured):
    result = runner.invoke(cli.app, ["run", "--max_file_size", "abc"])
    assert result.exit_code == 2
    assert captured == []
    assert one_line(result.stderr) == (
        "dispy-node: invalid size 'abc': give a number >= 0 with an optional suffix "
        "k, m, g or t (e.g. 10m)"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--msg_timeout", "0"], "invalid --msg_timeout"),
        (["--node_port", "70000"], "invalid --node_port"),
        (["--zombie_interval", "0"], "invalid --zombie_interval"),
        (["--cpus", "many"], "Invalid value for '-c' / '--cpus'"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_options_exit_2_naming_the_option(captured, args, message):
    result = runner.invoke(cli.app, ["run", *args])
    assert result.exit_code == 2
    assert captured == []
    assert message in one_line(result.stderr)
    assert "Traceback" not in result.output


def test_reference_spellings_of_every_option_are_accepted(captured, tmp_path):
    args = [
        "run",
        "-d",
        "--node_port", "4000",
        "--ext_ip_addr", "203.0.113.7",
        "--name", "node-x",
        "--secret", "s3",
        "--dest_path_prefix", str(tmp_path),
        "--clean",
        "--msg_timeout", "7.5",
        "--zombie_interval", "2",
        "--scheduler_node", "10.0.0.1",
        "--scheduler_port", "4001",
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.node_port, config.ext_ip_addr, config.name) == (4000, "203.0.113.7", "node-x")
    assert (config.secret, config.dest_path_prefix, config.clean) == ("s3", str(tmp_path), True)
    assert (config.msg_timeout, config.zombie_interval) == (7.5, 120.0)
    assert (config.scheduler_node, config.scheduler_port) == ("10.0.0.1", 4001)


def test_dash_spellings_are_accepted(captured, tmp_path):
    args = ["run", "--node-port", "4000", "--ext-ip-addr", "203.0.113.7",
            "--dest-path-prefix", str(tmp_path), "--msg-timeout", "2"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert (captured[0].node_port, captured[0].msg_timeout) == (4000, 2.0)


def test_secret_is_read_from_the_environment(captured):
    result = runner.invoke(cli.app, ["run"], env={"DISPY_SECRET": "from-env"})
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "from-env"


def test_python_dash_m_runs_the_cli(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dispy-node", "--version"])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_module("dispy_node", run_name="__main__", alter_sys=True)
    assert excinfo.value.code == 0


# --- the secret: option, file, environment (issue 9, item 1) ------------------------------------


@pytest.fixture
def no_env_secret(monkeypatch):
    monkeypatch.delenv("DISPY_SECRET", raising=False)


def _secret_file(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("spelling", ["--secret-file", "--secret_file"])
def test_secret_is_read_from_a_file(captured, no_env_secret, tmp_path, spelling):
    path = _secret_file(tmp_path, "from-file\n")
    result = runner.invoke(cli.app, ["run", spelling, path])
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "from-file"


def test_secret_file_wins_over_the_environment(captured, tmp_path):
    path = _secret_file(tmp_path, "from-file")
    result = runner.invoke(cli.app, ["run", "--secret-file", path], env={"DISPY_SECRET": "env"})
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "from-file"


def test_secret_option_wins_over_the_environment(captured):
    result = runner.invoke(cli.app, ["run", "-s", "opt"], env={"DISPY_SECRET": "env"})
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "opt"


def test_no_secret_anywhere_still_runs_with_the_documented_default(captured, no_env_secret):
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    assert captured[0].secret == ""


def test_secret_and_secret_file_together_exit_2(captured, tmp_path):
    path = _secret_file(tmp_path, "x")
    result = runner.invoke(cli.app, ["run", "-s", "opt", "--secret-file", path])
    assert result.exit_code == 2
    assert captured == []
    assert one_line(result.stderr) == "dispy-node: give --secret or --secret-file, not both"


def test_missing_secret_file_exits_2_with_one_clear_message(captured, tmp_path):
    path = str(tmp_path / "nope")
    result = runner.invoke(cli.app, ["run", "--secret-file", path])
    assert result.exit_code == 2
    assert captured == []
    assert one_line(result.stderr) == (
        f"dispy-node: cannot read --secret-file {path!r}: No such file or directory"
    )
    assert "Traceback" not in result.output


def test_unreadable_secret_file_exits_2(captured, tmp_path, monkeypatch):
    path = _secret_file(tmp_path, "x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)  # root may read anything: simulate EACCES
    result = runner.invoke(cli.app, ["run", "--secret-file", path])
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        f"dispy-node: cannot read --secret-file {path!r}: Permission denied"
    )


def test_secret_file_readable_by_others_is_used_with_a_warning(captured, tmp_path, caplog):
    path = _secret_file(tmp_path, "s", 0o644)
    with caplog.at_level("WARNING", logger="dispy_node"):
        result = runner.invoke(cli.app, ["run", "--secret-file", path])
    assert result.exit_code == 0, result.output
    assert captured[0].secret == "s"
    assert [r.getMessage() for r in caplog.records] == [
        f"--secret-file {path!r} may be read by other users (mode 0644); "
        f"restrict it with: chmod 600 {path}"
    ]


def test_relay_is_repeatable_and_defaults_to_none(captured):
    result = runner.invoke(cli.app, ["run", "--relay", "192.0.2.1", "--relay", "relay.lan"])
    assert result.exit_code == 0, result.output
    assert captured[0].relays == ("192.0.2.1", "relay.lan")
    result = runner.invoke(cli.app, ["run"])
    assert captured[1].relays == ()


def test_help_documents_relay():
    result = runner.invoke(cli.app, ["run", "--help"])
    assert "--relay" in one_line(result.stdout)


def test_dispy_415_spellings_are_accepted(captured):
    # dispynode.py of 4.15: --host, --ext_host, --scheduler_host, and --daemon (this node
    # never reads its input, which is all --daemon asked for)
    args = ["run", "--daemon", "--host", "127.0.0.1", "--ext_host", "10.0.0.9"]
    result = runner.invoke(cli.app, [*args, "--scheduler_host", "10.0.0.1"])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.ip_addr, config.ext_ip_addr) == ("127.0.0.1", "10.0.0.9")
    assert config.scheduler_node == "10.0.0.1"
