"""Challenge-response handshake keyed by the shared secret.

Theory of operation
-------------------
Two roles: the *connector* (opened the TCP connection) and the *acceptor*. Each makes a
fresh random nonce. Messages, in order::

    connector -> Hello(protocol, role, name, nonce_c)
    acceptor  -> Challenge(protocol, role, name, nonce_a,
                           proof_a = HMAC(secret, "acceptor" | nonce_c | nonce_a))
    connector -> Proof(proof_c = HMAC(secret, "connector" | nonce_a | nonce_c))
    acceptor  -> Welcome

Either side that finds the other's proof wrong (or the protocol version different) sends
``Refused(reason)`` instead and closes. Neither the secret nor a fixed hash of it crosses the
wire: each proof is bound to both fresh nonces, so a recorded handshake replayed later fails
against the new nonce of the side being fooled. After ``Welcome`` both sides derive one MAC
key per direction from the secret and both nonces (see :mod:`.framing`).

States: ``start`` -> (connector) ``sent_hello`` -> ``sent_proof`` -> ``done``;
(acceptor) ``start`` -> ``sent_challenge`` -> ``done``. Any error -> ``failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Literal

from pydantic import ValidationError

from dispy_core.protocol.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from dispy_core.protocol.messages import (
    HANDSHAKE_MESSAGE,
    PROTOCOL_VERSION,
    Challenge,
    HandshakeMessage,
    Hello,
    Proof,
    Refused,
    Role,
    Welcome,
)

State = Literal["start", "sent_hello", "sent_challenge", "sent_proof", "done", "failed"]

WRONG_SECRET = "authentication failed: the peer does not use the same secret"


def _mac(secret: bytes, label: bytes, *parts: str) -> bytes:
    mac = hmac.new(secret, b"dispy-v1 " + label, hashlib.sha256)
    for part in parts:
        mac.update(b"\x00" + part.encode())
    return mac.digest()


def _same(expected: bytes, received_hex: str) -> bool:
    # The schema admits only 64 lowercase hex digits, so this compares 32 bytes with 32.
    return hmac.compare_digest(expected, bytes.fromhex(received_hex))


def parse_handshake(header: bytes) -> HandshakeMessage:
    """Validate a handshake header, naming both versions when the peer speaks another one."""
    try:
        return HANDSHAKE_MESSAGE.validate_json(header)
    except ValidationError:
        pass
    try:
        raw = json.loads(header)
    except ValueError:
        raise RemoteProtocolError("malformed handshake message (not JSON)") from None
    theirs = raw.get("protocol") if isinstance(raw, dict) else None
    if isinstance(theirs, int) and theirs != PROTOCOL_VERSION:
        raise VersionMismatchError(PROTOCOL_VERSION, theirs)
    kind = raw.get("type") if isinstance(raw, dict) else None
    raise RemoteProtocolError(f"malformed handshake message (type {kind!r})")


class HandshakeFailed(AuthenticationError):
    """The handshake failed; ``reply`` (if any) should be sent to the peer before closing."""

    def __init__(self, message: str, reply: Refused | None) -> None:
        super().__init__(message)
        self.reply = reply


class Handshake:
    """The sans-I/O handshake of one connection.

    Args:
        connector: True on the side that opened the connection.
        secret: the shared secret (any string, '' included).
        role: what this side is (client, node, scheduler, ...).
        name: a human-readable name for logs on the other side.
        nonce: fixed nonce for tests; random otherwise.
    """

    def __init__(
        self,
        *,
        connector: bool,
        secret: str | bytes,
        role: Role,
        name: str,
        nonce: str | None = None,
    ) -> None:
        self.connector = connector
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.role: Role = role
        self.name = name
        self.nonce = nonce or os.urandom(32).hex()
        self.state: State = "start"
        self.peer_role: Role | None = None
        self.peer_name: str | None = None
        self.peer_nonce: str | None = None

    def initiate(self) -> list[HandshakeMessage]:
        """Messages to send first: a Hello for the connector, nothing for the acceptor."""
        if self.state != "start":
            raise LocalProtocolError("handshake already started")
        if not self.connector:
            return []
        self.state = "sent_hello"
        return [Hello(protocol=PROTOCOL_VERSION, role=self.role, name=self.name, nonce=self.nonce)]

    def receive(self, msg: HandshakeMessage) -> list[HandshakeMessage]:
        """Take the peer's next message; return what to send.

        Raises:
            HandshakeFailed: wrong secret, version mismatch, refusal or out-of-order message.
        """
        try:
            return self._receive(msg)
        except HandshakeFailed:
            self.state = "failed"
            raise

    @property
    def done(self) -> bool:
        return self.state == "done"

    def session_keys(self) -> tuple[bytes, bytes]:
        """(key for frames this side sends, key for frames it receives)."""
        if not self.done or self.peer_nonce is None:
            raise LocalProtocolError("handshake not complete")
        nonce_c, nonce_a = (
            (self.nonce, self.peer_nonce) if self.connector else (self.peer_nonce, self.nonce)
        )
        c2a = _mac(self._secret, b"key connector-to-acceptor", nonce_c, nonce_a)
        a2c = _mac(self._secret, b"key acceptor-to-connector", nonce_c, nonce_a)
        return (c2a, a2c) if self.connector else (a2c, c2a)

    def _fail(self, reason: str, *, reply: bool = True) -> HandshakeFailed:
        return HandshakeFailed(reason, Refused(reason=reason) if reply else None)

    def _check_version(self, protocol: int) -> None:
        if protocol != PROTOCOL_VERSION:
            err = VersionMismatchError(PROTOCOL_VERSION, protocol)
            raise self._fail(str(err))

    def _receive(self, msg: HandshakeMessage) -> list[HandshakeMessage]:
        if isinstance(msg, Refused):
            raise self._fail(f"the peer refused the handshake: {msg.reason}", reply=False)
        if self.connector:
            if self.state == "sent_hello" and isinstance(msg, Challenge):
                self._check_version(msg.protocol)
                expected = _mac(self._secret, b"acceptor", self.nonce, msg.nonce)
                if not _same(expected, msg.proof):
                    raise self._fail(WRONG_SECRET)
                self.peer_role, self.peer_name, self.peer_nonce = msg.role, msg.name, msg.nonce
                self.state = "sent_proof"
                proof = _mac(self._secret, b"connector", msg.nonce, self.nonce).hex()
                return [Proof(proof=proof)]
            if self.state == "sent_proof" and isinstance(msg, Welcome):
                self.state = "done"
                return []
        else:
            if self.state == "start" and isinstance(msg, Hello):
                self._check_version(msg.protocol)
                self.peer_role, self.peer_name, self.peer_nonce = msg.role, msg.name, msg.nonce
                self.state = "sent_challenge"
                proof = _mac(self._secret, b"acceptor", msg.nonce, self.nonce).hex()
                return [
                    Challenge(
                        protocol=PROTOCOL_VERSION,
                        role=self.role,
                        name=self.name,
                        nonce=self.nonce,
                        proof=proof,
                    )
                ]
            if self.state == "sent_challenge" and isinstance(msg, Proof):
                assert self.peer_nonce is not None
                expected = _mac(self._secret, b"connector", self.nonce, self.peer_nonce)
                if not _same(expected, msg.proof):
                    raise self._fail(WRONG_SECRET)
                self.state = "done"
                return [Welcome()]
        raise self._fail(f"unexpected {msg.type!r} message in handshake state {self.state}")


__all__ = [
    "WRONG_SECRET",
    "AuthenticationError",
    "Handshake",
    "HandshakeFailed",
    "parse_handshake",
]
