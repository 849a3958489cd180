"""Fuzzing the message schemas and the frame decoder: nothing but the documented errors.

Whatever a peer sends, ``decode`` (and ``parse_handshake``, ``decode_ping``, ``decode_relay``)
either returns a
message that can be sent back unchanged, or raises :class:`RemoteProtocolError`; the schemas'
own ``validate_json`` raises only pydantic's ``ValidationError``. The frame decoder, before
and after authentication, raises only :class:`RemoteProtocolError`, and with a MAC key a
frame not signed with it never gets through.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from dispy_core.protocol.discovery import decode_ping, decode_relay
from dispy_core.protocol.errors import RemoteProtocolError, VersionMismatchError
from dispy_core.protocol.framing import (
    _PREFIX,
    HANDSHAKE_MAX_HEADER,
    MAC_SIZE,
    MAGIC,
    PREFIX_SIZE,
    FrameDecoder,
    FrameEncoder,
    MessageAuthenticator,
)
from dispy_core.protocol.handshake import parse_handshake
from dispy_core.protocol.messages import (
    HANDSHAKE_MESSAGE,
    MESSAGE,
    Refused,
    decode,
    encode,
)


def _samples() -> dict[str, dict[str, Any]]:
    # One valid header per message type, from test_messages (tests are not a package here).
    path = Path(__file__).with_name("test_messages.py")
    spec = importlib.util.spec_from_file_location("_dispy_core_message_samples", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samples: dict[str, dict[str, Any]] = module.SAMPLES
    return samples


SAMPLES = _samples()

# Values a hostile peer would try first: the edges of every bound, and what breaks C code.
ODD = [
    -1, 0, 1, 2**31, 2**32, 2**63, 2**64 - 1, 2**64, -(2**64), 10**40,
    0.0, -0.0, 1e-300, 1e11, 1e300, -1e300, float("nan"), float("inf"), float("-inf"),
    "", "\x00", "a\x00b", "..", "../../etc/passwd", "/", "\\", "x" * 5000, "é✓", "\ud800",
    True, False, None, [], [[]], [-1, 2**64], {}, {"type": "pulse"},
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(ODD)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=25,
)
kinds = st.sampled_from(sorted(SAMPLES))


@st.composite
def mutated_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A valid header of some type with fields replaced, removed or added."""
    header = dict(SAMPLES[draw(kinds)])
    for field in draw(st.lists(st.sampled_from(sorted(header)), max_size=3)):
        if draw(st.booleans()):
            header[field] = draw(json_values)
        else:
            header.pop(field, None)
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=8))] = draw(json_values)
    return header


