"""Encoding ``RelayMessageFrame`` s by hand: :func:`encode_frame`, :func:`encode_frame_after`
and :func:`reset_for_peer`, re-exported by :mod:`~exec_server.relay.frame_codec`.

The bytes are identical to the official protobuf runtime's ``SerializeToString()``
(see :mod:`~exec_server.relay.frame_codec` for the rules); a data frame is one small
header plus its payload, joined once (one payload copy). The oracle tests compare it
with the official runtime.
"""

from __future__ import annotations

from exec_server.relay.frames import (
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    U32_MAX,
    AckBody,
    DataBody,
    FrameBody,
    HandshakeBody,
    HeartbeatBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    reset_frame,
)

__all__ = [
    "FRAME_HEADROOM",
    "HeadroomBuffer",
    "OutboundPayload",
    "encode_frame",
    "encode_frame_after",
    "encode_frame_for_socket",
    "frame_message_in_place",
    "is_whole_message",
    "message_with_headroom",
    "reset_for_peer",
]

#: Free bytes in front of a message built by :func:`message_with_headroom`: room for
#: the largest head of a data frame carrying one whole message (version, a 128-byte
#: ``stream_id``, ``ack``, ``ack_bits`` and the data header take at most 164 bytes).
FRAME_HEADROOM = 192

OutboundPayload = bytes | memoryview
"""An outbound message: ``bytes``, or the view :func:`message_with_headroom` returns."""


class HeadroomBuffer(bytearray):
    """An outbound message behind :data:`FRAME_HEADROOM` free bytes. Only
    :func:`message_with_headroom` makes one, and it hands out nothing but the view of
    the message; the relay writer puts each frame's head into the free bytes."""

    __slots__ = ()


def message_with_headroom(*parts: bytes) -> memoryview:
    """The message ``b"".join(parts)``, built once behind :data:`FRAME_HEADROOM` free
    bytes: a data frame carrying it whole is then its head written into those bytes, so
    the payload is not copied again before the socket (whose writer copies and masks
    it in one pass). The view stays valid and unchanged while a stream retains it for
    retransmission; only the free bytes in front of it are rewritten."""
    buffer = HeadroomBuffer(FRAME_HEADROOM)
    for part in parts:
        buffer += part
    return memoryview(buffer)[FRAME_HEADROOM:]


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))
_ACK_BITS_FLAG = b"\x20\x01"  # ack_bits = 1: the capability flag alone
_ONE_SEGMENT = b"\x18\x01"  # data.segment_count = 1
_ONE_SEGMENT_PAYLOAD = b"\x18\x01\x22"  # data.segment_count = 1, then the payload's tag
_MAX_CACHED_PREFIXES = 4096
_prefixes: dict[str, bytes] = {}  # stream_id -> encoded version 1 + stream_id
# stream_id -> (ack, ack_bits, encoded fields 1-4) of its last frame framed in place
_ack_heads: dict[str, tuple[int, int, bytes]] = {}


