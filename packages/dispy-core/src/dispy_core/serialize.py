"""The one place where dispy turns bytes into Python objects.

Only call :func:`loads` on payloads that arrived on an authenticated connection (or from a
process this node started itself): unpickling runs code.

Large ``bytes`` objects among a job's arguments or in its result travel out of band: the
pickle stream only refers to them, and they are sent as they are, after it, without being
copied into the stream first. Such a payload is::

    0x00 | count:u32 | pickle_len:u64 | count x buffer_len:u64 | pickle | buffers...

(``0x00`` is not a pickle opcode, so :func:`loads` tells the two forms apart by the first
byte.)
"""

from __future__ import annotations

import io
import pickle
import struct
from types import ModuleType
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL
# bytes objects at least this large are sent out of band
OUT_OF_BAND_MIN = 64 << 10
# containers larger than this are not searched for large bytes (pickling them stays fast)
_SCAN_LIMIT = 64
_OOB_MARK = 0
_OOB_HEAD = struct.Struct("<BIQ")
_LEN = struct.Struct("<Q")

Pickled = bytes | list[bytes | memoryview]


class SerializationError(ValueError):
    """An object could not be pickled (or a payload unpickled)."""


class _OutOfBand:
    """Stands for a large bytes object in the pickle stream; unpickles as ``bytes``."""

    __slots__ = ("buffer",)

    def __init__(self, data: bytes) -> None:
        self.buffer = pickle.PickleBuffer(data)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (bytes, (self.buffer,))


def _is_large(value: object) -> bool:
    return type(value) is bytes and len(value) >= OUT_OF_BAND_MIN


def _holds_large(value: Any) -> bool:
    """Whether :func:`_mark` would find anything (cheaper than marking: the usual answer)."""
    kind = type(value)
    if kind is bytes:
        return len(value) >= OUT_OF_BAND_MIN
    items = _items(value)
    if items is None:
        return False
    for item in items:
        if type(item) is bytes:
            if len(item) >= OUT_OF_BAND_MIN:
                return True
            continue
        inner = _items(item)
        if inner is not None:
            for leaf in inner:
                if type(leaf) is bytes and len(leaf) >= OUT_OF_BAND_MIN:
                    return True
    return False


def _items(value: Any) -> Any:
    """A small container's items (a dict's values), or None."""
    kind = type(value)
    if kind is tuple or kind is list:
        return value if len(value) <= _SCAN_LIMIT else None
    if kind is dict:
        return value.values() if len(value) <= _SCAN_LIMIT else None
    return None


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(value: Any) -> bool:
    """Whether ``value`` is builtin scalars only, in small tuples, lists and dicts at most
    two levels down (the usual job arguments): the standard pickler writes exactly the
    bytes cloudpickle would (its hooks apply only to other types), several times faster."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    items = _items(value)
    if items is None or (kind is dict and not all(type(k) in _SCALARS for k in value)):
        return False
    for item in items:
        kind = type(item)
        if kind in _SCALARS:
            continue
        inner = _items(item)
        if inner is None or (kind is dict and not all(type(k) in _SCALARS for k in item)):
            return False
        for leaf in inner:
            if type(leaf) not in _SCALARS:
                return False
    return True


def _mark(value: Any, found: list[_OutOfBand], depth: int) -> Any:
    """``value`` with large bytes (at most two container levels down) replaced by markers."""
    if _is_large(value):
        marker = _OutOfBand(value)
        found.append(marker)
        return marker
    if depth >= 2:
        return value
    kind = type(value)
    if kind is tuple or kind is list:
        if len(value) > _SCAN_LIMIT:
            return value
        items = [_mark(v, found, depth + 1) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else kind(items)
    if kind is dict:
        if len(value) > _SCAN_LIMIT:
            return value
        marked = {k: _mark(v, found, depth + 1) for k, v in value.items()}
        return value if all(marked[k] is v for k, v in value.items()) else marked
    return value


def dumps(obj: Any, *, plain_first: bool = False) -> Pickled:
    """Pickle with cloudpickle so lambdas, closures and local functions travel too.

    Returns bytes, or (when ``obj`` holds large bytes objects near its top, as a job's
    arguments or result often do) a list of buffers to send one after the other: the
    original bytes objects are among them, not copied.

    With ``plain_first`` the standard pickler is tried first (several times faster on plain
    data) and cloudpickle only for what it refuses. Only for processes that register no
    module for pickling by value (a node's worker): the standard pickler would send such a
    module's functions by reference.

    Raises:
        SerializationError: naming the object's type and the reason.
    """
    if not _holds_large(obj):
        if plain_first or _plain(obj):
            try:  # (not contextlib.suppress: its cost shows on a job's latency)
                return pickle.dumps(obj, protocol=PROTOCOL)
            except Exception:  # cloudpickle below takes it, or says why not
                pass
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__name__} object: {type(exc).__name__}: {exc}"
            ) from exc
        return data
    found: list[_OutOfBand] = []
    marked = _mark(obj, found, 0)
    ours = {id(m.buffer) for m in found}
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if id(buffer) in ours:
            buffers.append(buffer.raw())
            return False
        return True  # anything else (a bytearray, an array) is copied in band

    picklers: list[type[pickle.Pickler]] = [cloudpickle.Pickler]
    if plain_first:
        picklers.insert(0, pickle.Pickler)
    for pickler in picklers:
        buffers.clear()
        try:
            with io.BytesIO() as stream:
                pickler(stream, protocol=PROTOCOL, buffer_callback=out_of_band).dump(marked)
                body = stream.getvalue()
            break
        except Exception as exc:
            if pickler is cloudpickle.Pickler:
                raise SerializationError(
                    f"cannot serialize {type(obj).__name__} object: {type(exc).__name__}: {exc}"
                ) from exc
    head = _OOB_HEAD.pack(_OOB_MARK, len(buffers), len(body)) + b"".join(
        _LEN.pack(b.nbytes) for b in buffers
    )
    return [head, body, *buffers]


def pickle_by_value(module: ModuleType) -> None:
    """Send ``module``'s functions and classes by value from now on (this process).

    For code the nodes do not have: without it, cloudpickle refers to them by module name.
    """
    cloudpickle.register_pickle_by_value(module)


def dumps_plain(obj: Any) -> bytes:
    """Pickle data made only of builtin types (faster than cloudpickle)."""
    return pickle.dumps(obj, protocol=PROTOCOL)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle an authenticated payload (either form :func:`dumps` makes).

    Nothing returned refers to ``data``: the caller may reuse its buffer.

    Raises:
        SerializationError: the payload cannot be unpickled here (e.g. a missing module).
    """
    try:
        if not data or data[0] != _OOB_MARK:
            return pickle.loads(data)
        view = memoryview(data)
        _mark_byte, count, body_len = _OOB_HEAD.unpack_from(view)
        pos = _OOB_HEAD.size
        lengths = [_LEN.unpack_from(view, pos + i * _LEN.size)[0] for i in range(count)]
        pos += count * _LEN.size
        body = view[pos : pos + body_len]
        pos += body_len
        buffers = []
        for length in lengths:
            buffers.append(view[pos : pos + length])
            pos += length
        if pos != len(view):
            raise ValueError("payload length does not match its out-of-band buffers")
        return pickle.loads(body, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot deserialize: {type(exc).__name__}: {exc}") from exc
