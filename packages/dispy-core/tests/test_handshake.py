"""The challenge-response handshake (dispy_core.protocol.handshake), without I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from dispy_core.protocol.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from dispy_core.protocol.handshake import (
    WRONG_SECRET,
    Handshake,
    HandshakeFailed,
    parse_handshake,
)
from dispy_core.protocol.messages import (
    PROTOCOL_VERSION,
    Challenge,
    Hello,
    Proof,
    Refused,
    Welcome,
    encode,
)
from dispy_core.testing import HandshakePair

NONCE_C = "c" * 64
NONCE_A = "a" * 64


def connector(secret="s3cret", **kw) -> Handshake:
    return Handshake(connector=True, secret=secret, role="node", name="node-1", **kw)


def acceptor(secret="s3cret", **kw) -> Handshake:
    return Handshake(connector=False, secret=secret, role="client", name="client-1", **kw)


def expected_mac(secret: bytes, label: bytes, *parts: str) -> bytes:
    """The MAC as PROTOCOL.md describes it, computed independently of handshake.py."""
    data = b"".join(b"\x00" + p.encode() for p in parts)
    return hmac.new(secret, b"dispy-v1 " + label + data, hashlib.sha256).digest()


# --- success -------------------------------------------------------------------------------


def test_right_secret_completes_on_both_sides():
    pair = HandshakePair("s3cret")
    conn, acc = pair.run()
    assert conn.done
    assert acc.done
    assert [type(m).__name__ for m in pair.messages()] == ["Hello", "Challenge", "Proof", "Welcome"]
    assert [s.sender for s in pair.transcript] == ["connector", "acceptor", "connector", "acceptor"]


def test_session_keys_match_across_the_connection():
    conn, acc = HandshakePair("s3cret").run()
    conn_send, conn_recv = conn.session_keys()
    acc_send, acc_recv = acc.session_keys()
    assert conn_send == acc_recv
    assert acc_send == conn_recv
    assert conn_send != conn_recv  # one key per direction
    assert len(conn_send) == 32


def test_session_keys_are_fresh_for_every_connection():
    first, _ = HandshakePair("s3cret").run()
    second, _ = HandshakePair("s3cret").run()
    assert first.session_keys() != second.session_keys()


def test_session_keys_follow_the_documented_derivation():
    conn, acc = HandshakePair("s3cret", nonce_a=NONCE_C, nonce_b=NONCE_A).run()
    c2a = expected_mac(b"s3cret", b"key connector-to-acceptor", NONCE_C, NONCE_A)
    a2c = expected_mac(b"s3cret", b"key acceptor-to-connector", NONCE_C, NONCE_A)
    assert conn.session_keys() == (c2a, a2c)
    assert acc.session_keys() == (a2c, c2a)


def test_proofs_follow_the_documented_construction():
    pair = HandshakePair("s3cret", nonce_a=NONCE_C, nonce_b=NONCE_A)
    pair.run()
    _hello, challenge, proof, _welcome = pair.messages()
    assert isinstance(challenge, Challenge)
    assert isinstance(proof, Proof)
    assert challenge.proof == expected_mac(b"s3cret", b"acceptor", NONCE_C, NONCE_A).hex()
    assert proof.proof == expected_mac(b"s3cret", b"connector", NONCE_A, NONCE_C).hex()


def test_empty_secret_completes():
    conn, acc = HandshakePair("").run()
    assert conn.session_keys()[0] == acc.session_keys()[1]


def test_str_and_bytes_secret_are_the_same_secret():
    conn, acc = HandshakePair("sécret", "sécret".encode()).run()
    assert conn.done
    assert acc.done


def test_peer_role_and_name_are_recorded():
    conn, acc = HandshakePair("s", role_a="node", role_b="scheduler").run()
    assert (conn.peer_role, conn.peer_name) == ("scheduler", "acceptor")
    assert (acc.peer_role, acc.peer_name) == ("node", "connector")


def test_acceptor_sends_nothing_first():
    assert acceptor().initiate() == []


def test_hello_carries_version_role_name_and_nonce():
    (hello,) = connector(nonce=NONCE_C).initiate()
    assert hello == Hello(protocol=PROTOCOL_VERSION, role="node", name="node-1", nonce=NONCE_C)


def test_random_nonces_are_32_bytes_of_hex():
    shake = connector()
    assert len(bytes.fromhex(shake.nonce)) == 32
    assert shake.nonce != connector().nonce


# --- wrong secret --------------------------------------------------------------------------


def test_wrong_secret_fails_on_both_sides_naming_the_secret():
    pair = HandshakePair("right", "wrong")
    with pytest.raises(HandshakeFailed, match="secret"):
        pair.run()
    assert set(pair.errors) == {"connector", "acceptor"}
    assert "secret" in str(pair.errors["connector"])
    assert "secret" in str(pair.errors["acceptor"])
    assert pair.connector.state == pair.acceptor.state == "failed"


def test_wrong_secret_refusal_is_sent_to_the_peer():
    pair = HandshakePair("right", "wrong")
    pair.run(check=False)
    last = pair.messages()[-1]
    assert pair.transcript[-1].sender == "connector"
    assert isinstance(last, Refused)
    assert last.reason == WRONG_SECRET
    assert not any(isinstance(m, Welcome) for m in pair.messages())


def test_acceptor_refuses_a_wrong_proof():
    acc = acceptor()
    acc.receive(Hello(protocol=PROTOCOL_VERSION, role="node", name="x", nonce=NONCE_C))
    with pytest.raises(HandshakeFailed, match="secret") as info:
        acc.receive(Proof(proof="0" * 64))
    assert info.value.reply == Refused(reason=WRONG_SECRET)
    assert acc.state == "failed"
    with pytest.raises(LocalProtocolError):
        acc.session_keys()


def test_acceptor_proof_reflected_back_is_refused():
    # The two proofs use different labels, so the acceptor's own proof is no answer.
    acc = acceptor()
    (challenge,) = acc.receive(
        Hello(protocol=PROTOCOL_VERSION, role="node", name="x", nonce=NONCE_C)
    )
    assert isinstance(challenge, Challenge)
    with pytest.raises(HandshakeFailed, match="secret"):
        acc.receive(Proof(proof=challenge.proof))


def test_tampered_challenge_proof_is_refused():
    conn = connector()
    conn.initiate()
    acc = acceptor()
    (challenge,) = acc.receive(
        Hello(protocol=PROTOCOL_VERSION, role="node", name="x", nonce=conn.nonce)
    )
    forged = challenge.model_copy(update={"proof": "f" * 64})
    with pytest.raises(HandshakeFailed, match="secret") as info:
        conn.receive(forged)
    assert isinstance(info.value.reply, Refused)


def test_handshake_failed_is_an_authentication_error():
    with pytest.raises(AuthenticationError):
        HandshakePair("a", "b").run()


# --- replay --------------------------------------------------------------------------------


def test_recorded_handshake_replayed_against_fresh_acceptor_fails():
    recorded = HandshakePair("s3cret")
    recorded.run()
    hello, _challenge, proof, _welcome = recorded.messages()
    fresh = acceptor("s3cret")  # an attacker replays the connector's messages
    (new_challenge,) = fresh.receive(hello)
    assert isinstance(new_challenge, Challenge)
    with pytest.raises(HandshakeFailed, match="secret"):
        fresh.receive(proof)
    assert not fresh.done


def test_recorded_challenge_replayed_against_fresh_connector_fails():
    recorded = HandshakePair("s3cret")
    recorded.run()
    _hello, challenge, _proof, _welcome = recorded.messages()
    fresh = connector("s3cret")  # an attacker poses as the acceptor
    fresh.initiate()
    with pytest.raises(HandshakeFailed, match="secret"):
        fresh.receive(challenge)


# --- nothing secret on the wire --------------------------------------------------------------


def _forms_of(secret: str) -> list[bytes]:
    raw = secret.encode()
    forms = [raw]
    for algo in ("sha1", "sha256", "sha512", "md5"):
        digest = hashlib.new(algo, raw).digest()
        forms += [digest, digest.hex().encode(), digest.hex().upper().encode()]
    return forms


@pytest.mark.parametrize("secret_b", [None, "a different secret of the acceptor"])
def test_secret_and_its_hashes_never_appear_in_handshake_bytes(secret_b):
    secret = "correct horse battery staple 42"
    pair = HandshakePair(secret, secret_b)
    pair.run(check=False)
    data = b"".join(sent.header for sent in pair.transcript)
    secrets = [secret] + ([secret_b] if secret_b else [])
    for form in (f for s in secrets for f in _forms_of(s)):
        assert form not in data


# --- versions --------------------------------------------------------------------------------


def test_hello_of_another_version_is_refused_naming_both_versions():
    acc = acceptor()
    header = json.dumps(
        {"type": "hello", "protocol": 999, "role": "node", "name": "x", "nonce": NONCE_C}
    ).encode()
    with pytest.raises(HandshakeFailed) as info:
        acc.receive(parse_handshake(header))
    text = str(info.value)
    assert f"version {PROTOCOL_VERSION}" in text
    assert "version 999" in text
    assert isinstance(info.value.reply, Refused)
    assert "999" in info.value.reply.reason


def test_challenge_of_another_version_is_refused_naming_both_versions():
    conn = connector()
    conn.initiate()
    challenge = Challenge(protocol=999, role="client", name="c", nonce=NONCE_A, proof="0" * 64)
    with pytest.raises(HandshakeFailed, match="version 999"):
        conn.receive(challenge)


def test_unparsable_hello_of_another_version_names_both_versions():
    # A future release may add fields: the version, not the schema, is what to report.
    header = json.dumps(
        {"type": "hello", "protocol": 999, "features": ["x"], "nonce": NONCE_C}
    ).encode()
    with pytest.raises(VersionMismatchError) as info:
        parse_handshake(header)
    assert (info.value.ours, info.value.theirs) == (PROTOCOL_VERSION, 999)
    assert f"version {PROTOCOL_VERSION}" in str(info.value)
    assert "version 999" in str(info.value)


def test_version_mismatch_error_is_a_remote_protocol_error():
    assert issubclass(VersionMismatchError, RemoteProtocolError)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"not json", "not JSON"),
        (b'{"type": "bogus"}', "type 'bogus'"),
        (b"[1, 2]", "type None"),
        (b'{"type": "node.info", "protocol": 1}', "type 'node.info'"),
    ],
)
def test_parse_handshake_refuses_garbage(header, match):
    with pytest.raises(RemoteProtocolError, match=match):
        parse_handshake(header)


def test_parse_handshake_round_trips_every_handshake_message():
    messages = [
        Hello(protocol=1, role="node", name="n", nonce=NONCE_C),
        Challenge(protocol=1, role="client", name="c", nonce=NONCE_A, proof="0" * 64),
        Proof(proof="0" * 64),
        Welcome(),
        Refused(reason="no"),
    ]
    for message in messages:
        assert parse_handshake(encode(message)) == message


# --- order -----------------------------------------------------------------------------------

HELLO = Hello(protocol=PROTOCOL_VERSION, role="node", name="n", nonce=NONCE_C)
CHALLENGE = Challenge(
    protocol=PROTOCOL_VERSION, role="client", name="c", nonce=NONCE_A, proof="0" * 64
)


@pytest.mark.parametrize("message", [Proof(proof="0" * 64), Welcome(), CHALLENGE])
def test_acceptor_refuses_anything_but_hello_first(message):
    acc = acceptor()
    with pytest.raises(HandshakeFailed, match=f"unexpected '{message.type}' message"):
        acc.receive(message)
    assert acc.state == "failed"


@pytest.mark.parametrize("message", [HELLO, Proof(proof="0" * 64), Welcome()])
def test_connector_refuses_anything_but_challenge_after_hello(message):
    conn = connector()
    conn.initiate()
    with pytest.raises(HandshakeFailed, match="unexpected"):
        conn.receive(message)


def test_acceptor_refuses_a_second_hello():
    acc = acceptor()
    acc.receive(HELLO)
    with pytest.raises(HandshakeFailed, match="unexpected 'hello' message in handshake state"):
        acc.receive(HELLO)


def test_connector_refuses_a_message_before_sending_hello():
    with pytest.raises(HandshakeFailed, match="state start"):
        connector().receive(CHALLENGE)


def test_messages_after_completion_are_refused():
    conn, acc = HandshakePair("s").run()
    with pytest.raises(HandshakeFailed):
        conn.receive(Welcome())
    with pytest.raises(HandshakeFailed):
        acc.receive(HELLO)


def test_refusal_from_the_peer_fails_without_a_reply():
    conn = connector()
    conn.initiate()
    with pytest.raises(HandshakeFailed, match="peer refused the handshake: go away") as info:
        conn.receive(Refused(reason="go away"))
    assert info.value.reply is None


def test_initiate_twice_is_a_local_error():
    conn = connector()
    conn.initiate()
    with pytest.raises(LocalProtocolError):
        conn.initiate()


def test_session_keys_before_completion_are_a_local_error():
    conn = connector()
    conn.initiate()
    with pytest.raises(LocalProtocolError, match="not complete"):
        conn.session_keys()


# --- malformed fields: refused by the schema, never a TypeError --------------------------------

MALFORMED_VALUES = {
    "non-ASCII": "é" * 64,
    "non-hex": "zz" * 32,
    "upper-case hex": "AB" * 32,
    "too short": "ab" * 16,
    "too long": "ab" * 33,
    "empty": "",
}


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
@pytest.mark.parametrize("field", ["nonce", "proof"])
def test_malformed_challenge_field_is_a_remote_protocol_error(field, value):
    conn = connector()
    (hello,) = conn.initiate()
    acc = acceptor()
    (challenge,) = acc.receive(hello)
    raw = json.loads(encode(challenge))
    raw[field] = value
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        conn.receive(parse_handshake(json.dumps(raw).encode()))


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
def test_malformed_hello_nonce_and_proof_are_remote_protocol_errors(value):
    hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "role": "node", "name": "n"}
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        parse_handshake(json.dumps({**hello, "nonce": value}).encode())
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        parse_handshake(json.dumps({"type": "proof", "proof": value}).encode())
