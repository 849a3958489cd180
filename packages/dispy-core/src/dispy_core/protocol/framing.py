"""Frames: a small JSON header and a binary payload, optionally authenticated by a MAC.

Layout of one frame on the wire (network byte order)::

    magic:u8 = 0xD5 | flags:u8 = 0 | header_len:u32 | payload_len:u32 | header | payload | mac

``mac`` (16 bytes) is present once the session is keyed and TLS is off; it covers an
implicit per-direction sequence number, the 10-byte prefix, the header and the payload, so a
frame cannot be altered, replayed, dropped or reordered without detection. Frames with a
payload under 64 KiB use keyed BLAKE3 (cheapest per frame), larger ones AES-GMAC (cheapest
per byte: about four times the speed of BLAKE3 where the CPU has AES and carry-less
multiply instructions).

One message is one frame, whatever its size: the sender streams a large payload straight
from the caller's buffers, and the receiver reads it straight into one buffer of the
announced size (:meth:`FrameDecoder.get_buffer`), hashing each piece as it lands while it is
still in the CPU cache. Sizes are checked from the prefix alone, so a peer that announces an
oversized frame is refused before it can make us allocate.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blake3 import blake3

from dispy_core.protocol.errors import LocalProtocolError, RemoteProtocolError

MAGIC = 0xD5
TLS_RECORD = 0x16  # first byte of a TLS handshake record
_PREFIX = struct.Struct("!BBII")
PREFIX_SIZE = _PREFIX.size
MAC_SIZE = 16

MAX_HEADER = 1 << 20
DEFAULT_MAX_MESSAGE = 1 << 30
HANDSHAKE_MAX_HEADER = 4096
# A payload at least this large is received into a buffer of its own rather than through
# the decoder's scratch buffer.
DIRECT_PAYLOAD = 64 << 10
SCRATCH_SIZE = 256 << 10
# The scratch buffer of a connection that has not authenticated yet: its frames are at most
# PREFIX_SIZE + HANDSHAKE_MAX_HEADER bytes, and a peer that never authenticates must not
# cost us the session's buffer (see aio.admission).
HANDSHAKE_SCRATCH = 8 << 10
# Frames with at least this much payload are authenticated with AES-GMAC, others BLAKE3.
GMAC_PAYLOAD = 64 << 10

Buffer = bytes | bytearray | memoryview
Payload = Buffer  # a received payload
Outgoing = Buffer | Sequence[Buffer]  # a payload to send: one buffer, or parts sent in order


def parts_of(payload: Outgoing) -> Sequence[Buffer]:
    """An outgoing payload as a sequence of buffers."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return (payload,) if len(payload) else ()
    return payload


