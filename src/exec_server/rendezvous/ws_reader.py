"""Reading a relay socket's inbound websocket frames after the upgrade (sans-IO).

picows parses the upgrade and writes the 101; from then on a relay socket's bytes come
here (:class:`~exec_server.rendezvous.relay_socket.RelaySocket` is the connection's
buffered protocol). The reason is where the payload lands: picows unmasks a client's
frame with non-temporal stores, past the caches, and the kernel then reads every routed
byte back from memory when the frame is forwarded. A :class:`FrameReader` has the
payload of a large frame read straight into a ``bytearray`` of its exact size and
unmasks it with ordinary stores (:func:`~exec_server.transport.ws_mask.mask_in_place`),
so the forwarding ``writev`` finds it in the cache.

The reader does no I/O. Its owner asks :meth:`FrameReader.get_buffer` where the next
bytes go and tells :meth:`FrameReader.buffer_updated` how many arrived (what
``asyncio.BufferedProtocol`` does; :meth:`FrameReader.feed` copies bytes in the same
way). Frame headers and small frames are read into a staging buffer; a frame whose
payload is not all there yet, unless it is small enough to wait in the staging buffer,
gets its own ``bytearray`` and the rest of it is read into that. After such a frame the
next read takes one frame header at most, so that a stream of long frames (the SDK's
output chunks) is read in place from each payload's first byte, and a whole message read
in place is read into the ``bytearray`` of the one before it when their sizes match (no
allocation, no zeroing, memory still in the cache): a message handed to the sink is
valid during the call only. A payload over ``PART_BYTES`` is read into parts allocated
as its bytes arrive, so that a header claiming a long frame costs no more memory than
the bytes actually sent.

Every rule is checked from the frame's header, before its payload is read (RFC 6455
5.2-5.5): the reader hands its :class:`FrameSink` whole binary messages (fragments
joined), pings, pongs and the peer's close, or one :class:`SocketProtocolError`, after
which it reads nothing more (and after the peer's close neither):

* 1002 for a frame that breaks the framing: reserved bits (no extension is ever
  negotiated), an unknown opcode, an unmasked frame, a length not in its shortest form,
  a fragmented or long control frame, a continuation without a message, a new message
  inside a fragmented one, a close frame with a bad code or a one-byte payload;
* 1003 for a text message (the relay is binary only);
* 1007 for a close reason that is not UTF-8;
* 1009 for a message over ``max_message_bytes`` (fragments counted together).
"""

from __future__ import annotations

from typing import Protocol

from ..relay.errors import InvalidFrameReason
from ..transport.ws_mask import mask_in_place
from ..transport.ws_mask import unchecked_mask as _mask
from .errors import SocketProtocolError
from .router_config import (
    PROTOCOL_ERROR_CLOSE_CODE,
    TOO_BIG_CLOSE_CODE,
    UNSUPPORTED_DATA_CLOSE_CODE,
    ProtocolErrorReason,
)

__all__ = [
    "INVALID_TEXT_CLOSE_CODE",
    "OVERSIZE_REASON",
    "STAGE_BYTES",
    "FrameReader",
    "FrameSink",
    "oversize_error",
    "protocol_error",
]

STAGE_BYTES = 64 * 1024
"""The staging buffer: frame headers and small frames are read into it."""

_LONGEST_HEADER = 14

PART_BYTES = 1024 * 1024
"""A payload longer than this is read into parts of this size, allocated as its bytes
arrive (then joined): a header alone never makes the reader allocate more than this."""

SMALL_FRAME_BYTES = STAGE_BYTES // 4
"""A frame up to this size (header included) waits in the staging buffer until it is all
there; a longer one that is not gets a ``bytearray`` of its own."""

INVALID_TEXT_CLOSE_CODE = 1007

OVERSIZE_REASON = "relay message over the size limit"

_CONTINUATION = 0x0
_TEXT = 0x1
_BINARY = 0x2
_CLOSE = 0x8
_PING = 0x9
_PONG = 0xA

_VALID_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)
"""Close codes a peer may send below 3000 (RFC 6455 7.4.1, and the IANA registry's)."""


class FrameSink(Protocol):
    """What a :class:`FrameReader` hands its owner, in the order of the frames."""

    def on_message(self, payload: bytearray) -> None:
        """A whole binary message, unmasked, valid during the call only (the reader
        reads the next message of the same size into it)."""

    def on_ping(self, payload: bytes) -> None:
        """A ping (to be answered with a pong of the same payload)."""

    def on_pong(self) -> None:
        """A pong."""

    def on_close(self, code: int | None, reason: bytes) -> None:
        """The peer's close (``code`` None: it gave none); nothing is read after it."""

    def on_error(self, error: SocketProtocolError) -> None:
        """A protocol error; nothing is read after it."""


