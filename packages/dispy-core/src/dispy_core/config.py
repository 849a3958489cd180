"""Defaults and option parsing shared by every role."""

from __future__ import annotations

import re

CLIENT_PORT = 51347
NODE_PORT = 51348
SCHEDULER_PORT = 51349
MSG_TIMEOUT = 5.0
MAX_FILE_SIZE = 10 * 1024 * 1024
DEFAULT_PULSE = 10.0  # nodes pulse this often when the cluster sets no pulse_interval


def dead_after(pulse_interval: float | None) -> float:
    """Silence after which a client takes a node for dead (and a node stops starting the
    jobs queued for that client): 5 x pulse_interval, or 60 s without one."""
    return 5 * pulse_interval if pulse_interval else 60.0


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from ``'10m'``, ``'512k'``, ``'2g'``, ``'0'`` (k/m/g/t are powers of 1024).

    Raises:
        ValueError: with a message naming the accepted forms.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must be >= 0, not {text}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(
            f"invalid size {text!r}: give a number >= 0 with an optional suffix "
            "k, m, g or t (e.g. 10m)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