def _varint(value: int) -> bytes:
    """A ``uint32`` varint; ``ValueError`` outside ``0 .. U32_MAX`` (protobuf refuses those)."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"relay frame field value {value} is outside the uint32 range")
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x20_0000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    if value > U32_MAX:
        raise ValueError(f"relay frame field value {value} is outside the uint32 range")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _uint_field(tag: int, value: int) -> bytes:
    """Tag byte ``tag`` followed by ``value`` as a ``uint32`` varint, in one ``bytes``."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"relay frame field value {value} is outside the uint32 range")
        return bytes((tag, value))
    if value < 0x4000:
        return bytes((tag, value & 0x7F | 0x80, value >> 7))
    if value < 0x20_0000:
        return bytes((tag, value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    return bytes((tag,)) + _varint(value)


def _length_delimited(tag: bytes, value: bytes) -> bytes:
    return tag + _varint(len(value)) + value


def _prefix(version: int, stream_id: str) -> bytes:
    """Fields 1 and 2 (``version``, ``stream_id``), cached per stream for version 1."""
    if version == RELAY_MESSAGE_FRAME_VERSION:
        cached = _prefixes.get(stream_id)
        if cached is not None:
            return cached
    raw = stream_id.encode()
    prefix = (b"\x08" + _varint(version) if version else b"") + (
        _length_delimited(b"\x12", raw) if raw else b""
    )
    if version == RELAY_MESSAGE_FRAME_VERSION:
        if len(_prefixes) >= _MAX_CACHED_PREFIXES:
            _prefixes.clear()
        _prefixes[stream_id] = prefix
    return prefix


def encode_frame(frame: RelayFrame) -> bytes:
    """Serialize a frame, byte for byte as protobuf's ``SerializeToString()`` would.

    No validation: build frames with the helpers above, or call :func:`validate_frame`
    with :data:`OUTBOUND_LIMITS` first when the fields come from elsewhere. Raises
    ``ValueError`` for an integer outside the ``uint32`` range and ``UnicodeEncodeError``
    for a string that is not valid Unicode, as protobuf does.
    """
    head, payload, tail = _encode_parts(frame)
    if not payload:
        return head + tail if tail else head
    # The one copy of the payload.
    return b"".join((head, payload, tail)) if tail else head + payload


def encode_frame_after(frame: RelayFrame, headroom: int) -> bytearray:
    """:func:`encode_frame`, into a ``bytearray`` whose first ``headroom`` bytes are left
    free: a websocket writer can put its frame header there and mask in place, so the
    payload is copied once on its way to the socket."""
    head, payload, tail = _encode_parts(frame)
    out = bytearray(headroom)
    out += head
    out += payload  # the one copy of the payload
    out += tail
    return out


def encode_frame_for_socket(
    frame: RelayFrame, headroom: int, framed: set[int]
) -> bytearray | memoryview:
    """:func:`encode_frame_after`, except for a data frame whose payload is a whole
    message from :func:`message_with_headroom` and that has no trace context: its head
    is written into the message's free bytes and the frame is returned as a view of
    them and the message, without copying the payload. The view is valid until the
    next frame of that message is encoded, so ``framed`` collects the ids of the
    messages framed in place by one batch of frames; a message met again in the same
    batch is copied instead."""
    body = frame.body
    if type(body) is DataBody and frame.traceparent is None and frame.tracestate is None:
        # A stream's outbound frames may carry the view (see ReliableStream._data).
        payload: object = body.payload
        if type(payload) is memoryview:
            buffer = payload.obj
            if (
                type(buffer) is HeadroomBuffer
                and len(buffer) - FRAME_HEADROOM == len(payload)
                and payload.contiguous
                and id(buffer) not in framed
            ):
                head, _, _ = _encode_parts(frame)
                start = FRAME_HEADROOM - len(head)
                if start >= 0:
                    framed.add(id(buffer))
                    buffer[start:FRAME_HEADROOM] = head
                    return memoryview(buffer)[start:]
    return encode_frame_after(frame, headroom)


def is_whole_message(payload: object) -> bool:
    """Whether ``payload`` is a whole, non-empty :func:`message_with_headroom` message
    (what :func:`frame_message_in_place` frames)."""
    if type(payload) is not memoryview:
        return False
    buffer = payload.obj
    return (
        type(buffer) is HeadroomBuffer
        and len(buffer) - FRAME_HEADROOM == len(payload) > 0
        and payload.contiguous
    )


def frame_message_in_place(
    message: memoryview, stream_id: str, ack: int, ack_bits: int, seq: int
) -> memoryview | None:
    """The data frame ``encode_frame_for_socket`` makes for a whole
    ``message_with_headroom`` message (segment ``0/1``, version 1, no trace context),
    built from its fields without a :class:`RelayFrame`: its head is written into the
    message's free bytes and the frame returned as a view of them and the message.
    ``None`` if ``message`` is not such a message (:func:`is_whole_message`). Valid
    until the message is framed again."""
    if not is_whole_message(message):
        return None
    size = len(message)
    # Fields 1-4 (version, stream_id, ack, ack_bits): the same for every frame of a
    # stream between two changes of its acks, so cached per stream.
    cached = _ack_heads.get(stream_id)
    if cached is not None and cached[0] == ack and cached[1] == ack_bits:
        head = cached[2]
    else:
        head = _prefixes.get(stream_id) or _prefix(RELAY_MESSAGE_FRAME_VERSION, stream_id)
        if ack:
            head += _uint_field(0x18, ack)
        if ack_bits:
            head += _ACK_BITS_FLAG if ack_bits == 1 else _uint_field(0x20, ack_bits)
        if len(_ack_heads) >= _MAX_CACHED_PREFIXES:
            _ack_heads.clear()
        _ack_heads[stream_id] = (ack, ack_bits, head)
    # Field 5: seq, segment_count = 1 and the payload's length, inside its own length.
    inner = (_uint_field(0x08, seq) if seq else b"") + _ONE_SEGMENT_PAYLOAD + _varint(size)
    head += _uint_field(0x2A, len(inner) + size) + inner
    start = FRAME_HEADROOM - len(head)
    buffer = message.obj
    assert type(buffer) is HeadroomBuffer and start >= 0  # the longest head fits
    buffer[start:FRAME_HEADROOM] = head
    return memoryview(buffer)[start:]


def _encode_parts(frame: RelayFrame) -> tuple[bytes, bytes, bytes]:
    """The encoding as (everything before a data payload, the payload, the rest)."""
    stream_id = frame.stream_id
    head = _prefixes.get(stream_id) if frame.version == RELAY_MESSAGE_FRAME_VERSION else None
    if head is None:
        head = _prefix(frame.version, stream_id)
    ack = frame.ack
    if ack:
        head += _uint_field(0x18, ack)
    ack_bits = frame.ack_bits
    if ack_bits:
        head += _ACK_BITS_FLAG if ack_bits == 1 else _uint_field(0x20, ack_bits)
    traceparent, tracestate = frame.traceparent, frame.tracestate
    tail = b""
    if traceparent is not None:
        tail = _length_delimited(b"\x5a", traceparent.encode())
    if tracestate is not None:
        tail += _length_delimited(b"\x62", tracestate.encode())
    body = frame.body
    if isinstance(body, DataBody):
        payload = body.payload
        return head + _data_header(body, len(payload)), payload, tail
    if body is not None:
        head += _control_body(body)
    return head, b"", tail


def _data_header(body: DataBody, size: int) -> bytes:
    """Field 5 (``data``) up to its payload bytes: tag, length, seq, index, count."""
    return _data_header_fields(body.seq, body.segment_index, body.segment_count, size)


def _data_header_fields(seq: int, index: int, count: int, size: int) -> bytes:
    """:func:`_data_header` from the body's fields."""
    inner = _uint_field(0x08, seq) if seq else b""
    if index:
        inner += _uint_field(0x10, index)
    if count:
        inner += _ONE_SEGMENT if count == 1 else _uint_field(0x18, count)
    if size:
        inner += _uint_field(0x22, size)
    return _uint_field(0x2A, len(inner) + size) + inner


def _control_body(body: FrameBody) -> bytes:
    """A body other than ``data``, with its field tag."""
    if isinstance(body, AckBody):
        return b"\x32\x00"
    if isinstance(body, HeartbeatBody):
        return b"\x4a\x00"
    if isinstance(body, ResumeBody):
        next_seq = body.next_seq
        return _length_delimited(b"\x3a", b"\x08" + _varint(next_seq)) if next_seq else b"\x3a\x00"
    if isinstance(body, ResetBody):
        reason = body.reason.encode()
        return (
            _length_delimited(b"\x42", _length_delimited(b"\x0a", reason))
            if reason
            else b"\x42\x00"
        )
    assert isinstance(body, HandshakeBody)
    payload = body.payload
    return (
        _length_delimited(b"\x52", _length_delimited(b"\x0a", payload)) if payload else b"\x52\x00"
    )


def reset_for_peer(stream_id: str, reason: str, *, reliable: bool) -> bytes:
    """The encoded ``reset{reason}`` to send a peer that did not see the stream's state:
    the one builder for resets that answer or end a stream from outside it (the
    multiplexer refusing a stream, the rendezvous giving up on a peer).

    ``reliable`` mirrors the capability flag of the peer's own frames on that stream: our
    reliable endpoints treat a reset as terminal whatever its flag, and a Codex peer
    ignores ``ack_bits``, so the flag only keeps the frame in the peer's own dialect.
    """
    flag = RELIABLE_CAPABILITY_BIT if reliable else 0
    return encode_frame(reset_frame(stream_id, reason, ack_bits=flag))
