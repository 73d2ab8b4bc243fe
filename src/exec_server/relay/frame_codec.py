"""The ``RelayMessageFrame`` wire codec: bytes to :class:`RelayFrame` and back.

The frame model, its builders and :func:`validate_frame` live in
:mod:`~exec_server.relay.frames` and are re-exported here, so that one import gives a
relay endpoint everything about frames. The generated protobuf bindings
(:mod:`~exec_server.relay.proto.relay_v1_pb2`) are not used on the hot path:

* :func:`encode_frame` (in :mod:`~exec_server.relay.frame_encoder`) writes proto3 by
  hand, byte-identical to the official runtime's ``SerializeToString()``: fields in
  field-number order, zero scalars and empty non-optional strings/bytes omitted, a
  selected empty oneof member still emitted (so ``resume{next_seq: 0}`` is ``3a 00``
  and a data frame with ``seq=0`` has no seq field at all),
  ``traceparent``/``tracestate`` emitted whenever they are not ``None``. A data frame
  is one small header plus its payload, joined once (one payload copy).
* :func:`decode_frame` reads canonical encodings directly (each field at most once, in
  increasing field-number order, known fields with their proto wire types, varints of at
  most 32 bits), slicing the payload once; :func:`decode_route` does the same without
  touching the payload (for the rendezvous, which forwards the original bytes). Anything
  else (unknown, repeated or reordered fields, over-long varints, truncation, bad
  UTF-8...) goes to the official protobuf parser, so the result is always exactly what
  protobuf makes of the bytes (last-one-wins scalars, merged submessages, oneof
  semantics). The tests check both directions against the official runtime.
  ``docs/relay.md`` records why the fast path is kept (a measurement).

Nothing but :class:`~exec_server.relay.errors.InvalidFrame` escapes :func:`decode_frame`
or :func:`decode_route`, whatever the input bytes.
"""

from __future__ import annotations

from exec_server.relay.errors import InvalidFrame, InvalidFrameReason
from exec_server.relay.frame_encoder import encode_frame, encode_frame_after, reset_for_peer
from exec_server.relay.frames import (
    ACK_BODY,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_SEGMENT_COUNT,
    HEARTBEAT_BODY,
    INBOUND_LIMITS,
    MAX_INBOUND_STREAM_ID_BYTES,
    MAX_OUTBOUND_STREAM_ID_BYTES,
    MAX_RESET_REASON_BYTES,
    MAX_TRACE_FIELD_BYTES,
    OUTBOUND_LIMITS,
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    U32_MAX,
    AckBody,
    BodyKind,
    DataBody,
    FrameBody,
    FrameLimits,
    HandshakeBody,
    HeartbeatBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    data_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
    truncate_reason,
    validate_frame,
)
from exec_server.relay.proto import relay_v1_pb2 as _pb

__all__ = [  # the frame model is re-exported from frames, the encoder from frame_encoder
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_SEGMENT_COUNT",
    "INBOUND_LIMITS",
    "MAX_INBOUND_STREAM_ID_BYTES",
    "MAX_OUTBOUND_STREAM_ID_BYTES",
    "MAX_RESET_REASON_BYTES",
    "MAX_TRACE_FIELD_BYTES",
    "OUTBOUND_LIMITS",
    "RELAY_MESSAGE_FRAME_VERSION",
    "RELIABLE_CAPABILITY_BIT",
    "U32_MAX",
    "AckBody",
    "BodyKind",
    "DataBody",
    "FrameBody",
    "FrameLimits",
    "HandshakeBody",
    "HeartbeatBody",
    "RelayFrame",
    "ResetBody",
    "ResumeBody",
    "ack_frame",
    "data_frame",
    "decode_frame",
    "decode_route",
    "encode_frame",
    "encode_frame_after",
    "heartbeat_frame",
    "peek_route",
    "reset_for_peer",
    "reset_frame",
    "resume_frame",
    "truncate_reason",
    "validate_frame",
]


# --------------------------------------------------------------------------- decoding


class _NotCanonical(Exception):
    """Internal: the fast decoder hands the bytes to the protobuf parser."""


