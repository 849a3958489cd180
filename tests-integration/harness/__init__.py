"""Helpers for the integration suite: real ``dispy-node`` processes on loopback.

* :mod:`.polling`: ``wait_for`` (deadline polling; the suite never sleeps blindly).
* :mod:`.ports`: a port free for both TCP and UDP on 127.0.0.1.
* :mod:`.node`: :class:`NodeProcess`, the installed ``dispy-node`` CLI as a subprocess.
* :mod:`.procs`: leak checks with psutil.
* :mod:`.history`: records what a cluster reported for each job and checks it.
* :mod:`.computations`: the functions jobs run (shipped to nodes by value).
* :mod:`.logs`: capture of the client's ``dispy`` logger.
* :mod:`.netns`: separate networks from Linux network namespaces (the ``topology`` fixture),
  and :mod:`.where_client`: a client process there that reports where each job ran.
"""

from harness.history import History
from harness.logs import LogCapture
from harness.node import NodeProcess, NodeStartError
from harness.polling import wait_for
from harness.ports import free_port

__all__ = [
    "History",
    "LogCapture",
    "NodeProcess",
    "NodeStartError",
    "free_port",
    "wait_for",
]
