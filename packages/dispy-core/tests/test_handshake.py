"""The SPAKE2 handshake (dispy_core.protocol.handshake), without I/O."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispy_core.protocol.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from dispy_core.protocol.handshake import (
    REFLECTED,
    WRONG_SECRET,
    Handshake,
    HandshakeFailed,
    LoopGuard,
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


def hello_from(shake: Handshake) -> Hello:
    (hello,) = shake.initiate()
    assert isinstance(hello, Hello)
    return hello


def challenge_for(hello: Hello, secret: str = "s3cret", **kw) -> Challenge:
    (challenge,) = acceptor(secret, **kw).receive(hello)
    assert isinstance(challenge, Challenge)
    return challenge


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def expected_transcript(hello: Hello, challenge: Challenge) -> bytes:
    """The transcript as PROTOCOL.md section 3.2 describes it, built independently."""
    out = b"dispy-v2 handshake"
    for m in (hello, challenge):
        for value in (
            str(m.protocol).encode(),
            m.role.encode(),
            m.name.encode(),
            bytes.fromhex(m.nonce),
            bytes.fromhex(m.pake),
        ):
            out += struct.pack("!I", len(value)) + value
    return out


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


def test_proofs_and_session_keys_follow_the_documented_construction():
    pair = HandshakePair("s3cret", nonce_a=NONCE_C, nonce_b=NONCE_A)
    conn, acc = pair.run()
    hello, challenge, proof, _welcome = pair.messages()
    assert isinstance(hello, Hello)
    assert isinstance(challenge, Challenge)
    assert isinstance(proof, Proof)
    key = conn._key  # the SPAKE2 key, which no observer can compute (see below)
    assert key == acc._key
    assert len(key) == 32
    transcript = expected_transcript(hello, challenge)
    confirm_a = _hmac(key, b"dispy-v2 confirm acceptor")
    confirm_c = _hmac(key, b"dispy-v2 confirm connector")
    assert challenge.proof == _hmac(confirm_a, transcript).hex()
    assert proof.proof == _hmac(confirm_c, transcript).hex()
    digest = hashlib.sha256(transcript).digest()
    c2a = _hmac(key, b"dispy-v2 key connector-to-acceptor" + digest)
    a2c = _hmac(key, b"dispy-v2 key acceptor-to-connector" + digest)
    assert conn.session_keys() == (c2a, a2c)
    assert acc.session_keys() == (a2c, c2a)


def test_spake2_messages_carry_their_side():
    pair = HandshakePair("s3cret")
    pair.run()
    hello, challenge, _proof, _welcome = pair.messages()
    assert isinstance(hello, Hello)
    assert isinstance(challenge, Challenge)
    assert hello.pake.startswith("41")  # 'A', SPAKE2_A
    assert challenge.pake.startswith("42")  # 'B', SPAKE2_B
    assert len(bytes.fromhex(hello.pake)) == 33


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


def test_hello_carries_version_role_name_nonce_and_key_exchange():
    hello = hello_from(connector(nonce=NONCE_C))
    assert (hello.protocol, hello.role, hello.name, hello.nonce) == (
        PROTOCOL_VERSION,
        "node",
        "node-1",
        NONCE_C,
    )
    assert len(hello.pake) == 66


def test_random_nonces_are_32_bytes_of_hex():
    shake = connector()
    assert len(bytes.fromhex(shake.nonce)) == 32
    assert shake.nonce != connector().nonce


def test_a_fixed_nonce_must_be_32_bytes():
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        connector(nonce="ab")


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


@pytest.mark.parametrize(("a", "b"), [("", "x"), ("x", ""), ("sécret", "secret")])
def test_empty_and_near_secrets_are_different_secrets(a, b):
    with pytest.raises(HandshakeFailed, match="secret"):
        HandshakePair(a, b).run()


def test_acceptor_refuses_a_wrong_proof():
    acc = acceptor()
    acc.receive(hello_from(connector()))
    with pytest.raises(HandshakeFailed, match="secret") as info:
        acc.receive(Proof(proof="0" * 64))
    assert info.value.reply == Refused(reason=WRONG_SECRET)
    assert acc.state == "failed"
    with pytest.raises(LocalProtocolError):
        acc.session_keys()


def test_acceptor_proof_reflected_back_is_refused():
    # The two confirmations use different keys, so the acceptor's own is no answer.
    acc = acceptor()
    (challenge,) = acc.receive(hello_from(connector()))
    assert isinstance(challenge, Challenge)
    with pytest.raises(HandshakeFailed, match="secret"):
        acc.receive(Proof(proof=challenge.proof))


def test_tampered_challenge_is_refused():
    conn = connector()
    challenge = challenge_for(hello_from(conn))
    for change in ({"proof": "f" * 64}, {"name": "someone else"}, {"nonce": "b" * 64}):
        fresh = connector()
        forged = challenge_for(hello_from(fresh)).model_copy(update=change)
        with pytest.raises(HandshakeFailed, match="secret") as info:
            fresh.receive(forged)
        assert isinstance(info.value.reply, Refused)
    assert challenge.proof != "f" * 64


def test_tampered_hello_fails_the_handshake():
    # A man in the middle renames the connector: the transcripts differ, so do the proofs.
    conn = connector()
    hello = hello_from(conn).model_copy(update={"name": "mallory"})
    challenge = challenge_for(hello)
    with pytest.raises(HandshakeFailed, match="secret"):
        conn.receive(challenge)


def test_handshake_failed_is_an_authentication_error():
    with pytest.raises(AuthenticationError):
        HandshakePair("a", "b").run()


# --- offline guessing ------------------------------------------------------------------------


def test_recorded_transcript_gives_no_offline_check_of_a_guess():
    """Everything on the wire plus the right secret still does not reproduce a proof.

    A proof is keyed by the SPAKE2 key, which needs one side's random scalar as well as the
    secret. An observer who plays either side again with a guess (even the right one) and
    the recorded message of the other side gets another key: the recorded proof matches no
    guess, so it cannot tell the right guess from a wrong one.
    """
    secret = "correct horse"
    pair = HandshakePair(secret)
    pair.run()
    hello, challenge, proof, _welcome = pair.messages()
    assert isinstance(hello, Hello)
    assert isinstance(challenge, Challenge)
    assert isinstance(proof, Proof)
    for guess in ["wrong horse", "", secret]:
        # The v1 handshake's check: an HMAC of the guess over the nonces.
        old = _hmac(guess.encode(), b"dispy-v1 acceptor\x00" + hello.nonce.encode())
        assert old.hex() != challenge.proof
        # Play the acceptor again on the recorded hello, with the same nonce and name.
        replayed = Handshake(
            connector=False, secret=guess, role="client", name="acceptor", nonce=challenge.nonce
        )
        (again,) = replayed.receive(hello)
        assert isinstance(again, Challenge)
        assert again.pake != challenge.pake
        assert again.proof != challenge.proof
        # Play the connector again against the recorded challenge: its check fails alike.
        conn = Handshake(
            connector=True, secret=guess, role="node", name="connector", nonce=hello.nonce
        )
        conn.initiate()
        with pytest.raises(HandshakeFailed, match="secret"):
            conn.receive(challenge)


def test_same_secret_and_nonces_give_different_proofs():
    # Nothing public and nothing derived from the secret alone determines a proof.
    first = HandshakePair("s3cret", nonce_a=NONCE_C, nonce_b=NONCE_A)
    second = HandshakePair("s3cret", nonce_a=NONCE_C, nonce_b=NONCE_A)
    first.run()
    second.run()
    assert first.messages()[1] != second.messages()[1]
    assert first.messages()[2] != second.messages()[2]


# --- replay ----------------------------------------------------------------------------------


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


# --- reflection ------------------------------------------------------------------------------


def test_connector_fed_its_own_hello_refuses_it_as_reflected():
    conn = connector()
    hello = hello_from(conn)
    with pytest.raises(HandshakeFailed, match="own nonce") as info:
        conn.receive(parse_handshake(encode(hello)))
    assert str(info.value) == REFLECTED
    assert info.value.reply == Refused(reason=REFLECTED)


def test_acceptor_fed_its_own_challenge_refuses_it_as_reflected():
    acc = acceptor()
    (challenge,) = acc.receive(hello_from(connector()))
    with pytest.raises(HandshakeFailed) as info:
        acc.receive(challenge)
    assert str(info.value) == REFLECTED


def test_challenge_carrying_the_connectors_own_nonce_is_refused():
    conn = connector()
    hello = hello_from(conn)
    # an acceptor echoing our nonce (a real acceptor refuses that itself: its own nonce)
    challenge = challenge_for(hello).model_copy(update={"nonce": hello.nonce})
    with pytest.raises(HandshakeFailed, match="own nonce"):
        conn.receive(challenge)


def test_challenge_carrying_the_connectors_own_key_exchange_is_refused():
    conn = connector()
    hello = hello_from(conn)
    echoed = challenge_for(hello).model_copy(update={"pake": hello.pake})
    with pytest.raises(HandshakeFailed, match="own nonce or key-exchange message"):
        conn.receive(echoed)


def test_handshakes_sharing_a_guard_do_not_complete_with_each_other():
    # A node connecting back to its own port: both ends hold the secret, yet must not agree.
    guard = LoopGuard()
    conn = connector(guard=guard)
    acc = Handshake(connector=False, secret="s3cret", role="node", name="node-1", guard=guard)
    with pytest.raises(HandshakeFailed, match="connection to itself") as info:
        acc.receive(hello_from(conn))
    assert info.value.reply == Refused(reason=REFLECTED)
    with pytest.raises(HandshakeFailed, match="the peer refused the handshake: handshake refused"):
        conn.receive(info.value.reply)


def test_relayed_challenge_of_a_guarded_acceptor_is_refused_by_its_connector():
    # The other direction of a relay: the node's acceptor answered someone else's hello and
    # the attacker passes that challenge to the node's connector.
    guard = LoopGuard()
    conn = connector(guard=guard)
    conn.initiate()
    acc = Handshake(connector=False, secret="s3cret", role="node", name="node-1", guard=guard)
    (challenge,) = acc.receive(hello_from(connector()))
    with pytest.raises(HandshakeFailed, match="connection to itself"):
        conn.receive(challenge)


def test_a_guard_forgets_handshakes_that_ended():
    guard = LoopGuard()
    conn = connector(guard=guard)
    acc = acceptor(guard=LoopGuard())
    (challenge,) = acc.receive(hello_from(conn))
    assert len(guard) == 2  # the connector's nonce and SPAKE2 message
    conn.receive(challenge)
    assert len(guard) == 2
    conn.receive(Welcome())
    assert len(guard) == 0
    failed = connector(guard=guard)
    failed.initiate()
    with pytest.raises(HandshakeFailed):
        failed.receive(Refused(reason="no"))
    assert len(guard) == 0
    dropped = connector(guard=guard)  # abandoned mid-way (a timeout, a closed socket)
    dropped.initiate()
    del dropped
    gc.collect()
    assert len(guard) == 0


def test_without_a_shared_guard_two_ends_of_one_process_still_agree():
    # Separate services in one process (tests, memory pairs) each have their own guard.
    conn, acc = HandshakePair("s3cret").run()
    assert conn.done
    assert acc.done


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
    raw = json.loads(encode(hello_from(connector())))
    header = json.dumps({**raw, "protocol": 999}).encode()
    with pytest.raises(HandshakeFailed) as info:
        acc.receive(parse_handshake(header))
    text = str(info.value)
    assert f"version {PROTOCOL_VERSION}" in text
    assert "version 999" in text
    assert isinstance(info.value.reply, Refused)
    assert "999" in info.value.reply.reason


def test_challenge_of_another_version_is_refused_naming_both_versions():
    conn = connector()
    challenge = challenge_for(hello_from(conn)).model_copy(update={"protocol": 999})
    with pytest.raises(HandshakeFailed, match="version 999"):
        conn.receive(challenge)


def test_hello_of_version_1_names_both_versions():
    # A peer of the previous release sends no key-exchange message at all.
    header = json.dumps(
        {"type": "hello", "protocol": 1, "role": "node", "name": "x", "nonce": NONCE_C}
    ).encode()
    with pytest.raises(VersionMismatchError) as info:
        parse_handshake(header)
    assert (info.value.ours, info.value.theirs) == (PROTOCOL_VERSION, 1)
    assert PROTOCOL_VERSION == 2


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
        (b'{"type": "node.info", "protocol": 2}', "type 'node.info'"),
    ],
)
def test_parse_handshake_refuses_garbage(header, match):
    with pytest.raises(RemoteProtocolError, match=match):
        parse_handshake(header)


HELLO = hello_from(connector(nonce=NONCE_C))
CHALLENGE = challenge_for(hello_from(connector()), nonce=NONCE_A)


def test_parse_handshake_round_trips_every_handshake_message():
    messages = [HELLO, CHALLENGE, Proof(proof="0" * 64), Welcome(), Refused(reason="no")]
    for message in messages:
        assert parse_handshake(encode(message)) == message


# --- order -----------------------------------------------------------------------------------


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
        acc.receive(hello_from(connector()))


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


# --- malformed fields: refused by the schema or the handshake, never a TypeError ------------

MALFORMED_VALUES = {
    "non-ASCII": "é" * 64,
    "non-hex": "zz" * 32,
    "upper-case hex": "AB" * 32,
    "too short": "ab" * 16,
    "too long": "ab" * 33,
    "empty": "",
    "a number": 7,
}


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
@pytest.mark.parametrize("field", ["nonce", "pake", "proof"])
def test_malformed_challenge_field_is_a_remote_protocol_error(field, value):
    conn = connector()
    raw = json.loads(encode(challenge_for(hello_from(conn))))
    raw[field] = value
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        conn.receive(parse_handshake(json.dumps(raw).encode()))


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
@pytest.mark.parametrize("field", ["nonce", "pake"])
def test_malformed_hello_field_is_a_remote_protocol_error(field, value):
    raw = json.loads(encode(HELLO))
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        parse_handshake(json.dumps({**raw, field: value}).encode())


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
def test_malformed_proof_is_a_remote_protocol_error(value):
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        parse_handshake(json.dumps({"type": "proof", "proof": value}).encode())


@pytest.mark.parametrize(
    "element",
    ["00" * 32, "ff" * 32, "01" + "00" * 31, "ec" + "ff" * 30 + "7f"],
    ids=["zero", "ones", "identity", "not on the curve"],
)
def test_key_exchange_message_outside_the_group_fails_the_handshake(element):
    hello = json.loads(encode(HELLO))
    hello["pake"] = "41" + element
    acc = acceptor()
    with pytest.raises(HandshakeFailed, match="malformed handshake message") as info:
        acc.receive(parse_handshake(json.dumps(hello).encode()))
    assert isinstance(info.value.reply, Refused)
    conn = connector()
    challenge = challenge_for(hello_from(conn)).model_copy(update={"pake": "42" + element})
    with pytest.raises(HandshakeFailed, match="malformed handshake message"):
        conn.receive(challenge)


def test_key_exchange_message_of_the_wrong_side_fails_the_handshake():
    # An acceptor's message put in a hello (not ours, so no reflection): malformed.
    hello = HELLO.model_copy(update={"pake": CHALLENGE.pake})
    with pytest.raises(HandshakeFailed, match="wrong side"):
        acceptor().receive(hello)


_HEXISH = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=70),
    st.sampled_from(["41", "42"]).flatmap(
        lambda side: st.binary(min_size=32, max_size=32).map(lambda b: side + b.hex())
    ),
    st.text(max_size=70),
    st.integers(),
    st.none(),
)


_VALID = {
    "hello": json.loads(encode(HELLO)),
    "challenge": json.loads(encode(CHALLENGE)),
    "proof": {"type": "proof", "proof": "0" * 64},
    "welcome": {"type": "welcome"},
    "refused": {"type": "refused", "reason": "no", "protocol": PROTOCOL_VERSION},
}


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(sorted(_VALID)),
    fields=st.dictionaries(
        st.sampled_from(["protocol", "role", "name", "nonce", "pake", "proof", "reason"]),
        _HEXISH,
        max_size=3,
    ),
)
def test_arbitrary_handshake_messages_give_only_protocol_errors(kind, fields):
    """A valid message of each kind with up to three fields replaced by anything."""
    header = json.dumps({**_VALID[kind], **fields}).encode()
    conn = connector()
    conn.initiate()
    for shake in (conn, acceptor()):
        try:
            shake.receive(parse_handshake(header))
        except RemoteProtocolError:
            continue


def test_a_refusal_for_a_huge_type_fits_a_refused_reason():
    # Found by Hypothesis (test_fuzz): a 2,000-character ``type`` made the error text longer
    # than a ``refused`` reason may be, so building the refusal itself failed.
    header = json.dumps({"type": "x" * 2000, "protocol": PROTOCOL_VERSION}).encode()
    with pytest.raises(RemoteProtocolError) as caught:
        parse_handshake(header)
    Refused(reason=str(caught.value))  # must validate
    assert len(str(caught.value)) < 1024