def protocol_error(detail: str) -> SocketProtocolError:
    """A frame that breaks the websocket framing rules: close with 1002."""
    return SocketProtocolError(
        PROTOCOL_ERROR_CLOSE_CODE, InvalidFrameReason.UNDECODABLE.value, detail
    )


def oversize_error() -> SocketProtocolError:
    """A message over the size limit: close with 1009."""
    return SocketProtocolError(TOO_BIG_CLOSE_CODE, ProtocolErrorReason.OVERSIZE, OVERSIZE_REASON)


def _text_error() -> SocketProtocolError:
    return SocketProtocolError(
        UNSUPPORTED_DATA_CLOSE_CODE,
        ProtocolErrorReason.TEXT_FRAME,
        "text message on a binary relay socket",
    )


class FrameReader:
    """The inbound frames of one relay socket (see the module docstring)."""

    def __init__(self, max_message_bytes: int, sink: FrameSink) -> None:
        self._max = max_message_bytes
        self._sink = sink
        self._stage = bytearray(STAGE_BYTES)
        self._view = memoryview(self._stage)
        self._start = 0
        """Where the first byte not yet parsed is in the staging buffer."""
        self._end = 0
        """Where the next byte read goes in the staging buffer."""
        self._payload: bytearray | None = None
        """The payload being read in place (a frame too long to wait in the stage)."""
        self._spare: bytearray | None = None
        """The last whole message read in place, reused for the next one of its size."""
        self._in_place = False
        """The last frame was read in place: the next read at a frame boundary takes one
        header at most, so that the next long payload is read in place from its start."""
        self._filled = 0
        self._parts: list[bytearray] | None = None
        """The parts read so far of a payload longer than ``PART_BYTES``."""
        self._unallocated = 0
        """The bytes of such a payload that no part holds yet."""
        self._first = 0
        """The first header byte of the frame whose payload is read in place."""
        self._key = b""
        self._fragments: bytearray | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """A protocol error or the peer's close was read: the rest is discarded."""
        return self._done

    def get_buffer(self) -> memoryview:
        """Where the next bytes read go (never empty)."""
        payload = self._payload
        if payload is not None:
            return memoryview(payload)[self._filled :]
        if self._done:
            return self._view
        end = self._end
        if self._in_place and not end:
            return self._view[:_LONGEST_HEADER]
        return self._view[end:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer`."""
        if self._done:
            return
        payload = self._payload
        if payload is not None:
            self._filled += nbytes
            if self._filled < len(payload):
                return
            if self._parts is not None:
                payload = self._next_part(payload)
                if payload is None:
                    return
            self._payload = None
            self._in_place = True
            self._frame(self._first, self._key, payload)
            if self._done or self._end == 0:
                return
        else:
            self._end += nbytes
        self._parse()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes as a transport would (copied through :meth:`get_buffer`)."""
        view = memoryview(data).cast("B")
        while view:
            buffer = self.get_buffer()
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.buffer_updated(size)
            view = view[size:]

    def _parse(self) -> None:
        """Take every whole frame in the staging buffer; start reading a long one in place."""
        stage = self._stage
        view = self._view
        start = self._start
        end = self._end
        on_message = self._sink.on_message
        while end - start >= 2:
            first = stage[start]
            second = stage[start + 1]
            length = second & 0x7F
            if length < 126:
                header_end = start + 6
                shortest = 0
            else:
                header_end = start + (8 if length == 126 else 14)
                shortest = 126 if length == 126 else 0x10000
            if end < header_end:
                break
            if shortest:
                length = int.from_bytes(view[start + 2 : header_end - 4], "big")
            # The routed frame's header passes this test; any other goes to _header_ok.
            routed = first == 0x82 and second >= 0x80 and shortest <= length <= self._max
            if not (routed and self._fragments is None) and not self._header_ok(
                first, second, length
            ):
                return
            key = bytes(view[header_end - 4 : header_end])
            payload_end = header_end + length
            if payload_end <= end:
                self._in_place = False
                start = payload_end
                payload = bytearray(view[header_end:payload_end])
                if first == 0x82:  # a whole binary message: the routed frame's path
                    _mask(key, payload)
                    on_message(payload)
                else:
                    self._frame(first, key, payload)
                    if self._done:
                        break
            elif payload_end - start <= SMALL_FRAME_BYTES:
                break  # waits in the stage
            else:
                self._read_in_place(first, key, length, view[header_end:end])
                start = end = 0
                break
        self._keep(start, end)

    def _read_in_place(self, first: int, key: bytes, length: int, head: memoryview) -> None:
        """Read the rest of a long frame's payload into a buffer of its own (the one of
        the message before it, when the sizes match); ``head`` is what was read of it."""
        spare = self._spare
        if length > PART_BYTES:
            payload = bytearray(PART_BYTES)
            self._parts = []
            self._unallocated = length - PART_BYTES
        elif first == 0x82 and spare is not None and len(spare) == length:
            payload = spare
        else:
            payload = bytearray(length)
            if first == 0x82:
                self._spare = payload
        filled = len(head)
        payload[:filled] = head
        self._payload = payload
        self._filled = filled
        self._first = first
        self._key = key

    def _next_part(self, full: bytearray) -> bytearray | None:
        """A part of a long payload is full: start the next one (None back) or join
        them (the whole payload back)."""
        parts = self._parts
        assert parts is not None
        parts.append(full)
        size = min(self._unallocated, PART_BYTES)
        if size:
            self._unallocated -= size
            self._payload = bytearray(size)
            self._filled = 0
            return None
        self._parts = None
        return bytearray().join(parts)

    def _keep(self, start: int, end: int) -> None:
        """Keep the unparsed bytes ``start:end`` of the stage (moved to its front when
        what is left after them could not hold a small frame)."""
        if start == end:
            start = end = 0
        elif start and end + SMALL_FRAME_BYTES > STAGE_BYTES:
            self._stage[: end - start] = self._view[start:end]
            end -= start
            start = 0
        self._start = start
        self._end = end

    def _header_ok(self, first: int, second: int, length: int) -> bool:
        """Check a frame's header (RFC 6455 5.2-5.5); False: refused (reported)."""
        opcode = first & 0x0F
        fin = first & 0x80
        problem: SocketProtocolError | None = None
        if first & 0x70:
            problem = protocol_error("reserved bits set without a negotiated extension")
        elif not second & 0x80:
            problem = protocol_error("unmasked frame from a client")
        elif (second & 0x7F == 126 and length < 126) or (
            second & 0x7F == 127 and (length < 0x10000 or length >> 63)
        ):
            problem = protocol_error("frame length not in its shortest form")
        elif opcode >= _CLOSE:
            if opcode > _PONG:
                problem = protocol_error(f"reserved opcode {opcode:#x}")
            elif not fin or length > 125:
                problem = protocol_error("fragmented or long control frame")
        elif opcode in (_BINARY, _TEXT):
            if self._fragments is not None:
                problem = protocol_error("a new message inside a fragmented one")
            elif opcode == _TEXT:
                problem = _text_error()
            elif length > self._max:
                problem = oversize_error()
        elif opcode == _CONTINUATION:
            if self._fragments is None:
                problem = protocol_error("continuation frame without a message to continue")
            elif len(self._fragments) + length > self._max:
                problem = oversize_error()
        else:
            problem = protocol_error(f"reserved opcode {opcode:#x}")
        if problem is None:
            return True
        self._fail(problem)
        return False

    def _frame(self, first: int, key: bytes, payload: bytearray) -> None:
        """A whole frame whose header passed :meth:`_header_ok`."""
        mask_in_place(key, payload)
        if first == 0x82:  # a whole binary message: the routed frame's path
            self._sink.on_message(payload)
            return
        opcode = first & 0x0F
        if opcode == _BINARY:
            self._fragments = payload
        elif opcode == _CONTINUATION:
            fragments = self._fragments
            assert fragments is not None  # checked from the header
            fragments += payload
            if first & 0x80:
                self._fragments = None
                self._sink.on_message(fragments)
        elif opcode == _PING:
            self._sink.on_ping(bytes(payload))
        elif opcode == _PONG:
            self._sink.on_pong()
        else:
            self._close(payload)

    def _close(self, payload: bytearray) -> None:
        if not payload:
            self._done = True
            self._sink.on_close(None, b"")
            return
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
        if (code < 3000 and code not in _VALID_CLOSE_CODES) or code >= 5000:
            self._fail(protocol_error("close frame with an invalid code"))
            return
        reason = bytes(payload[2:])
        try:
            reason.decode()
        except UnicodeDecodeError:
            self._fail(
                SocketProtocolError(
                    INVALID_TEXT_CLOSE_CODE,
                    InvalidFrameReason.UNDECODABLE.value,
                    "close reason is not UTF-8",
                )
            )
            return
        self._done = True
        self._sink.on_close(code, reason)

    def _fail(self, error: SocketProtocolError) -> None:
        self._done = True
        self._payload = None
        self._parts = None
        self._fragments = None
        self._start = self._end = 0
        self._sink.on_error(error)
