"""Errors raised by the sans-I/O protocol layer.

``LocalProtocolError`` means this side misused the API (a bug here); ``RemoteProtocolError``
means the peer sent something invalid (garbage, a tampered frame, a wrong secret).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every protocol error."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message that break the protocol."""


class AuthenticationError(RemoteProtocolError):
    """The peer could not prove it knows the shared secret (or refused our proof)."""


class VersionMismatchError(RemoteProtocolError):
    """The peer speaks another protocol version."""

    def __init__(self, ours: int, theirs: int) -> None:
        super().__init__(
            f"protocol version mismatch: this side speaks version {ours}, "
            f"the peer speaks version {theirs}; install the same dispy release on both"
        )
        self.ours = ours
        self.theirs = theirs