def nbytes(payload: Outgoing) -> int:
    """Length in bytes of an outgoing payload (one buffer or parts)."""
    if isinstance(payload, bytes | bytearray):
        return len(payload)
    if isinstance(payload, memoryview):
        return payload.nbytes
    total = 0
    for part in payload:
        total += len(part) if type(part) is bytes else memoryview(part).nbytes
    return total


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole message: its header bytes and its payload.

    ``dropped``: the payload's length when the receiver's screen refused to keep it (the
    payload is then empty; its bytes were read, authenticated and thrown away).
    """

    header: bytes
    payload: Payload
    dropped: int = 0


# Whether to throw away a large payload unread, from its frame's header and payload length.
Screen = Callable[[bytes, int], bool]


class _Gmac:
    """AES-GMAC (GCM authenticating only): a MAC over data fed in pieces."""

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes, nonce: bytes) -> None:
        # Imported on first use: OpenSSL's bindings cost a daemon that never moves a large
        # payload 8 MiB of memory.
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._ctx = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()

    def update(self, data: Buffer) -> None:
        self._ctx.authenticate_additional_data(data)

    def digest(self) -> bytes:
        self._ctx.finalize()
        tag: bytes = self._ctx.tag
        return tag


class _Blake3:
    __slots__ = ("_mac",)

    def __init__(self, key: bytes, seq: bytes) -> None:
        self._mac = blake3(seq, key=key)

    def update(self, data: Buffer) -> None:
        self._mac.update(data)

    def digest(self) -> bytes:
        return self._mac.digest(length=MAC_SIZE)


Mac = _Gmac | _Blake3


class MessageAuthenticator:
    """A MAC over each frame, keyed per direction, with an implicit sequence number.

    The session key is split (BLAKE3 key derivation) into a keyed-BLAKE3 key for frames with
    small payloads and an AES-256 key for AES-GMAC on large ones; the frame's sequence
    number is BLAKE3's first input or GMAC's nonce, never reused under one key.
    """

    __slots__ = ("_blake3_key", "_gmac_key", "_seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError("a frame MAC key is 32 bytes")
        self._blake3_key = blake3(key, derive_key_context="dispy frame mac blake3").digest()
        self._gmac_key = blake3(key, derive_key_context="dispy frame mac aes-gmac").digest()
        self._seq = 0

    def begin(self, payload_len: int) -> Mac:
        """A MAC for the next frame, to be fed that frame's bytes in order."""
        seq = self._seq.to_bytes(12, "big")
        self._seq += 1
        if payload_len >= GMAC_PAYLOAD:
            return _Gmac(self._gmac_key, seq)
        return _Blake3(self._blake3_key, seq)

    def _over(self, parts: Sequence[Buffer], payload_len: int) -> Mac:
        mac = self.begin(payload_len)
        for part in parts:
            mac.update(part)
        return mac

    def sign(self, parts: Sequence[Buffer], payload_len: int) -> bytes:
        if payload_len < GMAC_PAYLOAD:
            # One call over the joined bytes: the same keyed BLAKE3 as begin() and update()
            # piece by piece, at a third less per frame (small frames are most frames).
            seq = self._seq
            self._seq = seq + 1
            data = b"".join((seq.to_bytes(12, "big"), *parts))
            return blake3(data, key=self._blake3_key).digest(length=MAC_SIZE)
        return self._over(parts, payload_len).digest()

    @staticmethod
    def check(mac: Mac, received: Buffer) -> None:
        if not hmac.compare_digest(mac.digest(), bytes(received)):
            raise RemoteProtocolError(
                "frame authentication failed (tampered, replayed or reordered frame)"
            )

    def verify(self, parts: Sequence[Buffer], payload_len: int, received: Buffer) -> None:
        if payload_len < GMAC_PAYLOAD:  # as in sign()
            seq = self._seq
            self._seq = seq + 1
            data = b"".join((seq.to_bytes(12, "big"), *parts))
            mac = blake3(data, key=self._blake3_key).digest(length=MAC_SIZE)
            if not hmac.compare_digest(mac, bytes(received)):
                raise RemoteProtocolError(
                    "frame authentication failed (tampered, replayed or reordered frame)"
                )
            return
        self.check(self._over(parts, payload_len), received)


class FrameEncoder:
    """Turns a header and payload into the buffers to write, without copying the payload."""

    def __init__(self) -> None:
        self.authenticator: MessageAuthenticator | None = None

    def encode(self, header: bytes, payload: Outgoing = b"") -> list[Buffer]:
        """The frame's buffers, in order: prefix, header, the payload's parts, MAC.

        Frames are signed here, in order, so they must be written in the order encoded.
        """
        if not header:
            raise LocalProtocolError("a frame needs a header")
        if len(header) > MAX_HEADER:
            raise LocalProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER}")
        if type(payload) is bytes:  # the usual payload: no parts to walk
            size = len(payload)
            parts: Sequence[Buffer] = (payload,) if size else ()
        else:
            parts = parts_of(payload)
            size = nbytes(parts)
        if size > 0xFFFFFFFF:
            raise LocalProtocolError(f"payload of {size} bytes is too large for one message")
        prefix = _PREFIX.pack(MAGIC, 0, len(header), size)
        out: list[Buffer] = [prefix, header, *parts]
        if self.authenticator is not None:
            out.append(self.authenticator.sign(out, size))
        return out