def _read_u32(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it, for a varint of at most 5 bytes
    holding a ``uint32``; anything else is not canonical here (protobuf truncates longer
    varints to 32 bits; let it)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    byte = data[pos + 1]
    if byte < 0x80:
        return value | byte << 7, pos + 2
    value |= (byte & 0x7F) << 7
    byte = data[pos + 2]
    if byte < 0x80:
        return value | byte << 14, pos + 3
    value |= (byte & 0x7F) << 14
    byte = data[pos + 3]
    if byte < 0x80:
        return value | byte << 21, pos + 4
    value |= (byte & 0x7F) << 21
    byte = data[pos + 4]
    if byte < 0x10:  # no continuation and at most 32 bits in all
        return value | byte << 28, pos + 5
    raise _NotCanonical


def _read_str(data: bytes, pos: int, end: int) -> tuple[str, int]:
    """The length-prefixed UTF-8 string whose length varint is at ``pos``."""
    size, pos = _read_u32(data, pos)
    stop = pos + size
    if stop > end:
        raise _NotCanonical
    return data[pos:stop].decode(), stop


# Stands in for a data payload the caller never reads (decode_route): validation only
# looks at whether the payload is empty.
_UNREAD_PAYLOAD = b"\x00"


def _decode_canonical(data: bytes, keep_payload: bool) -> RelayFrame:
    """Decode a canonical encoding; raise ``_NotCanonical`` (or ``IndexError`` /
    ``UnicodeDecodeError``) for bytes the protobuf parser must judge.

    Straight-line: each field is read at most once, in field-number order, so a repeated,
    reordered or unknown field leaves bytes unread (``pos != end``) and is not canonical.
    ``tag`` is the byte at ``pos``, or 0 (never a valid tag) at the end.
    """
    end = len(data)
    pos = version = ack = ack_bits = 0
    stream_id = ""
    tag = data[0] if end else 0
    if tag == 0x08:  # version
        version, pos = _read_u32(data, 1)
        tag = data[pos] if pos < end else 0
    if tag == 0x12:  # stream_id
        stream_id, pos = _read_str(data, pos + 1, end)
        tag = data[pos] if pos < end else 0
    if tag == 0x18:  # ack
        ack, pos = _read_u32(data, pos + 1)
        tag = data[pos] if pos < end else 0
    if tag == 0x20:  # ack_bits
        ack_bits, pos = _read_u32(data, pos + 1)
        tag = data[pos] if pos < end else 0
    body: FrameBody | None = None
    if tag == 0x2A:  # data
        body, pos = _decode_data_body(data, pos, keep_payload)
    elif 0x32 <= tag <= 0x52 and tag & 7 == 2:  # fields 6..10, length-delimited
        body, pos = _decode_control_body(data, pos, tag)
    traceparent, tracestate = _decode_trace(data, pos, end)
    return RelayFrame(version, stream_id, ack, ack_bits, body, traceparent, tracestate)


def _decode_data_body(data: bytes, pos: int, keep_payload: bool) -> tuple[DataBody, int]:
    """The canonical ``data`` member whose tag is at ``pos``, and the position after it."""
    size, pos = _read_u32(data, pos + 1)
    stop = pos + size
    if stop > len(data):
        raise _NotCanonical
    seq = index = count = 0
    payload = b""
    tag = data[pos] if pos < stop else 0
    if tag == 0x08:  # data.seq
        seq, pos = _read_u32(data, pos + 1)
        tag = data[pos] if pos < stop else 0
    if tag == 0x10:  # data.segment_index
        index, pos = _read_u32(data, pos + 1)
        tag = data[pos] if pos < stop else 0
    if tag == 0x18:  # data.segment_count
        count, pos = _read_u32(data, pos + 1)
        tag = data[pos] if pos < stop else 0
    if tag == 0x22:  # data.payload
        size, pos = _read_u32(data, pos + 1)
        payload_end = pos + size
        if payload_end > stop:
            raise _NotCanonical
        if keep_payload:
            payload = data[pos:payload_end]  # the one copy of the payload
        elif size:
            payload = _UNREAD_PAYLOAD
        pos = payload_end
    if pos != stop:
        raise _NotCanonical
    return DataBody(seq, index, count, payload), pos


def _decode_trace(data: bytes, pos: int, end: int) -> tuple[str | None, str | None]:
    """Fields 11 and 12 (``traceparent``, ``tracestate``), which must end the frame."""
    traceparent: str | None = None
    tracestate: str | None = None
    tag = data[pos] if pos < end else 0
    if tag == 0x5A:  # traceparent
        traceparent, pos = _read_str(data, pos + 1, end)
        tag = data[pos] if pos < end else 0
    if tag == 0x62:  # tracestate
        tracestate, pos = _read_str(data, pos + 1, end)
    if pos != end:
        raise _NotCanonical
    return traceparent, tracestate


def _decode_control_body(data: bytes, pos: int, tag: int) -> tuple[FrameBody, int]:
    """A canonical ``ack_frame``/``resume``/``reset``/``heartbeat``/``handshake`` member
    whose tag is at ``pos``; returns it and the position after it."""
    size, pos = _read_u32(data, pos + 1)
    stop = pos + size
    if stop > len(data):
        raise _NotCanonical
    body: FrameBody
    if tag == 0x3A:  # resume{next_seq}
        next_seq = 0
        if pos < stop and data[pos] == 0x08:
            next_seq, pos = _read_u32(data, pos + 1)
        body = ResumeBody(next_seq)
    elif tag == 0x42:  # reset{reason}
        reason = ""
        if pos < stop and data[pos] == 0x0A:
            size, pos = _read_u32(data, pos + 1)
            if pos + size > stop:
                raise _NotCanonical
            reason = data[pos : pos + size].decode()
            pos += size
        body = ResetBody(reason)
    elif tag == 0x52:  # handshake{payload}
        payload = b""
        if pos < stop and data[pos] == 0x0A:
            size, pos = _read_u32(data, pos + 1)
            if pos + size > stop:
                raise _NotCanonical
            payload = data[pos : pos + size]
            pos += size
        body = HandshakeBody(payload)
    elif tag == 0x32:
        body = ACK_BODY
    else:  # 0x4A
        body = HEARTBEAT_BODY
    if pos != stop:  # unknown, repeated or reordered fields inside the body
        raise _NotCanonical
    return body, pos


def _decode_with_protobuf(data: bytes) -> RelayFrame:
    """The official parser, for every encoding the fast path does not take."""
    message = _pb.RelayMessageFrame()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # the decoder's failure modes vary by backend; all mean one thing
        raise InvalidFrame(
            InvalidFrameReason.UNDECODABLE, f"not a RelayMessageFrame: {exc}"
        ) from None
    kind = message.WhichOneof("body")
    body: FrameBody | None
    if kind == "data":
        data_body = message.data
        body = DataBody(
            data_body.seq, data_body.segment_index, data_body.segment_count, data_body.payload
        )
    elif kind == "ack_frame":
        body = ACK_BODY
    elif kind == "resume":
        body = ResumeBody(message.resume.next_seq)
    elif kind == "reset":
        body = ResetBody(message.reset.reason)
    elif kind == "heartbeat":
        body = HEARTBEAT_BODY
    elif kind == "handshake":
        body = HandshakeBody(message.handshake.payload)
    else:
        body = None
    return RelayFrame(
        message.version,
        message.stream_id,
        message.ack,
        message.ack_bits,
        body,
        message.traceparent if message.HasField("traceparent") else None,
        message.tracestate if message.HasField("tracestate") else None,
    )


def _oversize(size: int, limits: FrameLimits) -> InvalidFrame:
    return InvalidFrame(
        InvalidFrameReason.OVERSIZE, f"frame of {size} bytes exceeds {limits.max_frame_bytes} bytes"
    )


def decode_frame(
    data: bytes | bytearray | memoryview, limits: FrameLimits = INBOUND_LIMITS
) -> RelayFrame:
    """Decode and validate one binary websocket message.

    Raises :class:`InvalidFrame` (and nothing else) when the bytes are oversize, are not a
    ``RelayMessageFrame`` or fail :func:`validate_frame`.
    """
    if len(data) > limits.max_frame_bytes:
        raise _oversize(len(data), limits)
    if type(data) is not bytes:
        data = bytes(data)
    try:
        frame = _decode_canonical(data, True)
    except (_NotCanonical, IndexError, UnicodeDecodeError):
        frame = _decode_with_protobuf(data)
    validate_frame(frame, limits)
    return frame


def decode_route(
    data: bytes | bytearray | memoryview, limits: FrameLimits = INBOUND_LIMITS
) -> tuple[str, BodyKind, bool]:
    """``(stream_id, body kind, capability flag)`` of a frame, validated exactly as
    :func:`decode_frame` does (same :class:`InvalidFrame` for the same bytes), without
    copying a data payload. The flag (bit 0 of ``ack_bits``) tells whether the sender is
    one of our reliable endpoints, which retransmit what is lost.

    For forwarders that route the original bytes and never read the payload.
    """
    if len(data) > limits.max_frame_bytes:
        raise _oversize(len(data), limits)
    if type(data) is not bytes:
        data = bytes(data)
    try:
        frame = _decode_canonical(data, False)
    except (_NotCanonical, IndexError, UnicodeDecodeError):
        frame = _decode_with_protobuf(data)
    validate_frame(frame, limits)
    body = frame.body
    assert body is not None  # validate_frame rejects a frame without body
    return frame.stream_id, body.kind, bool(frame.ack_bits & RELIABLE_CAPABILITY_BIT)


def peek_route(
    data: bytes | bytearray | memoryview, limits: FrameLimits = INBOUND_LIMITS
) -> tuple[str, BodyKind, bool]:
    """:func:`decode_route`'s answer (the same tuple, the same :class:`InvalidFrame`),
    read straight off the bytes for the frames a forwarder sees most: a canonical
    ``data`` frame without trace fields, and a bare ``ack_frame`` (no frame or body
    objects are built). Anything else, and any doubt, goes to :func:`decode_route`.
    ``data`` is only read during the call (a view of a socket's read buffer will do).

    This runs once per routed frame, so one-byte varints (and the tags that follow
    them) are read inline and longer ones skipped without decoding when their value
    does not matter (``ack``, ``data.seq``); the rules are :func:`_read_u32`'s.
    """
    end = len(data)
    try:
        size = data[3]
        if (
            end > limits.max_frame_bytes
            or data[0] != 0x08
            or data[1] != 0x01
            or data[2] != 0x12
            or not 0 < size < 0x80
            or size > limits.max_stream_id_bytes
        ):
            return decode_route(data, limits)
        pos = 4 + size
        stream_id = str(data[4:pos], "utf-8")
        tag = data[pos]
        if tag == 0x18:  # ack: its value does not matter here
            pos = pos + 2 if data[pos + 1] < 0x80 else _skip_u32(data, pos + 1)
            tag = data[pos]
        flagged = False
        if tag == 0x20:  # ack_bits: bit 0 is in the varint's first byte
            flagged = bool(data[pos + 1] & RELIABLE_CAPABILITY_BIT)
            pos = pos + 2 if data[pos + 1] < 0x80 else _skip_u32(data, pos + 1)
            tag = data[pos]
        if stream_id.strip() == stream_id:
            if tag == 0x2A and _plain_data_body(data, pos + 1, end, limits.max_segment_count):
                return stream_id, "data", flagged
            if tag == 0x32 and data[pos + 1] == 0 and pos + 2 == end:  # ack_frame{}
                return stream_id, "ack_frame", flagged
    except (_NotCanonical, IndexError, UnicodeDecodeError):
        pass
    return decode_route(data, limits)


def _skip_u32(data: bytes | bytearray | memoryview, pos: int) -> int:
    """The position after the varint at ``pos``, under :func:`_read_u32`'s rules."""
    if data[pos] < 0x80:
        return pos + 1
    if data[pos + 1] < 0x80:
        return pos + 2
    if data[pos + 2] < 0x80:
        return pos + 3
    if data[pos + 3] < 0x80:
        return pos + 4
    if data[pos + 4] < 0x10:
        return pos + 5
    raise _NotCanonical


def _plain_data_body(
    data: bytes | bytearray | memoryview, pos: int, end: int, max_segment_count: int
) -> bool:
    """Is the ``data`` member whose length varint is at ``pos`` canonical, valid (a
    payload, ``index < count <= max_segment_count``) and the end of the frame?
    Varints of one or two bytes are read inline, and ``count: 1`` without ``index``
    (every unsegmented message, Codex's only shape) is matched in one step."""
    size = data[pos]
    if size < 0x80:
        pos += 1
    elif data[pos + 1] < 0x80:
        size = size & 0x7F | data[pos + 1] << 7
        pos += 2
    else:
        size, pos = _read_u32(data, pos)
    if pos + size != end:  # trace fields follow, or not canonical
        return False
    if data[pos] == 0x08:  # data.seq: its value does not matter here
        pos = pos + 2 if data[pos + 1] < 0x80 else _skip_u32(data, pos + 1)
    if data[pos] == 0x18 and data[pos + 1] == 1 and data[pos + 2] == 0x22:
        if max_segment_count < 1:
            return False
        pos += 3
    else:
        index, count, pos = _segment_fields(data, pos)
        if data[pos] != 0x22 or not index < count <= max_segment_count:
            return False
        pos += 1
    size = data[pos]
    if size < 0x80:
        pos += 1
    elif data[pos + 1] < 0x80:
        size = size & 0x7F | data[pos + 1] << 7
        pos += 2
    else:
        size, pos = _read_u32(data, pos)
    return size > 0 and pos + size == end


def _segment_fields(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int]:
    """``data.segment_index`` and ``data.segment_count`` (0 when absent) from ``pos``
    on, and the position after them."""
    index = count = 0
    if data[pos] == 0x10:
        index, pos = _read_u32(data, pos + 1)
    if data[pos] == 0x18:
        count, pos = _read_u32(data, pos + 1)
    return index, count, pos
