"""Shared protocol, transport, serialization and scheduling engine for dispy.

The role packages (dispy, dispy_node, dispy_scheduler, dispy_relay) build on the names
listed in ``__all__`` below: import them from here (``from dispy_core import Connection``)
or from the module that defines them. Anything else, and any name starting with ``_``, is
private to dispy-core.

The names load on first use (PEP 562): a CLI that needs only :mod:`dispy_core.config` to
print its help must not pay for pydantic, asyncio and psutil at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dispy_core.aio.admission import Admission, start_server
    from dispy_core.aio.connection import Connection, ConnectionClosed, PeerRefused
    from dispy_core.aio.discovery import listen_pings, send_ping, udp_socket
    from dispy_core.aio.handshake import open_connection
    from dispy_core.aio.tasks import TaskOwner
    from dispy_core.buffers import BufferPool
    from dispy_core.config import (
        CLIENT_PORT,
        DEFAULT_PULSE,
        MAX_FILE_SIZE,
        MSG_TIMEOUT,
        NODE_PORT,
        SCHEDULER_PORT,
        dead_after,
        parse_size,
    )
    from dispy_core.files import atomic_write, makedirs, store_file
    from dispy_core.protocol.discovery import Ping, is_pattern, matches
    from dispy_core.protocol.errors import ProtocolError, RemoteProtocolError
    from dispy_core.protocol.framing import (
        DEFAULT_MAX_MESSAGE,
        DIRECT_PAYLOAD,
        Buffer,
        Outgoing,
        Payload,
        make_room,
        nbytes,
    )
    from dispy_core.protocol.handshake import LoopGuard
    from dispy_core.protocol.jobs import JobStatus, NodeStatus
    from dispy_core.protocol.messages import (
        MAX_IDS,
        MAX_INTERVAL,
        MAX_NAME,
        MAX_PATH,
        NOT_WANTED,
        AvailInfo,
        CloseComputation,
        ComputationClosed,
        ComputationFailed,
        ComputationReady,
        ComputationSetup,
        ComputationStart,
        CpusSet,
        FileAck,
        FilePut,
        JobAck,
        JobCancel,
        JobDone,
        JobOutcome,
        JobProvisional,
        JobReport,
        JobStarted,
        JobSubmit,
        Message,
        NodeInfo,
        Notice,
        Pulse,
        RecoverRequest,
        RecoverStatus,
        SetCpus,
        clip,
    )
    from dispy_core.ratelimit import KeyedLimiter, Once, TokenBucket
    from dispy_core.secret import (
        SECRET_ENV,
        Secret,
        SecretError,
        no_secret_warning,
        resolve_secret,
        user_name,
        without_secrets,
    )
    from dispy_core.security import TLSConfig, TLSConfigError
    from dispy_core.serialize import Pickled

# Where each public name is defined (its module is imported on first use).
_WHERE: dict[str, str] = {
    "Admission": "dispy_core.aio.admission",
    "AvailInfo": "dispy_core.protocol.messages",
    "Buffer": "dispy_core.protocol.framing",
    "BufferPool": "dispy_core.buffers",
    "CLIENT_PORT": "dispy_core.config",
    "CloseComputation": "dispy_core.protocol.messages",
    "ComputationClosed": "dispy_core.protocol.messages",
    "ComputationFailed": "dispy_core.protocol.messages",
    "ComputationReady": "dispy_core.protocol.messages",
    "ComputationSetup": "dispy_core.protocol.messages",
    "ComputationStart": "dispy_core.protocol.messages",
    "Connection": "dispy_core.aio.connection",
    "ConnectionClosed": "dispy_core.aio.connection",
    "CpusSet": "dispy_core.protocol.messages",
    "DEFAULT_MAX_MESSAGE": "dispy_core.protocol.framing",
    "DEFAULT_PULSE": "dispy_core.config",
    "DIRECT_PAYLOAD": "dispy_core.protocol.framing",
    "FileAck": "dispy_core.protocol.messages",
    "FilePut": "dispy_core.protocol.messages",
    "JobAck": "dispy_core.protocol.messages",
    "JobCancel": "dispy_core.protocol.messages",
    "JobDone": "dispy_core.protocol.messages",
    "JobOutcome": "dispy_core.protocol.messages",
    "JobProvisional": "dispy_core.protocol.messages",
    "JobReport": "dispy_core.protocol.messages",
    "JobStarted": "dispy_core.protocol.messages",
    "JobStatus": "dispy_core.protocol.jobs",
    "JobSubmit": "dispy_core.protocol.messages",
    "KeyedLimiter": "dispy_core.ratelimit",
    "LoopGuard": "dispy_core.protocol.handshake",
    "MAX_FILE_SIZE": "dispy_core.config",
    "MAX_IDS": "dispy_core.protocol.messages",
    "MAX_INTERVAL": "dispy_core.protocol.messages",
    "MAX_NAME": "dispy_core.protocol.messages",
    "MAX_PATH": "dispy_core.protocol.messages",
    "MSG_TIMEOUT": "dispy_core.config",
    "Message": "dispy_core.protocol.messages",
    "NODE_PORT": "dispy_core.config",
    "NOT_WANTED": "dispy_core.protocol.messages",
    "NodeInfo": "dispy_core.protocol.messages",
    "NodeStatus": "dispy_core.protocol.jobs",
    "Notice": "dispy_core.protocol.messages",
    "Once": "dispy_core.ratelimit",
    "Outgoing": "dispy_core.protocol.framing",
    "Payload": "dispy_core.protocol.framing",
    "PeerRefused": "dispy_core.aio.connection",
    "Pickled": "dispy_core.serialize",
    "Ping": "dispy_core.protocol.discovery",
    "ProtocolError": "dispy_core.protocol.errors",
    "Pulse": "dispy_core.protocol.messages",
    "RecoverRequest": "dispy_core.protocol.messages",
    "RecoverStatus": "dispy_core.protocol.messages",
    "RemoteProtocolError": "dispy_core.protocol.errors",
    "SCHEDULER_PORT": "dispy_core.config",
    "SECRET_ENV": "dispy_core.secret",
    "Secret": "dispy_core.secret",
    "SecretError": "dispy_core.secret",
    "SetCpus": "dispy_core.protocol.messages",
    "TLSConfig": "dispy_core.security",
    "TLSConfigError": "dispy_core.security",
    "TaskOwner": "dispy_core.aio.tasks",
    "TokenBucket": "dispy_core.ratelimit",
    "atomic_write": "dispy_core.files",
    "clip": "dispy_core.protocol.messages",
    "dead_after": "dispy_core.config",
    "is_pattern": "dispy_core.protocol.discovery",
    "listen_pings": "dispy_core.aio.discovery",
    "make_room": "dispy_core.protocol.framing",
    "makedirs": "dispy_core.files",
    "matches": "dispy_core.protocol.discovery",
    "nbytes": "dispy_core.protocol.framing",
    "no_secret_warning": "dispy_core.secret",
    "open_connection": "dispy_core.aio.handshake",
    "parse_size": "dispy_core.config",
    "resolve_secret": "dispy_core.secret",
    "send_ping": "dispy_core.aio.discovery",
    "start_server": "dispy_core.aio.admission",
    "store_file": "dispy_core.files",
    "udp_socket": "dispy_core.aio.discovery",
    "user_name": "dispy_core.secret",
    "without_secrets": "dispy_core.secret",
}

# Plain sorted() order (test_exports checks it), not ruff's constants-first one.
__all__ = [  # noqa: RUF022
    "Admission",
    "AvailInfo",
    "Buffer",
    "BufferPool",
    "CLIENT_PORT",
    "CloseComputation",
    "ComputationClosed",
    "ComputationFailed",
    "ComputationReady",
    "ComputationSetup",
    "ComputationStart",
    "Connection",
    "ConnectionClosed",
    "CpusSet",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_PULSE",
    "DIRECT_PAYLOAD",
    "FileAck",
    "FilePut",
    "JobAck",
    "JobCancel",
    "JobDone",
    "JobOutcome",
    "JobProvisional",
    "JobReport",
    "JobStarted",
    "JobStatus",
    "JobSubmit",
    "KeyedLimiter",
    "LoopGuard",
    "MAX_FILE_SIZE",
    "MAX_IDS",
    "MAX_INTERVAL",
    "MAX_NAME",
    "MAX_PATH",
    "MSG_TIMEOUT",
    "Message",
    "NODE_PORT",
    "NOT_WANTED",
    "NodeInfo",
    "NodeStatus",
    "Notice",
    "Once",
    "Outgoing",
    "Payload",
    "PeerRefused",
    "Pickled",
    "Ping",
    "ProtocolError",
    "Pulse",
    "RecoverRequest",
    "RecoverStatus",
    "RemoteProtocolError",
    "SCHEDULER_PORT",
    "SECRET_ENV",
    "Secret",
    "SecretError",
    "SetCpus",
    "TLSConfig",
    "TLSConfigError",
    "TaskOwner",
    "TokenBucket",
    "atomic_write",
    "clip",
    "dead_after",
    "is_pattern",
    "listen_pings",
    "make_room",
    "makedirs",
    "matches",
    "nbytes",
    "no_secret_warning",
    "open_connection",
    "parse_size",
    "resolve_secret",
    "send_ping",
    "start_server",
    "store_file",
    "udp_socket",
    "user_name",
    "without_secrets",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dispy_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