def make_room(buf: bytearray, start: int, end: int) -> tuple[bytearray, int]:
    """A scratch buffer with ``buf[start:end]`` moved to its front (twice the size if that
    fills more than half), and where its unread bytes now end.

    A new buffer rather than ``buf`` resized: whoever filled it (an asyncio transport) may
    still hold a view of it, and a bytearray with views cannot change size.
    """
    pending = end - start
    size = len(buf) * 2 if pending > len(buf) // 2 else len(buf)
    fresh = bytearray(size)
    fresh[:pending] = buf[start:end]
    return fresh, pending


class _Direct:
    """A large payload being received straight into its own buffer (or, dropped, into a
    small sink reused slice after slice)."""

    __slots__ = ("dropped", "filled", "header", "mac", "size", "target")

    def __init__(
        self,
        header: bytes,
        target: bytearray | memoryview,
        mac: Mac | None,
        size: int,
        dropped: bool,
    ) -> None:
        self.header = header
        self.target = target
        self.size = size
        self.filled = 0
        self.mac = mac
        self.dropped = dropped


class FrameDecoder:
    """Takes received bytes and yields whole :class:`Frame` objects.

    Two ways to give it bytes: :meth:`feed` (copies them in), or :meth:`get_buffer` and
    :meth:`buffer_updated` (the caller receives straight into the decoder's buffers, as
    :class:`asyncio.BufferedProtocol` does). Small frames are parsed out of a scratch
    buffer; a large payload gets a buffer of its own that the socket fills directly.

    Raises:
        RemoteProtocolError: bad magic, oversized header or message, failed MAC.
    """

    def __init__(
        self,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_header: int = MAX_HEADER,
        scratch_size: int = SCRATCH_SIZE,
    ) -> None:
        self.max_message = max_message
        self.max_header = max_header
        self.authenticator: MessageAuthenticator | None = None
        # Where a large payload's buffer comes from (e.g. a BufferPool's take).
        self.allocate: Callable[[int], bytearray | memoryview] = bytearray
        # Asked once per large payload, before any of it is read: True drops it unread.
        self.screen: Screen | None = None
        self._buf = bytearray(scratch_size)
        self._start = 0
        self._end = 0
        self._direct: _Direct | None = None

    # -- receiving ------------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go (never empty); then call :meth:`buffer_updated`."""
        direct = self._direct
        if direct is not None and direct.filled < direct.size:
            if direct.dropped:
                return memoryview(direct.target)[: direct.size - direct.filled]
            return memoryview(direct.target)[direct.filled :]
        if self._end == len(self._buf):
            self._make_room()
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` bytes were written into the buffer :meth:`get_buffer` returned."""
        direct = self._direct
        if direct is not None and direct.filled < direct.size:
            if direct.mac is not None:
                start = 0 if direct.dropped else direct.filled
                with memoryview(direct.target) as view:
                    direct.mac.update(view[start : start + nbytes])
            direct.filled += nbytes
        else:
            self._end += nbytes

    def feed(self, data: Buffer) -> None:
        """Add received bytes (copied); take whole messages out with :meth:`next_frame`."""
        with memoryview(data) as view:
            view = view.cast("B")
            while view:
                with self.get_buffer() as target:
                    take = min(len(target), len(view))
                    target[:take] = view[:take]
                self.buffer_updated(take)
                view = view[take:]

    def _make_room(self) -> None:
        self._buf, self._end = make_room(self._buf, self._start, self._end)
        self._start = 0

    def grow_scratch(self, size: int) -> None:
        """Use a scratch buffer of at least ``size`` bytes from now on (the handshake starts
        small; an authenticated session reads in large pieces)."""
        if len(self._buf) >= size:
            return
        fresh = bytearray(size)
        pending = self._end - self._start
        fresh[:pending] = self._buf[self._start : self._end]
        self._buf, self._start, self._end = fresh, 0, pending

    # -- parsing --------------------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """The next whole message, or None until more bytes arrive.

        Limits and the authenticator in force when this is called apply to that frame, so a
        caller may change them between frames (the handshake does).
        """
        if self._direct is not None:
            return self._finish_direct()
        buf = self._buf
        pos = self._start
        if self._end - pos < PREFIX_SIZE:
            return None
        magic, _flags, hlen, plen = _PREFIX.unpack_from(buf, pos)
        if magic == TLS_RECORD:
            raise RemoteProtocolError(
                "the peer speaks TLS and this side does not: give both sides the same "
                "certfile (and keyfile), or neither"
            )
        if magic != MAGIC:
            raise RemoteProtocolError(
                f"not a dispy frame (first byte 0x{magic:02x}); "
                "is the peer a dispy process of the same release?"
            )
        if hlen > self.max_header:
            raise RemoteProtocolError(f"frame header of {hlen} bytes exceeds {self.max_header}")
        if not hlen:
            raise RemoteProtocolError("frame without a header")
        if plen > self.max_message:
            raise RemoteProtocolError(
                f"message payload of {plen} bytes exceeds the limit of {self.max_message} bytes"
            )
        mac_len = MAC_SIZE if self.authenticator is not None else 0
        hstart = pos + PREFIX_SIZE
        pstart = hstart + hlen
        end = pstart + plen + mac_len
        have = self._end
        if have < end:
            if plen >= DIRECT_PAYLOAD and have >= pstart:
                self._go_direct(pos, hstart, pstart, plen)
                return self._finish_direct()
            return None
        with memoryview(buf) as view:
            header = bytes(view[hstart:pstart])
            if self.authenticator is not None:
                # prefix, header and payload lie next to each other: one part to hash
                self.authenticator.verify(
                    (view[pos : pstart + plen],), plen, view[end - MAC_SIZE : end]
                )
            payload = bytes(view[pstart : pstart + plen])
        if end == self._end:
            self._start = self._end = 0  # all consumed: fill from the start again
        else:
            self._start = end
        return Frame(header, payload)

    def _go_direct(self, pos: int, hstart: int, pstart: int, plen: int) -> None:
        header = bytes(self._buf[hstart:pstart])
        mac = None
        with memoryview(self._buf) as view:
            if self.authenticator is not None:
                mac = self.authenticator.begin(plen)
                mac.update(view[pos:hstart])
                mac.update(header)
            drop = self.screen is not None and self.screen(header, plen)
            try:
                target = bytearray(min(plen, SCRATCH_SIZE)) if drop else self.allocate(plen)
            except MemoryError:
                raise RemoteProtocolError(
                    f"not enough memory to receive a message of {plen} bytes"
                ) from None
            direct = _Direct(header, target, mac, plen, drop)
            got = min(plen, self._end - pstart)
            if got:
                chunk = view[pstart : pstart + got]
                if not drop:
                    target[:got] = chunk
                if mac is not None:
                    mac.update(chunk)
                chunk.release()
            direct.filled = got
        self._start = pstart + got
        if self._start == self._end:
            self._start = self._end = 0
        self._direct = direct

    def _finish_direct(self) -> Frame | None:
        direct = self._direct
        assert direct is not None
        if direct.filled < direct.size:
            return None
        if direct.mac is not None:
            if self._end - self._start < MAC_SIZE:
                return None
            with memoryview(self._buf) as view:
                MessageAuthenticator.check(direct.mac, view[self._start : self._start + MAC_SIZE])
            self._start += MAC_SIZE
            if self._start == self._end:
                self._start = self._end = 0
        self._direct = None
        if direct.dropped:
            return Frame(direct.header, b"", dropped=direct.size)
        return Frame(direct.header, direct.target)

    def frames(self, data: Buffer) -> list[Frame]:
        """Feed ``data`` and return every message now complete."""
        self.feed(data)
        out: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        direct = self._direct
        filled = direct.filled if direct is not None and not direct.dropped else 0
        return self._end - self._start + filled

    @property
    def backlog(self) -> int:
        """Bytes waiting in the scratch buffer: what reading more would add to memory.

        A large payload being received is not counted: its buffer was allocated whole when
        its header arrived, so reading the rest of it costs nothing more, and it can only be
        handed over once it is all read (pausing on it would wait forever).
        """
        return self._end - self._start
