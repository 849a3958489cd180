"""Where a role's shared secret comes from, and what to say when there is none.

The secret defaults to ``''``, as the reference documents, and with it anyone who reaches a
node runs code there. So every role looks for a secret in more places than its argument
(a file, the environment) and, when it still has none, logs one warning that names the
exposure. The places, first found wins:

1. the ``-s/--secret`` option (or the program's ``secret=`` argument), when not empty;
2. ``--secret-file PATH``: the file's text, one trailing newline removed;
3. the ``DISPY_SECRET`` environment variable, when not empty.

A file or the environment keeps the secret out of ``ps``; ``--secret`` still works.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SECRET_ENV = "DISPY_SECRET"
# Every variable a role reads its secrets from; a node's jobs must not inherit any of them.
SECRET_ENV_VARS = (SECRET_ENV, "DISPY_NODE_SECRET", "DISPY_CLUSTER_SECRET")
# A secret is a passphrase; anything bigger is the wrong file.
MAX_SECRET_FILE = 64 * 1024

HOW_TO_SET = f"the {SECRET_ENV} environment variable, --secret-file PATH or -s/--secret"


class SecretError(ValueError):
    """The secret options contradict each other, or a secret file is unusable."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A resolved secret, where it came from (``''`` when nowhere) and what to warn about."""

    value: str
    origin: str
    warnings: list[str] = field(default_factory=list)

    @property
    def missing(self) -> bool:
        return not self.value


def read_secret_file(path: str, option: str = "--secret-file") -> Secret:
    """The secret in ``path``: its UTF-8 text with one trailing newline removed.

    A FIFO (``--secret-file <(pass show dispy)``) works too. A regular file that group or
    others may read gives a warning, not an error: mounted secrets (containers, Kubernetes)
    are often 0644 and root-owned, and refusing them would push users back to ``-s``.

    Raises:
        SecretError: the file is missing, unreadable, not text, too large or empty.
    """
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise SecretError(f"cannot read {option} {path!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE:
        raise SecretError(
            f"{option} {path!r} is over {MAX_SECRET_FILE} bytes: is it the right file?"
        )
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SecretError(f"{option} {path!r} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise SecretError(f"{option} {path!r} is empty")
    warnings = []
    if stat.S_ISREG(mode) and mode & 0o077:
        warnings.append(
            f"{option} {path!r} may be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"restrict it with: chmod 600 {path}"
        )
    return Secret(text, f"{option} {path}", warnings)


def resolve_secret(
    option: str | None,
    secret_file: str | None = None,
    *,
    env_vars: Sequence[str] = (SECRET_ENV,),
    environ: Mapping[str, str] | None = None,
    option_name: str = "--secret",
    file_option: str = "--secret-file",
) -> Secret:
    """The secret from an option, else a file, else the first non-empty ``env_vars``.

    Raises:
        SecretError: both ``option`` and ``secret_file`` are given, or the file is unusable.
    """
    if option and secret_file is not None:
        raise SecretError(f"give {option_name} or {file_option}, not both")
    if option:
        return Secret(option, option_name)
    if secret_file is not None:
        return read_secret_file(secret_file, file_option)
    env = os.environ if environ is None else environ
    for name in env_vars:
        value = env.get(name, "")
        if value:
            return Secret(value, name)
    return Secret("", "")


def without_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without the variables that carry secrets (for jobs)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in SECRET_ENV_VARS}


def no_secret_warning(role: str, where: str, exposure: str, how: str = HOW_TO_SET) -> str:
    """The one warning a role started without a secret logs."""
    return (
        f"{role} has no secret: anyone who can reach {where} can {exposure}. "
        f"Set the same secret on every client and node, with {how}."
    )


def user_name() -> str:
    """This process's user, for warnings (a uid when it has no name)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        return os.environ.get("USER") or os.environ.get("USERNAME") or "this user"
