"""The node's settings, validated once from the command line."""

from __future__ import annotations

import os
import socket
import tempfile

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dispy_core.config import CLIENT_PORT, MAX_FILE_SIZE, MSG_TIMEOUT, NODE_PORT
from dispy_node._output import DEFAULT_MAX_OUTPUT

# Per stream of one job: the node keeps the last this many bytes of its stdout and stderr.
MAX_JOB_OUTPUT = DEFAULT_MAX_OUTPUT
# Results kept on disk for clients that went away: at most this many bytes, each at most this
# many seconds (7 days); the oldest go first. 0 = no limit.
MAX_STORED_RESULTS = 1 << 30
STORED_RESULTS_AGE = 7 * 24 * 3600.0


def default_dest_path_prefix() -> str:
    """``<tmp>/dispy-<user>/node``: per user, because the node refuses a prefix (or a parent
    of it) that another user owns, and in a shared /tmp anyone may create ``dispy`` first."""
    return os.path.join(tempfile.gettempdir(), f"dispy-{_user()}", "node")


def _user() -> str:
    try:
        import pwd

        name = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid()) if hasattr(os, "getuid") else "user"
    # A name is safer than a uid to read, but must stay one path component.
    return name if name and "/" not in name and name not in (".", "..") else str(os.geteuid())


class NodeConfig(BaseModel):
    """Everything ``dispy-node run`` was told."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpus: int = 0
    ip_addr: str | None = None
    ext_ip_addr: str | None = None
    node_port: int = Field(default=NODE_PORT, ge=0, le=65535)
    name: str = Field(default_factory=socket.gethostname)
    secret: str = ""
    dest_path_prefix: str = Field(default_factory=default_dest_path_prefix)
    keyfile: str | None = None
    certfile: str | None = None
    clean: bool = False
    msg_timeout: float = Field(default=MSG_TIMEOUT, gt=0)
    max_file_size: int = Field(default=MAX_FILE_SIZE, ge=0)
    max_job_output: int = Field(default=MAX_JOB_OUTPUT, ge=0)
    max_stored_results: int = Field(default=MAX_STORED_RESULTS, ge=0)
    stored_results_age: float = Field(default=STORED_RESULTS_AGE, ge=0, allow_inf_nan=False)
    zombie_interval: float = Field(default=60.0, gt=0)
    scheduler_node: str | None = None
    scheduler_port: int = Field(default=CLIENT_PORT, ge=1, le=65535)
    # Sources whose pings may ask for a connection to another address (relays, NAT).
    relays: tuple[str, ...] = ()

    @field_validator("dest_path_prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return os.path.abspath(os.path.expanduser(value))


def resolve_cpus(requested: int, available: int) -> int:
    """CPUs to serve: all for 0, ``n`` for 1..available, ``available - |n|`` for negative n.

    Raises:
        ValueError: naming the valid range.
    """
    if requested == 0:
        return available
    if requested > 0:
        if requested > available:
            raise ValueError(
                f"--cpus {requested} is more than the {available} CPUs of this machine"
            )
        return requested
    if available + requested < 1:
        raise ValueError(
            f"--cpus {requested} would leave no CPU to use (this machine has {available})"
        )
    return available + requested
