"""Where a role's secret comes from (dispy_core.secret), issue 9 item 1."""

from __future__ import annotations

import os

import pytest

from dispy_core.secret import (
    MAX_SECRET_FILE,
    SECRET_ENV,
    Secret,
    SecretError,
    no_secret_warning,
    read_secret_file,
    resolve_secret,
    without_secrets,
)


@pytest.fixture
def secret_file(tmp_path):
    def make(data: bytes, mode: int = 0o600) -> str:
        path = tmp_path / "secret"
        path.write_bytes(data)
        path.chmod(mode)
        return str(path)

    return make


# --- precedence --------------------------------------------------------------------------------


def test_option_wins_over_environment():
    assert resolve_secret("opt", environ={SECRET_ENV: "env"}) == Secret("opt", "--secret")


def test_file_wins_over_environment(secret_file):
    path = secret_file(b"from-file\n")
    got = resolve_secret(None, path, environ={SECRET_ENV: "env"})
    assert (got.value, got.origin, got.warnings) == ("from-file", f"--secret-file {path}", [])


def test_environment_is_used_when_nothing_else_is_given():
    assert resolve_secret(None, environ={SECRET_ENV: "env"}) == Secret("env", SECRET_ENV)


@pytest.mark.parametrize("option", [None, ""])
def test_empty_option_falls_through_to_environment(option):
    # '' is the documented default: it cannot be told from "not given".
    assert resolve_secret(option, environ={SECRET_ENV: "env"}).value == "env"


def test_no_secret_anywhere_is_missing():
    got = resolve_secret(None, environ={SECRET_ENV: ""})
    assert got == Secret("", "")
    assert got.missing


def test_first_non_empty_of_several_variables():
    env = {"DISPY_NODE_SECRET": "", SECRET_ENV: "shared"}
    got = resolve_secret(None, env_vars=("DISPY_NODE_SECRET", SECRET_ENV), environ=env)
    assert got == Secret("shared", SECRET_ENV)


def test_option_and_file_together_are_refused(secret_file):
    with pytest.raises(SecretError, match="give --secret or --secret-file, not both"):
        resolve_secret("opt", secret_file(b"x"))


# --- the file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "secret"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # only one newline is removed
        (b" spaced secret \n", " spaced secret "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_file_content_with_one_trailing_newline_removed(secret_file, data, secret):
    assert read_secret_file(secret_file(data)).value == secret


def test_a_file_readable_by_others_gives_a_warning(secret_file):
    path = secret_file(b"s\n", 0o644)
    got = read_secret_file(path)
    assert got.value == "s"
    (warning,) = got.warnings
    assert warning == (
        f"--secret-file {path!r} may be read by other users (mode 0644); "
        f"restrict it with: chmod 600 {path}"
    )


def test_a_fifo_works(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child writes the secret and leaves
        with open(fifo, "wb") as fh:
            fh.write(b"piped\n")
        os._exit(0)
    try:
        got = read_secret_file(str(fifo))
    finally:
        os.waitpid(pid, 0)
    assert (got.value, got.warnings) == ("piped", [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"x" * (MAX_SECRET_FILE + 1), "is over 65536 bytes: is it the right file?"),
    ],
)
def test_unusable_file_content_is_refused(secret_file, data, message):
    path = secret_file(data)
    with pytest.raises(SecretError) as err:
        read_secret_file(path)
    assert str(err.value) == f"--secret-file {path!r} {message}"


def test_a_missing_file_is_refused_with_the_reason(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(SecretError) as err:
        read_secret_file(path, "--node-secret-file")
    assert str(err.value) == f"cannot read --node-secret-file {path!r}: No such file or directory"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(SecretError, match=": Is a directory"):
        read_secret_file(str(tmp_path))


# --- what jobs inherit, and the warning ----------------------------------------------------------


def test_jobs_environment_has_no_secret_variable():
    env = {
        "PATH": "/bin",
        SECRET_ENV: "a",
        "DISPY_NODE_SECRET": "b",
        "DISPY_CLUSTER_SECRET": "c",
        "DISPY_OTHER": "kept",
    }
    assert without_secrets(env) == {"PATH": "/bin", "DISPY_OTHER": "kept"}


def test_warning_names_who_what_and_how():
    text = no_secret_warning("dispy-node", "127.0.0.1 port 9", "run any code as user 'u'")
    assert text == (
        "dispy-node has no secret: anyone who can reach 127.0.0.1 port 9 can run any code as "
        "user 'u'. Set the same secret on every client and node, with the DISPY_SECRET "
        "environment variable, --secret-file PATH or -s/--secret."
    )
