"""Free ports on 127.0.0.1 (the node binds TCP and UDP on one port)."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(attempts: int = 50) -> int:
    """A port that is free right now for both TCP and UDP on 127.0.0.1.

    Another process may still take it before we use it; :class:`~harness.NodeProcess`
    retries with a new port when the node reports that it cannot listen.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP after {attempts} attempts")
