"""Frames: a small JSON header and a binary payload, optionally authenticated by a MAC.

Layout of one frame on the wire (network byte order)::

    magic:u8 = 0xD5 | flags:u8 | header_len:u32 | payload_len:u32 | header | payload | mac

``mac`` (32 bytes, keyed BLAKE3) is present once the session is keyed and TLS is off; it
covers an implicit per-direction sequence number, the 10-byte prefix, the header and the
payload, so a frame cannot be altered, replayed, dropped or reordered without detection.

A payload larger than ``max_chunk`` is split: the first frame has the header and the first
chunk with ``FLAG_MORE`` set; the following frames have an empty header and further chunks,
the last without ``FLAG_MORE``. The decoder reassembles them, refusing any message larger
than ``max_message`` before buffering it. Sizes are checked from the prefix alone, so a peer
that announces an oversized frame is refused before it can make us allocate.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from blake3 import blake3

from dispy_core.protocol.errors import LocalProtocolError, RemoteProtocolError

MAGIC = 0xD5
TLS_RECORD = 0x16  # first byte of a TLS handshake record
FLAG_MORE = 0x01
_PREFIX = struct.Struct("!BBII")
PREFIX_SIZE = _PREFIX.size
MAC_SIZE = 32

MAX_HEADER = 1 << 20
DEFAULT_MAX_CHUNK = 4 << 20  # largest chunk a decoder accepts
SEND_CHUNK = 1 << 20  # chunk size an encoder produces: small enough to stream with flow control
DEFAULT_MAX_MESSAGE = 1 << 30
HANDSHAKE_MAX_HEADER = 4096

Buffer = bytes | bytearray | memoryview
Payload = bytes | bytearray  # a received payload: bytes, or the buffer a chunked one filled


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole message: its header bytes and its (reassembled) payload."""

    header: bytes
    payload: Payload


class MessageAuthenticator:
    """A MAC over each frame, keyed per direction, with an implicit sequence number.

    Keyed BLAKE3 (a MAC by construction): about 2.5 times the speed of HMAC-SHA256 on
    large payloads and per small frame, which is most of the cost of moving data.
    """

    __slots__ = ("_key", "_seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError("a frame MAC key is 32 bytes")
        self._key = key
        self._seq = 0

    def sign(self, parts: list[Buffer]) -> bytes:
        mac = blake3(self._seq.to_bytes(8, "big"), key=self._key)
        for part in parts:
            mac.update(part)
        self._seq += 1
        return mac.digest()

    def verify(self, parts: list[Buffer], received: Buffer) -> None:
        expected = self.sign(parts)
        if not hmac.compare_digest(expected, bytes(received)):
            raise RemoteProtocolError(
                "frame authentication failed (tampered, replayed or reordered frame)"
            )


class FrameEncoder:
    """Turns a header and payload into the buffers to write, without copying the payload."""

    def __init__(self, max_chunk: int = SEND_CHUNK) -> None:
        self.max_chunk = max_chunk
        self.authenticator: MessageAuthenticator | None = None

    def encode(self, header: bytes, payload: Buffer = b"") -> list[Buffer]:
        """All buffers of the message's frames, in order (for one ``writelines``)."""
        return [buf for frame in self.encode_frames(header, payload) for buf in frame]

    def encode_frames(self, header: bytes, payload: Buffer = b"") -> list[list[Buffer]]:
        """The message's frames, each as the list of buffers to write.

        Frames are signed here, in order, so they must be written in the order returned.
        """
        if not header:
            raise LocalProtocolError("a frame needs a header")
        if len(header) > MAX_HEADER:
            raise LocalProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER}")
        view = memoryview(payload).cast("B") if payload else memoryview(b"")
        out: list[list[Buffer]] = []
        first = True
        offset = 0
        total = len(view)
        while True:
            chunk = view[offset : offset + self.max_chunk]
            offset += len(chunk)
            more = offset < total
            head = header if first else b""
            prefix = _PREFIX.pack(MAGIC, FLAG_MORE if more else 0, len(head), len(chunk))
            frame: list[Buffer] = [prefix]
            if head:
                frame.append(head)
            if len(chunk):
                frame.append(chunk)
            if self.authenticator is not None:
                frame.append(self.authenticator.sign([prefix, head, chunk]))
            out.append(frame)
            first = False
            if not more:
                return out


class FrameDecoder:
    """Accumulates received bytes and yields whole :class:`Frame` objects.

    Raises:
        RemoteProtocolError: bad magic, oversized header/chunk/message, failed MAC.
    """

    def __init__(
        self,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_header: int = MAX_HEADER,
    ) -> None:
        self.max_chunk = max_chunk
        self.max_message = max_message
        self.max_header = max_header
        self.authenticator: MessageAuthenticator | None = None
        self._buf = bytearray()
        self._pos = 0
        self._partial_header: bytes | None = None
        self._partial = bytearray()  # a chunked message's payload, filled chunk by chunk
        self._partial_size = 0

    def feed(self, data: Buffer) -> None:
        """Add received bytes; take whole messages out with :meth:`next_frame`."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next whole message, or None until more bytes are fed.

        Limits and the authenticator in force when this is called apply to that frame, so a
        caller may change them between frames (the handshake does).
        """
        return self._next()

    def frames(self, data: Buffer) -> list[Frame]:
        """Feed ``data`` and return every message now complete."""
        self.feed(data)
        out: list[Frame] = []
        while (frame := self._next()) is not None:
            out.append(frame)
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buf) - self._pos + self._partial_size

    def _next(self) -> Frame | None:
        while True:
            buf = self._buf
            pos = self._pos
            if len(buf) - pos < PREFIX_SIZE:
                return None
            magic, flags, hlen, plen = _PREFIX.unpack_from(buf, pos)
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
            if plen > self.max_chunk:
                raise RemoteProtocolError(f"frame payload of {plen} bytes exceeds {self.max_chunk}")
            continuing = self._partial_header is not None
            if continuing and hlen:
                raise RemoteProtocolError("continuation frame carries a header")
            if not continuing and not hlen:
                raise RemoteProtocolError("frame without a header")
            if self._partial_size + plen > self.max_message:
                raise RemoteProtocolError(
                    f"message payload exceeds the limit of {self.max_message} bytes"
                )
            mac_len = MAC_SIZE if self.authenticator is not None else 0
            end = pos + PREFIX_SIZE + hlen + plen + mac_len
            if len(buf) < end:
                return None
            hstart = pos + PREFIX_SIZE
            pstart = hstart + hlen
            header = bytes(buf[hstart:pstart])
            with memoryview(buf) as view:
                # The MAC is checked on views of the receive buffer, and a chunk is copied
                # once, into the message's payload, never into a bytes object of its own.
                chunk = view[pstart : pstart + plen]
                if self.authenticator is not None:
                    self.authenticator.verify(
                        [view[pos:hstart], header, chunk], view[end - MAC_SIZE : end]
                    )
                if not (flags & FLAG_MORE) and not continuing:
                    payload = bytes(chunk)
                else:
                    self._partial += chunk
                    self._partial_size += plen
                chunk.release()
            self._pos = end
            if flags & FLAG_MORE:
                if not continuing:
                    self._partial_header = header
                continue
            if continuing:
                assert self._partial_header is not None
                frame = Frame(self._partial_header, self._partial)
                self._partial_header = None
                self._partial = bytearray()
                self._partial_size = 0
                return frame
            return Frame(header, payload)