@st.composite
def odd_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A header of some type with every field drawn from the odd values (some stay valid)."""
    kind = draw(kinds)
    return {
        name: value if name == "type" else draw(st.sampled_from(ODD) | st.just(value))
        for name, value in SAMPLES[kind].items()
    }


headers = (
    mutated_headers()
    | odd_headers()
    | st.dictionaries(st.text(max_size=10), json_values).map(lambda d: {**d, "type": d.get("type")})
    | json_values
)


def as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", errors="surrogatepass")


def check_decodes_or_refuses(data: bytes) -> None:
    try:
        message = decode(data)
    except RemoteProtocolError as exc:
        error = str(exc)
        assert error.startswith("malformed message header"), error
        Refused(reason=error)  # the error can always go back to the peer
        return
    # Accepted: it must go back out unchanged (a node echoes ids, names and paths).
    assert decode(encode(message)) == message


@given(headers)
def test_any_header_decodes_or_is_refused(header: Any) -> None:
    check_decodes_or_refuses(as_bytes(header))


@given(headers)
def test_schemas_raise_only_validation_errors(header: Any) -> None:
    data = as_bytes(header)
    for adapter in (MESSAGE, HANDSHAKE_MESSAGE):
        with contextlib.suppress(ValidationError):
            adapter.validate_json(data)


@given(headers | st.binary(max_size=300).map(lambda b: b))
def test_any_handshake_header_decodes_or_is_refused(header: Any) -> None:
    data = header if isinstance(header, bytes) else as_bytes(header)
    try:
        parse_handshake(data)
    except RemoteProtocolError as exc:
        error = str(exc)
        if not isinstance(exc, VersionMismatchError):  # that one names both versions
            assert error.startswith("malformed handshake message"), error
        Refused(reason=error)  # the handshake sends it back in a refused message


@given(st.binary(max_size=600))
def test_any_bytes_as_a_header_are_refused_cleanly(data: bytes) -> None:
    check_decodes_or_refuses(data)


@given(headers | st.binary(max_size=3000))
def test_any_datagram_is_a_ping_or_refused(datagram: Any) -> None:
    data = datagram if isinstance(datagram, bytes) else as_bytes(datagram)
    with contextlib.suppress(RemoteProtocolError):
        decode_ping(data)
    with contextlib.suppress(RemoteProtocolError):
        decode_relay(data)


# --- frames ------------------------------------------------------------------------------------

KEY = bytes(range(32))


def decoder(*, keyed: bool, handshake: bool) -> FrameDecoder:
    if handshake:  # as a connection starts: tiny header-only frames
        dec = FrameDecoder(max_message=0, max_header=HANDSHAKE_MAX_HEADER)
    else:  # a small limit keeps the fuzz from allocating what a real limit allows
        dec = FrameDecoder(max_message=1 << 20)
    if keyed:
        dec.authenticator = MessageAuthenticator(KEY)
    return dec


def feed_all(dec: FrameDecoder, chunks: list[bytes]) -> list[Any]:
    """Feed ``chunks`` the way a socket does (into the decoder's own buffer), taking frames."""
    frames = []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            with dec.get_buffer() as target:
                take = min(len(target), len(view))
                target[:take] = view[:take]
            dec.buffer_updated(take)
            view = view[take:]
            while (frame := dec.next_frame()) is not None:
                frames.append(frame)
    return frames


@st.composite
def frame_like(draw: st.DrawFn) -> bytes:
    """Bytes that often pass the prefix checks: our magic, plausible lengths, random rest."""
    body = draw(st.binary(max_size=400))
    hlen = draw(st.integers(0, len(body)) | st.integers(0, 2**32 - 1))
    plen = draw(st.just(len(body) - min(hlen, len(body))) | st.integers(0, 2**32 - 1))
    magic = draw(st.just(MAGIC) | st.integers(0, 255))
    return _PREFIX.pack(magic, draw(st.integers(0, 255)), hlen, plen) + body


streams = st.lists(st.binary(max_size=300) | frame_like(), min_size=1, max_size=6)


@given(streams, st.booleans(), st.booleans())
def test_decoder_raises_only_remote_protocol_errors(
    chunks: list[bytes], keyed: bool, handshake: bool
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        feed_all(decoder(keyed=keyed, handshake=handshake), chunks)


@given(st.lists(frame_like(), min_size=1, max_size=4))
def test_frames_not_signed_with_the_key_never_get_through(frames: list[bytes]) -> None:
    data = b"".join(frame + os.urandom(MAC_SIZE) for frame in frames)
    try:
        got = feed_all(decoder(keyed=True, handshake=False), [data])
    except RemoteProtocolError:
        return
    assert got == []  # incomplete: waiting for more bytes, nothing accepted


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=200), st.binary(max_size=300)), max_size=5),
    st.integers(0, 10_000),
    st.integers(0, 7),
)
def test_signed_frames_pass_and_any_flipped_bit_fails(
    messages: list[tuple[bytes, bytes]], where: int, bit: int
) -> None:
    encoder = FrameEncoder()
    encoder.authenticator = MessageAuthenticator(KEY)
    wire = bytearray()
    for header, payload in messages:
        for part in encoder.encode(header, payload):
            wire += part
    got = feed_all(decoder(keyed=True, handshake=False), [bytes(wire)])
    assert [(f.header, bytes(f.payload)) for f in got] == messages
    assume(wire)
    wire[where % len(wire)] ^= 1 << bit
    try:
        tampered = feed_all(decoder(keyed=True, handshake=False), [bytes(wire)])
    except RemoteProtocolError:
        return
    # A flip in a length field can make the decoder wait for bytes that never come; it
    # must never hand over a frame that differs from what was signed.
    assert len(tampered) < len(messages)
    assert [(f.header, bytes(f.payload)) for f in tampered] == messages[: len(tampered)]


def test_prefix_size_is_what_the_fuzz_assumes() -> None:
    assert PREFIX_SIZE == _PREFIX.size == 10
