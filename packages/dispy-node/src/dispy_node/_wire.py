"""Local framing between the node daemon, a computation process and its workers.

These pipes never leave the machine and connect processes the node started itself, so they
use fixed binary headers, not the network protocol.

* control (daemon <-> computation process): ``json_len:u32 | payload_len:u32 | json | payload``
* spawn channel (daemon -> computation process, a Unix socket pair): ``wid:u32`` with one end
  of the new worker's socket pair attached (SCM_RIGHTS)
* daemon -> worker: ``op:u8 | job_id:u64 | payload_len:u32 | payload``
* worker -> daemon: ``op:u8 | outcome:u8 | job_id:u64 | start:f64 | end:f64 | len:u32 | payload``

A job's ``dispy_send_file`` sends ``OP_SEND_FILE`` and blocks until the daemon answers
``OP_ACK`` (payload empty on success, else the reason).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from typing import Any

CONTROL = struct.Struct("!II")
SPAWN = struct.Struct("!I")
TO_WORKER = struct.Struct("!BQI")
FROM_WORKER = struct.Struct("!BBQddI")

OP_RUN = 1
OP_DONE = 2
OP_PROVISIONAL = 3
OP_SEND_FILE = 4
OP_ACK = 5

# payload of OP_SEND_FILE: path_len:u16 | mode:u32 | mtime:f64 | path (utf-8) | contents
SEND_FILE = struct.Struct("!HId")

# Socket buffers of a worker's link: large jobs and results cross in fewer, larger steps
# (fewer wake-ups of daemon and worker). The kernel caps them at its own maximum.
SOCKET_BUFFER = 4 << 20

OUTCOME_FINISHED = 0
OUTCOME_TERMINATED = 1


def control_frame(obj: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    head = json.dumps(obj).encode()
    return CONTROL.pack(len(head), len(payload)) + head + payload


def widen(sock: Any) -> None:
    """Give a worker link's socket larger send and receive buffers (best effort)."""
    if sock is None:
        return
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
