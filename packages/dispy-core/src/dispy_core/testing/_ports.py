"""Ephemeral ports for tests: ask the kernel, never hard-code a number."""

from __future__ import annotations

import socket
from typing import Literal

PortKind = Literal["tcp", "udp", "both"]

_ATTEMPTS = 50


def _bind(host: str, port: int, sock_type: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, sock_type)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1", kind: PortKind = "tcp") -> int:
    """A port on ``host`` that nothing is bound to right now.

    The kernel picks the number (bind to port 0), so parallel tests do not collide. With
    ``kind="both"`` the port is free for TCP *and* UDP at once, as a dispy node needs (it
    listens for connections and discovery pings on the same number). The sockets are closed
    before returning, so another process could take the port in between; bind with port 0
    yourself where the code under test allows it.

    Args:
        host: the address to probe; keep it on loopback in tests.
        kind: ``"tcp"``, ``"udp"`` or ``"both"``.

    Returns:
        The port number.

    Raises:
        OSError: no port free for both protocols was found after many attempts.

    Example:
        >>> port = free_port(kind="both")
        >>> 0 < port < 65536
        True
    """
    if kind not in ("tcp", "udp", "both"):
        raise ValueError(f"kind must be 'tcp', 'udp' or 'both', not {kind!r}")
    first = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(_ATTEMPTS):
        with _bind(host, 0, first) as sock:
            port: int = sock.getsockname()[1]
            if kind != "both":
                return port
            try:
                _bind(host, port, socket.SOCK_DGRAM).close()
            except OSError:
                continue  # taken for UDP: ask the kernel for another one
            return port
    raise OSError(f"no port on {host} is free for both TCP and UDP after {_ATTEMPTS} attempts")
