"""Drive two sans-I/O :class:`~dispy_core.protocol.handshake.Handshake` objects together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.handshake import Handshake, HandshakeFailed, parse_handshake
from dispy_core.protocol.messages import HandshakeMessage, Role, encode

Side = Literal["connector", "acceptor"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One handshake message as it crossed the wire: who sent it and its header bytes."""

    sender: Side
    header: bytes


class HandshakePair:
    """A connector and an acceptor :class:`Handshake`, exchanging messages in memory.

    Every message goes through the real encoding (:func:`messages.encode`) and decoding
    (:func:`parse_handshake`) and is kept in :attr:`transcript`. When one side fails, its
    ``Refused`` reply (if any) is delivered to the other side, so both ends of a failed
    handshake can be inspected in :attr:`errors`.

    Args:
        secret_a: the connector's secret.
        secret_b: the acceptor's secret; the same as ``secret_a`` when None.
        role_a: the connector's role.
        role_b: the acceptor's role.
        nonce_a: a fixed nonce for the connector (random when None).
        nonce_b: a fixed nonce for the acceptor (random when None).

    Example:
        >>> connector, acceptor = HandshakePair("secret").run()
        >>> connector.session_keys()[0] == acceptor.session_keys()[1]
        True
    """

    def __init__(
        self,
        secret_a: str | bytes,
        secret_b: str | bytes | None = None,
        *,
        role_a: Role = "node",
        role_b: Role = "client",
        nonce_a: str | None = None,
        nonce_b: str | None = None,
    ) -> None:
        self.connector = Handshake(
            connector=True, secret=secret_a, role=role_a, name="connector", nonce=nonce_a
        )
        self.acceptor = Handshake(
            connector=False,
            secret=secret_a if secret_b is None else secret_b,
            role=role_b,
            name="acceptor",
            nonce=nonce_b,
        )
        self.transcript: list[Sent] = []
        self.errors: dict[Side, HandshakeFailed | RemoteProtocolError] = {}

    def _side(self, side: Side) -> Handshake:
        return self.connector if side == "connector" else self.acceptor

    def messages(self, sender: Side | None = None) -> list[HandshakeMessage]:
        """The decoded transcript (only ``sender``'s messages when given)."""
        return [
            parse_handshake(sent.header)
            for sent in self.transcript
            if sender is None or sent.sender == sender
        ]

    def run(self, *, check: bool = True) -> tuple[Handshake, Handshake]:
        """Exchange messages until both sides are done or one fails.

        Args:
            check: raise the first failure instead of only recording it in :attr:`errors`.

        Returns:
            ``(connector, acceptor)``.

        Raises:
            HandshakeFailed: (with ``check``) the first side that failed, e.g. wrong secret.
            RemoteProtocolError: (with ``check``) a message could not be decoded.
        """
        pending: list[tuple[Side, HandshakeMessage]] = [
            ("connector", m) for m in self.connector.initiate()
        ]
        self.acceptor.initiate()
        first_error: HandshakeFailed | RemoteProtocolError | None = None
        while pending:
            sender, message = pending.pop(0)
            header = encode(message)
            self.transcript.append(Sent(sender, header))
            receiver: Side = "acceptor" if sender == "connector" else "connector"
            shake = self._side(receiver)
            if shake.state in ("done", "failed"):
                continue
            try:
                replies = shake.receive(parse_handshake(header))
            except HandshakeFailed as exc:
                self.errors[receiver] = exc
                first_error = first_error or exc
                if exc.reply is not None:
                    pending.append((receiver, exc.reply))
                continue
            except RemoteProtocolError as exc:
                self.errors[receiver] = exc
                first_error = first_error or exc
                continue
            pending.extend((receiver, reply) for reply in replies)
        if check and first_error is not None:
            raise first_error
        return self.connector, self.acceptor
