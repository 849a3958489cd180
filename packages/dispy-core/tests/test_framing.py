"""Frames: layout, large payloads, size limits and per-frame MACs (dispy_core.protocol.framing)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core.protocol.errors import LocalProtocolError, RemoteProtocolError
from dispy_core.protocol.framing import (
    DIRECT_PAYLOAD,
    GMAC_PAYLOAD,
    MAC_SIZE,
    MAGIC,
    MAX_HEADER,
    PREFIX_SIZE,
    Frame,
    FrameDecoder,
    FrameEncoder,
    MessageAuthenticator,
)

KEY = b"k" * 32


def wire(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def keyed(max_message: int = 1 << 24):
    """An encoder and a decoder sharing one direction's key, as after a handshake."""
    enc = FrameEncoder()
    dec = FrameDecoder(max_message=max_message)
    enc.authenticator = MessageAuthenticator(KEY)
    dec.authenticator = MessageAuthenticator(KEY)
    return enc, dec


def prefix(flags: int, hlen: int, plen: int, magic: int = MAGIC) -> bytes:
    return struct.pack("!BBII", magic, flags, hlen, plen)


# --- layout and round trips ------------------------------------------------------------


def test_prefix_layout_matches_documentation():
    parts = FrameEncoder().encode(b'{"h":1}', b"xyz")
    data = wire(parts)
    assert PREFIX_SIZE == 10
    assert data[:PREFIX_SIZE] == prefix(0, 7, 3)
    assert data[PREFIX_SIZE:] == b'{"h":1}xyz'


def test_frame_round_trips_header_and_payload():
    data = wire(FrameEncoder().encode(b'{"type":"x"}', b"\x00\x01payload\xff"))
    assert FrameDecoder().frames(data) == [Frame(b'{"type":"x"}', b"\x00\x01payload\xff")]


def test_frame_round_trips_empty_payload():
    parts = FrameEncoder().encode(b"{}")
    assert wire(parts) == prefix(0, 2, 0) + b"{}"
    assert FrameDecoder().frames(wire(parts)) == [Frame(b"{}", b"")]


def test_keyed_frame_round_trips_and_carries_a_mac():
    enc, dec = keyed()
    data = wire(enc.encode(b"{}", b"abc"))
    assert len(data) == PREFIX_SIZE + 2 + 3 + MAC_SIZE
    assert dec.frames(data) == [Frame(b"{}", b"abc")]


@pytest.mark.parametrize("payload", [b"", bytearray(b"ba"), memoryview(b"mv")])
def test_frame_round_trips_any_buffer_type(payload):
    data = wire(FrameEncoder().encode(b"{}", payload))
    assert FrameDecoder().frames(data) == [Frame(b"{}", bytes(payload))]


def test_several_frames_in_one_read_all_come_out_in_order():
    enc = FrameEncoder()
    data = b"".join(wire(enc.encode(f'{{"n":{i}}}'.encode(), bytes([i]) * i)) for i in range(5))
    frames = FrameDecoder().frames(data)
    assert [f.header for f in frames] == [f'{{"n":{i}}}'.encode() for i in range(5)]
    assert [f.payload for f in frames] == [bytes([i]) * i for i in range(5)]


def test_partial_frame_waits_for_more_bytes():
    dec = FrameDecoder()
    data = wire(FrameEncoder().encode(b"{}", b"abcdef"))
    assert dec.frames(data[:-1]) == []
    assert dec.buffered == len(data) - 1
    assert dec.frames(data[-1:]) == [Frame(b"{}", b"abcdef")]
    assert dec.buffered == 0


# --- large payloads ------------------------------------------------------------------------


def test_large_payload_is_one_frame():
    parts = FrameEncoder().encode(b"{}", bytes(5 << 20))
    assert wire(parts)[:PREFIX_SIZE] == prefix(0, 2, 5 << 20)


def test_payload_given_in_parts_is_sent_as_one():
    enc, dec = keyed()
    parts = enc.encode(b"{}", [b"ab", bytearray(b"cd"), memoryview(b"ef")])
    assert dec.frames(wire(parts)) == [Frame(b"{}", b"abcdef")]


