"""Password-authenticated handshake (SPAKE2) keyed by the shared secret.

Theory of operation
-------------------
Two roles: the *connector* (opened the TCP connection) and the *acceptor*. Each makes a
fresh 32-byte nonce and runs one side of SPAKE2 (the ``spake2`` package: Ed25519 group,
``SPAKE2_A`` for the connector, ``SPAKE2_B`` for the acceptor, identities
``dispy-v2 connector`` / ``dispy-v2 acceptor``) with the secret's UTF-8 bytes as password.
Messages, in order::

    connector -> Hello(protocol, role, name, nonce_c, pake = X)
    acceptor  -> Challenge(protocol, role, name, nonce_a, pake = Y,
                           proof = HMAC(confirm key of the acceptor, transcript))
    connector -> Proof(proof = HMAC(confirm key of the connector, transcript))
    acceptor  -> Welcome

``X`` and ``Y`` give both sides one shared key ``K`` if, and only if, they used the same
secret. The *transcript* holds everything both sent (versions, roles, names, nonces, ``X``,
``Y``), so each proof confirms the key and the whole exchange at once; session keys come
from ``K`` and the transcript (see PROTOCOL.md sections 3 and 4 for the exact bytes).

What this buys over a plain challenge-response:

* A passive observer (or a peer that only listens) sees ``X``, ``Y`` and two MACs under
  a key that also depends on a random scalar it never sees: nothing against which to test
  guesses of the secret offline.
* An active attacker learns whether *one* guess was right per connection it makes or
  answers, and every wrong guess fails a handshake (and is logged by the side it fooled).
* A message sent back to the side that made it is refused with :data:`REFLECTED`: its
  nonce or SPAKE2 message is our own. Handshakes that share a :class:`LoopGuard` (all those
  of one node) also refuse each other's values, so a node's own connection looped back to
  its port, directly or relayed by an attacker, never completes.

Either side that finds a check failing sends ``Refused(reason)`` instead and closes. Values
of the wrong shape never get here (the schema admits only fixed-length lowercase hex), and
everything is compared as bytes, in constant time where it is secret.

States: ``start`` -> (connector) ``sent_hello`` -> ``sent_proof`` -> ``done``;
(acceptor) ``start`` -> ``sent_challenge`` -> ``done``. Any error -> ``failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import weakref
from typing import Any, Literal

import spake2
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
    _first_error,
    clip,
)

State = Literal["start", "sent_hello", "sent_challenge", "sent_proof", "done", "failed"]

WRONG_SECRET = "authentication failed: the peer does not use the same secret"
REFLECTED = (
    "handshake refused: the peer presented this side's own nonce or key-exchange message "
    "(a reflected handshake, or a connection to itself)"
)

ID_CONNECTOR = b"dispy-v2 connector"
ID_ACCEPTOR = b"dispy-v2 acceptor"
SIDE_CONNECTOR = b"A"[0]  # first byte of a SPAKE2_A message
SIDE_ACCEPTOR = b"B"[0]
_LABEL = b"dispy-v2 "
_FIELD = struct.Struct("!I")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _transcript(*sides: tuple[int, str, str, bytes, bytes]) -> bytes:
    """Protocol, role, name, nonce and SPAKE2 message of the connector, then the acceptor."""
    parts = [b"dispy-v2 handshake"]
    for protocol, role, name, nonce, pake in sides:
        for value in (str(protocol).encode(), role.encode(), name.encode(), nonce, pake):
            parts.append(_FIELD.pack(len(value)) + value)
    return b"".join(parts)


def parse_handshake(header: bytes) -> HandshakeMessage:
    """Validate a handshake header, naming both versions when the peer speaks another one."""
    try:
        return HANDSHAKE_MESSAGE.validate_json(header)
    except ValidationError as exc:
        error = exc
    try:
        raw = json.loads(header)
    except ValueError:
        raise RemoteProtocolError("malformed handshake message (not JSON)") from None
    theirs = raw.get("protocol") if isinstance(raw, dict) else None
    if isinstance(theirs, int) and theirs != PROTOCOL_VERSION:
        raise VersionMismatchError(PROTOCOL_VERSION, theirs)
    kind = raw.get("type") if isinstance(raw, dict) else None
    detail = _first_error(error)
    # The peer chose the type (any length): clipped, as the text may go back to it in a
    # ``refused`` reason, which is bounded.
    shown = clip(repr(kind), 64)
    raise RemoteProtocolError(f"malformed handshake message (type {shown}): {detail}")


class HandshakeFailed(AuthenticationError):
    """The handshake failed; ``reply`` (if any) should be sent to the peer before closing."""

    def __init__(self, message: str, reply: Refused | None) -> None:
        super().__init__(message)
        self.reply = reply


class LoopGuard:
    """The nonces and SPAKE2 messages sent by the handshakes of one service, while they run.

    A node both connects (back to clients that ping it) and accepts. When all its handshakes
    share one guard, each refuses a peer that presents a value one of them sent: the node's
    own connection looped back to its port, by a ping naming that port or by an attacker
    relaying between the node's two ends. A value is forgotten when its handshake ends (or
    is dropped unfinished), so the guard holds at most a few values per open handshake.
    """

    def __init__(self) -> None:
        self._sent: weakref.WeakValueDictionary[bytes, Handshake] = weakref.WeakValueDictionary()

    def __contains__(self, value: bytes) -> bool:
        return value in self._sent

    def __len__(self) -> int:
        return len(self._sent)

    def _add(self, value: bytes, shake: Handshake) -> None:
        self._sent[value] = shake

    def _forget(self, shake: Handshake) -> None:
        for value in [v for v, s in self._sent.items() if s is shake]:
            self._sent.pop(value, None)


class Handshake:
    """The sans-I/O handshake of one connection.

    Args:
        connector: True on the side that opened the connection.
        secret: the shared secret (any string, '' included).
        role: what this side is (client, node, scheduler, ...).
        name: a human-readable name for logs on the other side.
        nonce: fixed nonce (64 hex digits) for tests; random otherwise.
        guard: shared by every handshake of one service so that none of them completes
            with another (see :class:`LoopGuard`); a private one when None.
    """

    def __init__(
        self,
        *,
        connector: bool,
        secret: str | bytes,
        role: Role,
        name: str,
        nonce: str | None = None,
        guard: LoopGuard | None = None,
    ) -> None:
        self.connector = connector
        self.role: Role = role
        self.name = name
        self.nonce = nonce or os.urandom(32).hex()
        self._nonce = bytes.fromhex(self.nonce)
        if len(self._nonce) != 32:
            raise LocalProtocolError("a handshake nonce is 32 bytes (64 hex digits)")
        password = secret.encode() if isinstance(secret, str) else secret
        kind = spake2.SPAKE2_A if connector else spake2.SPAKE2_B
        self._spake: Any = kind(password, idA=ID_CONNECTOR, idB=ID_ACCEPTOR)
        self._pake = b""  # our SPAKE2 message, made when first needed
        self._key = b""  # the SPAKE2 shared key
        self._transcript = b""
        self._peer_proof = b""  # what the acceptor expects in the connector's Proof
        self._guard = guard if guard is not None else LoopGuard()
        self._guard._add(self._nonce, self)
        self.state: State = "start"
        self.peer_role: Role | None = None
        self.peer_name: str | None = None

    def initiate(self) -> list[HandshakeMessage]:
        """Messages to send first: a Hello for the connector, nothing for the acceptor."""
        if self.state != "start":
            raise LocalProtocolError("handshake already started")
        if not self.connector:
            return []
        self.state = "sent_hello"
        return [
            Hello(
                protocol=PROTOCOL_VERSION,
                role=self.role,
                name=self.name,
                nonce=self.nonce,
                pake=self._start().hex(),
            )
        ]

    def receive(self, msg: HandshakeMessage) -> list[HandshakeMessage]:
        """Take the peer's next message; return what to send.

        Raises:
            HandshakeFailed: wrong secret, version mismatch, reflection, refusal, a
                key-exchange message that is no group element, or an out-of-order message.
        """
        try:
            replies = self._receive(msg)
        except HandshakeFailed:
            self.state = "failed"
            self._guard._forget(self)
            raise
        if self.done:
            self._guard._forget(self)
        return replies

    @property
    def done(self) -> bool:
        return self.state == "done"

    def session_keys(self) -> tuple[bytes, bytes]:
        """(key for frames this side sends, key for frames it receives)."""
        if not self.done:
            raise LocalProtocolError("handshake not complete")
        digest = hashlib.sha256(self._transcript).digest()
        c2a = _hmac(self._key, _LABEL + b"key connector-to-acceptor" + digest)
        a2c = _hmac(self._key, _LABEL + b"key acceptor-to-connector" + digest)
        return (c2a, a2c) if self.connector else (a2c, c2a)

    # -- the steps ------------------------------------------------------------------------

    def _start(self) -> bytes:
        self._pake = bytes(self._spake.start())
        self._guard._add(self._pake, self)
        return self._pake

    def _fail(self, reason: str, *, reply: bool = True) -> HandshakeFailed:
        return HandshakeFailed(reason, Refused(reason=reason) if reply else None)

    def _check_version(self, protocol: int) -> None:
        if protocol != PROTOCOL_VERSION:
            err = VersionMismatchError(PROTOCOL_VERSION, protocol)
            raise self._fail(str(err))

    def _check_not_ours(self, nonce: bytes, pake: bytes) -> None:
        """Refuse a peer presenting a value this side (or a handshake of its guard) sent."""
        # Our own values are in the guard too while this handshake runs.
        if nonce in self._guard or pake in self._guard:
            raise self._fail(REFLECTED)

    def _agree(self, peer_pake: bytes) -> None:
        if peer_pake[0] != (SIDE_ACCEPTOR if self.connector else SIDE_CONNECTOR):
            raise self._fail("malformed handshake message: key-exchange message of the wrong side")
        try:
            self._key = bytes(self._spake.finish(peer_pake))
        except Exception:
            # spake2 raises ValueError, its own NotOnCurve or a SPAKEError for an element
            # outside the group: each is the peer's fault, and none may escape as a bug.
            raise self._fail(
                "malformed handshake message: the key-exchange message is no group element"
            ) from None

    def _on_hello(self, msg: Hello) -> list[HandshakeMessage]:
        self._check_version(msg.protocol)
        nonce_c, pake_c = bytes.fromhex(msg.nonce), bytes.fromhex(msg.pake)
        self._start()
        self._agree(pake_c)
        self._transcript = _transcript(
            (msg.protocol, msg.role, msg.name, nonce_c, pake_c),
            (PROTOCOL_VERSION, self.role, self.name, self._nonce, self._pake),
        )
        mine, self._peer_proof = self._confirmations()
        self.peer_role, self.peer_name = msg.role, msg.name
        self.state = "sent_challenge"
        return [
            Challenge(
                protocol=PROTOCOL_VERSION,
                role=self.role,
                name=self.name,
                nonce=self.nonce,
                pake=self._pake.hex(),
                proof=mine.hex(),
            )
        ]

    def _on_challenge(self, msg: Challenge) -> list[HandshakeMessage]:
        self._check_version(msg.protocol)
        nonce_a, pake_a = bytes.fromhex(msg.nonce), bytes.fromhex(msg.pake)
        self._agree(pake_a)
        self._transcript = _transcript(
            (PROTOCOL_VERSION, self.role, self.name, self._nonce, self._pake),
            (msg.protocol, msg.role, msg.name, nonce_a, pake_a),
        )
        expected, mine = self._confirmations()
        if not hmac.compare_digest(expected, bytes.fromhex(msg.proof)):
            raise self._fail(WRONG_SECRET)
        self.peer_role, self.peer_name = msg.role, msg.name
        self.state = "sent_proof"
        return [Proof(proof=mine.hex())]

    def _confirmations(self) -> tuple[bytes, bytes]:
        """(the acceptor's proof, the connector's proof) for the transcript so far."""
        acceptor = _hmac(_hmac(self._key, _LABEL + b"confirm acceptor"), self._transcript)
        connector = _hmac(_hmac(self._key, _LABEL + b"confirm connector"), self._transcript)
        return acceptor, connector

    def _receive(self, msg: HandshakeMessage) -> list[HandshakeMessage]:
        if isinstance(msg, Refused):
            raise self._fail(f"the peer refused the handshake: {msg.reason}", reply=False)
        if isinstance(msg, Hello | Challenge):
            self._check_not_ours(bytes.fromhex(msg.nonce), bytes.fromhex(msg.pake))
        if self.connector:
            if self.state == "sent_hello" and isinstance(msg, Challenge):
                return self._on_challenge(msg)
            if self.state == "sent_proof" and isinstance(msg, Welcome):
                self.state = "done"
                return []
        else:
            if self.state == "start" and isinstance(msg, Hello):
                return self._on_hello(msg)
            if self.state == "sent_challenge" and isinstance(msg, Proof):
                if not hmac.compare_digest(self._peer_proof, bytes.fromhex(msg.proof)):
                    raise self._fail(WRONG_SECRET)
                self.state = "done"
                return [Welcome()]
        raise self._fail(f"unexpected {msg.type!r} message in handshake state {self.state}")


__all__ = [
    "REFLECTED",
    "WRONG_SECRET",
    "AuthenticationError",
    "Handshake",
    "HandshakeFailed",
    "LoopGuard",
    "parse_handshake",
]
