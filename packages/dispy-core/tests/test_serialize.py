"""Pickling of computations, arguments and results (dispy_core.serialize)."""

from __future__ import annotations

import os

import pytest

from dispy_core import serialize
from dispy_core.protocol.framing import nbytes
from dispy_core.serialize import OUT_OF_BAND_MIN, SerializationError

BIG = OUT_OF_BAND_MIN


def joined(pickled: serialize.Pickled) -> bytes:
    return pickled if isinstance(pickled, bytes) else b"".join(bytes(p) for p in pickled)


def test_small_objects_pickle_to_plain_bytes():
    data = serialize.dumps(((1, "a"), {"k": b"small"}))
    assert isinstance(data, bytes)
    assert data[:1] == b"\x80"  # an ordinary pickle
    assert serialize.loads(data) == ((1, "a"), {"k": b"small"})


def test_lambdas_and_closures_travel():
    base = 10
    func = serialize.loads(joined(serialize.dumps(lambda x: x + base)))
    assert func(5) == 15


def test_large_bytes_argument_is_sent_out_of_band_without_a_copy():
    blob = os.urandom(BIG)
    parts = serialize.dumps(((blob, 7), {}))
    assert isinstance(parts, list)
    # the argument itself is one of the buffers, not a copy inside the pickle stream
    assert any(isinstance(p, memoryview) and p.obj is blob for p in parts)
    assert nbytes(parts) < BIG + 200
    args, kwargs = serialize.loads(joined(parts))
    assert args == (blob, 7)
    assert type(args[0]) is bytes
    assert kwargs == {}


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b,
        lambda b: (b, b"x" * 10, b),
        lambda b: [1, b],
        lambda b: {"data": b, "n": 1},
        lambda b: ((b,), {"k": b}),
        lambda b: (None, "out", "err", None, [b]),
    ],
    ids=["bare", "tuple", "list", "dict", "args-kwargs", "nested-list"],
)
def test_large_bytes_near_the_top_round_trip_as_bytes(make):
    blob = os.urandom(BIG + 3)
    obj = make(blob)
    parts = serialize.dumps(obj)
    assert isinstance(parts, list)
    assert serialize.loads(joined(parts)) == obj


def test_large_bytes_deep_inside_stay_in_band_and_round_trip():
    blob = os.urandom(BIG)
    obj = [[[blob]]]
    data = serialize.dumps(obj)
    assert isinstance(data, bytes)
    assert serialize.loads(data) == obj


def test_bytearray_and_other_buffers_are_copied_in_band():
    # Mutable buffers are copied when pickled, so later changes by the caller cannot
    # reach what was submitted.
    mutable = bytearray(os.urandom(BIG))
    data = serialize.dumps((mutable,))
    assert isinstance(data, bytes)
    mutable[0] ^= 0xFF
    loaded = serialize.loads(data)
    assert type(loaded[0]) is bytearray
    assert loaded[0] != mutable


def test_containers_with_many_items_are_not_searched():
    blobs = [os.urandom(BIG) for _ in range(2)]
    many = [*range(100), *blobs]
    data = serialize.dumps((many,))
    assert isinstance(data, bytes)
    assert serialize.loads(data) == (many,)


def test_loaded_objects_do_not_refer_to_the_received_buffer():
    blob = os.urandom(BIG)
    received = bytearray(joined(serialize.dumps((blob, [b"y" * BIG]))))
    loaded = serialize.loads(memoryview(received))
    received[:] = bytes(len(received))  # the buffer is reused for the next payload
    assert loaded == (blob, [b"y" * BIG])


def test_same_large_object_twice_comes_back_equal():
    blob = os.urandom(BIG)
    first, second = serialize.loads(joined(serialize.dumps((blob, blob))))
    assert first == second == blob


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],  # truncated buffer
        lambda data: data + b"extra",  # trailing bytes
        lambda data: data[:5],  # truncated header
    ],
    ids=["truncated", "trailing", "short-header"],
)
def test_malformed_out_of_band_payload_is_a_serialization_error(damage):
    data = joined(serialize.dumps((os.urandom(BIG),)))
    with pytest.raises(SerializationError, match="cannot deserialize"):
        serialize.loads(damage(data))


def test_unpicklable_argument_names_its_type():
    import threading

    with pytest.raises(SerializationError, match="cannot serialize tuple"):
        serialize.dumps((threading.Lock(),))


def test_unpicklable_object_next_to_large_bytes_names_its_type():
    import threading

    with pytest.raises(SerializationError, match="cannot serialize tuple"):
        serialize.dumps((os.urandom(BIG), threading.Lock()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: (1, "out", "", None),
        lambda: lambda x: x + 1,  # the standard pickler refuses: cloudpickle takes over
        lambda: ([os.urandom(BIG)], "", "", None),
        lambda: ((lambda: 3), os.urandom(BIG)),
    ],
    ids=["plain", "lambda", "large", "lambda-and-large"],
)
def test_plain_first_gives_what_cloudpickle_gives(make):
    obj = make()
    loaded = serialize.loads(joined(serialize.dumps(obj, plain_first=True)))
    if callable(obj):
        assert loaded(1) == 2
    elif callable(obj[0]):
        assert loaded[0]() == 3
        assert loaded[1] == obj[1]
    else:
        assert loaded == obj


def test_plain_first_still_reports_what_nothing_can_pickle():
    import threading

    with pytest.raises(SerializationError, match="cannot serialize"):
        serialize.dumps((threading.Lock(), os.urandom(BIG)), plain_first=True)