@pytest.mark.parametrize("authenticated", [False, True])
def test_large_payload_received_straight_into_its_own_buffer(authenticated):
    enc = FrameEncoder()
    dec = FrameDecoder()
    if authenticated:
        enc.authenticator = MessageAuthenticator(KEY)
        dec.authenticator = MessageAuthenticator(KEY)
    payload = bytes(range(256)) * (DIRECT_PAYLOAD // 64)
    data = wire(enc.encode(b'{"a":1}', payload)) + wire(enc.encode(b'{"b":2}', b"tail"))
    dec.feed(data[: PREFIX_SIZE + 7 + 100])
    assert dec.next_frame() is None
    # the socket now writes into the payload's own buffer, up to the payload's end
    target = dec.get_buffer()
    assert len(target) == len(payload) - 100
    rest = memoryview(data)[PREFIX_SIZE + 7 + 100 :]
    target[:] = rest[: len(target)]
    dec.buffer_updated(len(target))
    dec.feed(rest[len(target) :])
    frames = [dec.next_frame(), dec.next_frame()]
    assert frames == [Frame(b'{"a":1}', payload), Frame(b'{"b":2}', b"tail")]
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_large_message_reassembled_when_fed_in_small_pieces():
    enc, dec = keyed()
    payload = bytes(range(256)) * 300
    data = wire(enc.encode(b'{"a":1}', payload)) + wire(enc.encode(b'{"b":2}', b"tail"))
    out = []
    for i in range(0, len(data), 777):
        out.extend(dec.frames(data[i : i + 777]))
    assert out == [Frame(b'{"a":1}', payload), Frame(b'{"b":2}', b"tail")]
    assert dec.buffered == 0


def test_header_larger_than_the_scratch_buffer_is_received():
    header = b'{"h":"' + b"x" * (600 << 10) + b'"}'
    enc, dec = keyed()
    data = wire(enc.encode(header, b"p")) + wire(enc.encode(b"{}"))
    assert dec.frames(data) == [Frame(header, b"p"), Frame(b"{}", b"")]


messages_st = st.lists(
    st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300)), min_size=1, max_size=6
)


@given(
    messages=messages_st,
    authenticated=st.booleans(),
    data=st.data(),
)
def test_messages_reassembled_for_any_split_of_the_stream(messages, authenticated, data):
    enc = FrameEncoder()
    dec = FrameDecoder()
    if authenticated:
        enc.authenticator = MessageAuthenticator(KEY)
        dec.authenticator = MessageAuthenticator(KEY)
    stream = b"".join(wire(enc.encode(h, p)) for h, p in messages)
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=20, unique=True), label="cuts")
    )
    out = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(dec.frames(stream[start:cut]))
        start = cut
    assert out == [Frame(h, p) for h, p in messages]
    assert dec.buffered == 0


# --- limits, checked from the prefix alone ------------------------------------------------


def test_oversized_header_refused_from_prefix_alone():
    dec = FrameDecoder(max_header=100)
    with pytest.raises(RemoteProtocolError, match="header of 101 bytes exceeds 100"):
        dec.frames(prefix(0, 101, 0))  # none of the 101 header bytes has arrived


def test_oversized_payload_refused_from_prefix_alone():
    dec = FrameDecoder(max_message=1000)
    with pytest.raises(RemoteProtocolError, match="payload of 1001 bytes exceeds the limit"):
        dec.frames(prefix(0, 2, 1001))


def test_default_limits_refuse_a_4gib_announcement():
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        FrameDecoder().frames(prefix(0, 2, 0xFFFFFFFF))


def test_single_frame_over_message_limit_refused():
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 4 bytes"):
        FrameDecoder(max_message=4).frames(prefix(0, 2, 5))


def test_handshake_limits_refuse_any_payload():
    dec = FrameDecoder(max_message=0, max_header=4096)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 0 bytes"):
        dec.frames(prefix(0, 2, 1))


def test_limits_changed_between_frames_apply_to_the_next_frame():
    enc = FrameEncoder()
    data = wire(enc.encode(b"{}")) + wire(enc.encode(b"{}", b"later"))
    dec = FrameDecoder(max_message=0)
    dec.feed(data)
    assert dec.next_frame() == Frame(b"{}", b"")
    dec.max_message = 100
    assert dec.next_frame() == Frame(b"{}", b"later")


def test_encoder_refuses_oversized_header():
    with pytest.raises(LocalProtocolError, match="exceeds"):
        FrameEncoder().encode(b"x" * (MAX_HEADER + 1))


def test_encoder_refuses_empty_header():
    with pytest.raises(LocalProtocolError):
        FrameEncoder().encode(b"", b"data")


# --- malformed streams ----------------------------------------------------------------------


@pytest.mark.parametrize("first", [0x00, ord("G"), 0xD4])
def test_bad_magic_refused(first):
    with pytest.raises(RemoteProtocolError, match="not a dispy frame"):
        FrameDecoder().frames(prefix(0, 2, 0, magic=first) + b"{}")


def test_http_request_refused_as_not_a_dispy_frame():
    with pytest.raises(RemoteProtocolError, match=r"first byte 0x47"):
        FrameDecoder().frames(b"GET / HTTP/1.1\r\n\r\n")


def test_frame_without_header_refused():
    with pytest.raises(RemoteProtocolError, match="without a header"):
        FrameDecoder().frames(prefix(0, 0, 3) + b"abc")


# --- MAC: tampering, replay, reordering ------------------------------------------------------


def _tamper(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("flags", 1),
        ("header", PREFIX_SIZE),
        ("payload", PREFIX_SIZE + 9),
        ("mac", -1),
    ],
)
def test_tampered_frame_fails_authentication(where, index):
    enc, dec = keyed()
    data = wire(enc.encode(b'{"type":1}', b"payload"))
    with pytest.raises(RemoteProtocolError, match="frame authentication failed"):
        dec.frames(_tamper(data, index))


@pytest.mark.parametrize("size", [GMAC_PAYLOAD - 1, GMAC_PAYLOAD, 5 * GMAC_PAYLOAD + 3])
def test_frames_on_either_side_of_the_gmac_threshold_round_trip_and_resist_tampering(size):
    enc, dec = keyed()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    data = wire(enc.encode(b"{}", payload)) + wire(enc.encode(b"{}", b"next"))
    assert dec.frames(data) == [Frame(b"{}", payload), Frame(b"{}", b"next")]
    enc, dec = keyed()
    data = wire(enc.encode(b"{}", payload))
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.frames(_tamper(data, PREFIX_SIZE + 2 + size // 2))


def test_large_and_small_frames_use_keys_derived_apart():
    # The same bytes under the two MACs give unrelated tags (neither is the other truncated).
    small = MessageAuthenticator(KEY).sign([b"p"], 1)
    large = MessageAuthenticator(KEY).sign([b"p"], GMAC_PAYLOAD)
    assert len(small) == len(large) == MAC_SIZE
    assert small != large


@pytest.mark.parametrize("index", [PREFIX_SIZE + 2, -MAC_SIZE - 1, -1])
def test_tampered_large_payload_fails_authentication(index):
    enc, dec = keyed()
    data = wire(enc.encode(b"{}", bytes(DIRECT_PAYLOAD * 3)))
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.frames(_tamper(data, index % len(data)))


def test_replayed_frame_fails_authentication():
    enc, dec = keyed()
    data = wire(enc.encode(b"{}", b"pay me once"))
    assert dec.frames(data) == [Frame(b"{}", b"pay me once")]
    with pytest.raises(RemoteProtocolError, match="replayed"):
        dec.frames(data)


def test_reordered_frames_fail_authentication():
    enc, dec = keyed()
    first = wire(enc.encode(b'{"n":1}'))
    second = wire(enc.encode(b'{"n":2}'))
    with pytest.raises(RemoteProtocolError, match="reordered"):
        dec.frames(second + first)


def test_dropped_frame_fails_authentication_of_the_next():
    enc, dec = keyed()
    wire(enc.encode(b'{"n":1}'))  # lost on the way
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.frames(wire(enc.encode(b'{"n":2}')))


def test_frame_keyed_for_the_other_direction_fails_authentication():
    enc = FrameEncoder()
    enc.authenticator = MessageAuthenticator(b"s" * 32)
    dec = FrameDecoder()
    dec.authenticator = MessageAuthenticator(b"a" * 32)
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.frames(wire(enc.encode(b"{}")))


def test_unauthenticated_frame_fails_on_keyed_decoder():
    dec = FrameDecoder()
    dec.authenticator = MessageAuthenticator(KEY)
    data = wire(FrameEncoder().encode(b"{}", b"x")) + wire(FrameEncoder().encode(b"{}", b"y" * 40))
    # the decoder reads the next frame's first 32 bytes as this frame's MAC: they fail
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.frames(data)


def test_mac_covers_an_implicit_sequence_number():
    # Same frame twice: the MACs differ only because the sequence number moved on.
    enc = FrameEncoder()
    enc.authenticator = MessageAuthenticator(KEY)
    one, two = wire(enc.encode(b"{}")), wire(enc.encode(b"{}"))
    assert one[:-MAC_SIZE] == two[:-MAC_SIZE]
    assert one[-MAC_SIZE:] != two[-MAC_SIZE:]


# --- zero copy ---------------------------------------------------------------------------


def test_encoder_passes_payload_buffers_through_without_copying():
    payload = bytearray(b"a" * 25)
    second = b"b" * 10
    parts = FrameEncoder().encode(b"{}", [payload, second])
    assert parts[2] is payload
    assert parts[3] is second


def test_encoder_passes_the_header_through_unchanged():
    header = b'{"type":"notice"}'
    parts = FrameEncoder().encode(header, b"p")
    assert parts[1] is header


def test_tls_record_named_when_peer_speaks_tls():
    decoder = FrameDecoder()
    decoder.feed(bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + b"\x00" * 16)
    with pytest.raises(RemoteProtocolError, match="peer speaks TLS"):
        decoder.next_frame()


def test_mac_key_must_be_32_bytes():
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        MessageAuthenticator(b"short")


def test_payload_too_large_for_memory_ends_the_connection_with_the_reason():
    def no_memory(size: int) -> bytearray:
        raise MemoryError

    enc, dec = keyed()
    dec.allocate = no_memory
    data = wire(enc.encode(b"{}", bytes(DIRECT_PAYLOAD)))
    with pytest.raises(RemoteProtocolError, match="not enough memory to receive a message"):
        dec.frames(data[: PREFIX_SIZE + 2 + 100])  # the payload is on its way


# --- buffers before and after authentication ------------------------------------------


def test_handshake_decoder_takes_the_largest_handshake_frame_in_a_small_buffer():
    from dispy_core.protocol.framing import HANDSHAKE_MAX_HEADER, HANDSHAKE_SCRATCH

    dec = FrameDecoder(max_message=0, max_header=HANDSHAKE_MAX_HEADER, scratch_size=1024)
    header = b"h" * HANDSHAKE_MAX_HEADER
    (frame,) = dec.frames(wire(FrameEncoder().encode(header)))
    assert frame.header == header
    assert HANDSHAKE_SCRATCH >= PREFIX_SIZE + HANDSHAKE_MAX_HEADER
    assert len(dec._buf) <= 2 * HANDSHAKE_SCRATCH


def test_grow_scratch_keeps_bytes_not_yet_decoded():
    from dispy_core.protocol.framing import SCRATCH_SIZE

    dec = FrameDecoder(scratch_size=64)
    data = wire(FrameEncoder().encode(b"one", b"1" * 10)) + wire(FrameEncoder().encode(b"two"))
    dec.feed(data[:40])
    dec.grow_scratch(SCRATCH_SIZE)
    assert len(dec._buf) == SCRATCH_SIZE
    dec.feed(data[40:])
    assert [f.header for f in dec.frames(b"")] == [b"one", b"two"]
    dec.grow_scratch(16)  # never shrinks
    assert len(dec._buf) == SCRATCH_SIZE


# --- screening large payloads (a receiver's own size limits) ----------------------------


@pytest.mark.parametrize("authenticated", [False, True])
def test_screened_payload_is_dropped_unread_and_the_stream_goes_on(authenticated):
    enc = FrameEncoder()
    dec = FrameDecoder()
    if authenticated:
        enc.authenticator = MessageAuthenticator(KEY)
        dec.authenticator = MessageAuthenticator(KEY)
    asked: list[tuple[bytes, int]] = []
    allocated: list[int] = []

    def screen(header: bytes, size: int) -> bool:
        asked.append((header, size))
        return header == b'{"drop":1}'

    def allocate(size: int) -> bytearray:
        allocated.append(size)
        return bytearray(size)

    dec.screen = screen
    dec.allocate = allocate
    big = bytes(range(256)) * (4 * DIRECT_PAYLOAD // 256)  # 4 x DIRECT_PAYLOAD: many reads
    data = (
        wire(enc.encode(b'{"drop":1}', big))
        + wire(enc.encode(b'{"keep":1}', big))
        + wire(enc.encode(b'{"small":1}', b"tail"))
    )
    frames = []
    for start in range(0, len(data), 10_000):  # as a socket would deliver it
        view = memoryview(data)[start : start + 10_000]
        while view:
            target = dec.get_buffer()
            take = min(len(target), len(view))
            target[:take] = view[:take]
            dec.buffer_updated(take)
            view = view[take:]
            if not frames:
                assert dec.buffered < 2 * DIRECT_PAYLOAD  # a dropped payload is never held
            while (frame := dec.next_frame()) is not None:
                frames.append(frame)
    assert frames == [
        Frame(b'{"drop":1}', b"", dropped=len(big)),
        Frame(b'{"keep":1}', big),
        Frame(b'{"small":1}', b"tail"),
    ]
    assert asked == [(b'{"drop":1}', len(big)), (b'{"keep":1}', len(big))]  # large ones only
    assert allocated == [len(big)]  # nothing for the dropped one


def test_a_dropped_payload_is_still_authenticated():
    enc, dec = keyed()
    dec.screen = lambda header, size: True
    data = bytearray(wire(enc.encode(b"{}", b"z" * DIRECT_PAYLOAD * 2)))
    data[PREFIX_SIZE + 2 + 1000] ^= 1  # tampered inside the dropped payload
    dec.feed(bytes(data[:-10]))
    assert dec.next_frame() is None
    dec.feed(bytes(data[-10:]))
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dec.next_frame()
