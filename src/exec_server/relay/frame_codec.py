"""Encode, decode and validate ``codex.exec_server.relay.v1.RelayMessageFrame``.

This module owns the wire envelope and the rules every frame must satisfy, whichever
side it comes from (Codex spec section 4.2, plus this project's segmentation):

* ``version`` is 1;
* ``stream_id`` is non-empty after trimming, has no surrounding whitespace, and is at most
  ``max_stream_id_bytes`` UTF-8 bytes: 128 for ids we generate (Codex's
  ``MAX_RELAY_STREAM_ID_BYTES``), 256 accepted inbound (the 0.133 executor accepts 200);
* exactly one ``body`` member is set;
* ``data``: non-empty ``payload`` and ``0 <= segment_index < segment_count <=
  max_segment_count``. Codex peers only ever send ``0/1``; a legacy stream enforces that
  itself, because segmentation is legal between our own endpoints;
* ``reset``: ``reason`` non-empty and at most 256 UTF-8 bytes;
* ``handshake``: ``payload`` non-empty;
* ``traceparent`` / ``tracestate``: at most ``max_trace_field_bytes`` each.

Every failure raises :class:`~exec_server.relay.errors.InvalidFrame` with an
:class:`~exec_server.relay.errors.InvalidFrameReason`; nothing else escapes
:func:`decode_frame`, whatever the input bytes.

Frames in memory are :class:`RelayFrame` s: small immutable values with one ``body``
(:class:`DataBody`, :class:`AckBody`, :class:`ResumeBody`, :class:`ResetBody`,
:class:`HeartbeatBody`, :class:`HandshakeBody`, or ``None``), read as ``frame.data.seq``,
``frame.reset.reason``... like the protobuf message they stand for. The generated protobuf
bindings (:mod:`~exec_server.relay.proto.relay_v1_pb2`) are not used on the hot path:

* :func:`encode_frame` writes proto3 by hand, byte-identical to the official runtime's
  ``SerializeToString()``: fields in field-number order, zero scalars and empty
  non-optional strings/bytes omitted, a selected empty oneof member still emitted (so
  ``resume{next_seq: 0}`` is ``3a 00`` and a data frame with ``seq=0`` has no seq field
  at all), ``traceparent``/``tracestate`` emitted whenever they are not ``None``. A data
  frame is one small header plus its payload, joined once (one payload copy).
* :func:`decode_frame` reads canonical encodings directly (each field at most once, in
  increasing field-number order, known fields with their proto wire types, varints of at
  most 32 bits), slicing the payload once. Anything else (unknown, repeated or reordered
  fields, over-long varints, truncation, bad UTF-8...) goes to the official protobuf
  parser, so the result is always exactly what protobuf makes of the bytes (last-one-wins
  scalars, merged submessages, oneof semantics). The tests check both directions against
  the official runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import msgspec

from exec_server.relay.errors import InvalidFrame, InvalidFrameReason
from exec_server.relay.proto import relay_v1_pb2 as _pb

__all__ = [
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
    "body_kind",
    "data_frame",
    "decode_frame",
    "decode_route",
    "encode_frame",
    "heartbeat_frame",
    "peek_stream_id",
    "reset_for_peer",
    "reset_frame",
    "resume_frame",
    "truncate_reason",
    "validate_frame",
]

RELAY_MESSAGE_FRAME_VERSION = 1
"""The only frame version that exists (Codex ``RELAY_MESSAGE_FRAME_VERSION``)."""

U32_MAX = 0xFFFF_FFFF
"""Largest value of a ``uint32`` wire field."""

RELIABLE_CAPABILITY_BIT = 0x1
"""Bit 0 of ``ack_bits``: set by this project's endpoints on every frame while reliable
mode is possible; a genuine ack never sets it, and Codex peers always send 0 (see
:mod:`~exec_server.relay.reliable_stream`)."""

MAX_OUTBOUND_STREAM_ID_BYTES = 128
"""Longest stream id we generate (Codex E3+ ``MAX_RELAY_STREAM_ID_BYTES``)."""

MAX_INBOUND_STREAM_ID_BYTES = 256
"""Longest stream id we accept: lenient, as the 0.133 executor accepts 200-byte ids."""

MAX_RESET_REASON_BYTES = 256
"""Longest reset reason, UTF-8 bytes (Codex ``MAX_RELAY_RESET_REASON_BYTES``)."""

MAX_TRACE_FIELD_BYTES = 512
"""Longest ``traceparent``/``tracestate`` (W3C caps tracestate at 512 characters)."""

DEFAULT_MAX_SEGMENT_COUNT = 4096
"""Most segments one message may have (1 GiB at 256 KiB per segment)."""

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest encoded frame accepted inbound: a legacy Codex peer sends each message as one
unsegmented frame (observed up to ~19.5 MB for a 14 MiB file) and accepts websocket
messages up to 64 MiB, so we do too. Reliable peers send segments far below this."""

BodyKind = Literal["data", "ack_frame", "resume", "reset", "heartbeat", "handshake"]


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Size limits applied by :func:`validate_frame` and :func:`decode_frame`."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_stream_id_bytes: int = MAX_INBOUND_STREAM_ID_BYTES
    max_segment_count: int = DEFAULT_MAX_SEGMENT_COUNT
    max_reset_reason_bytes: int = MAX_RESET_REASON_BYTES
    max_trace_field_bytes: int = MAX_TRACE_FIELD_BYTES


INBOUND_LIMITS = FrameLimits()
"""Limits for frames received from a peer."""

OUTBOUND_LIMITS = FrameLimits(max_stream_id_bytes=MAX_OUTBOUND_STREAM_ID_BYTES)
"""Limits for frames we build: stream ids at most 128 bytes, as newer Codex requires."""


# --------------------------------------------------------------------------- frame model
#
# Integers are proto ``uint32`` values (0 .. U32_MAX); nothing checks that on
# construction, but encode_frame refuses (ValueError) to write one out of range, as the
# protobuf runtime refuses to hold one.


class DataBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayData``: one segment of a message (``message_start_seq = seq - segment_index``)."""

    seq: int = 0
    segment_index: int = 0
    segment_count: int = 0
    payload: bytes = b""
    kind: ClassVar[BodyKind] = "data"


class AckBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayAck``: a standalone acknowledgement (the frame's ``ack``/``ack_bits``)."""

    kind: ClassVar[BodyKind] = "ack_frame"


class ResumeBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayResume``: the sender's next data seq, after (re)attaching."""

    next_seq: int = 0
    kind: ClassVar[BodyKind] = "resume"


class ResetBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayReset``: ends the stream in both directions."""

    reason: str = ""
    kind: ClassVar[BodyKind] = "reset"


class HeartbeatBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayHeartbeat``: liveness; the frame's acks ride along."""

    kind: ClassVar[BodyKind] = "heartbeat"


class HandshakeBody(msgspec.Struct, frozen=True, gc=False):
    """``RelayHandshake``: an opaque handshake message (Noise in later Codex)."""

    payload: bytes = b""
    kind: ClassVar[BodyKind] = "handshake"


FrameBody = DataBody | AckBody | ResumeBody | ResetBody | HeartbeatBody | HandshakeBody
"""One member of the ``body`` oneof."""
_Body = TypeVar("_Body", DataBody, AckBody, ResumeBody, ResetBody, HeartbeatBody, HandshakeBody)


class RelayFrame(msgspec.Struct, frozen=True, gc=False):
    """One ``RelayMessageFrame``, as an immutable value.

    ``body`` is the selected ``body`` member (``None`` when none is); ``traceparent`` and
    ``tracestate`` are ``None`` when absent (proto3 ``optional``). The properties
    ``data``, ``ack_frame``, ``resume``, ``reset``, ``heartbeat`` and ``handshake`` return
    the body when it is of that kind and raise ``AttributeError`` otherwise; check
    :attr:`kind` (or :func:`body_kind`) first.
    """

    version: int = RELAY_MESSAGE_FRAME_VERSION
    stream_id: str = ""
    ack: int = 0
    ack_bits: int = 0
    body: FrameBody | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def kind(self) -> BodyKind | None:
        """Which ``body`` member is set, or ``None``."""
        body = self.body
        return None if body is None else body.kind

    def _body_as(self, cls: type[_Body], wanted: BodyKind) -> _Body:
        body = self.body
        if not isinstance(body, cls):
            raise _wrong_body(self, wanted)
        return body

    @property
    def data(self) -> DataBody:
        return self._body_as(DataBody, "data")

    @property
    def ack_frame(self) -> AckBody:
        return self._body_as(AckBody, "ack_frame")

    @property
    def resume(self) -> ResumeBody:
        return self._body_as(ResumeBody, "resume")

    @property
    def reset(self) -> ResetBody:
        return self._body_as(ResetBody, "reset")

    @property
    def heartbeat(self) -> HeartbeatBody:
        return self._body_as(HeartbeatBody, "heartbeat")

    @property
    def handshake(self) -> HandshakeBody:
        return self._body_as(HandshakeBody, "handshake")


def _wrong_body(frame: RelayFrame, wanted: BodyKind) -> AttributeError:
    return AttributeError(f"relay frame body is {frame.kind or 'not set'}, not {wanted}")


def body_kind(frame: RelayFrame) -> BodyKind | None:
    """Which ``body`` member is set, or ``None``."""
    body = frame.body
    return None if body is None else body.kind


# --------------------------------------------------------------------------- builders


def truncate_reason(reason: str, max_bytes: int = MAX_RESET_REASON_BYTES) -> str:
    """``reason`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary;
    an empty reason becomes ``"reset"`` so the result is always a valid reset reason."""
    encoded = reason.encode()
    if len(encoded) > max_bytes:
        reason = encoded[:max_bytes].decode(errors="ignore")
    return reason or "reset"


def data_frame(
    stream_id: str,
    seq: int,
    payload: bytes,
    *,
    ack: int = 0,
    ack_bits: int = 0,
    segment_index: int = 0,
    segment_count: int = 1,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> RelayFrame:
    """A ``data`` frame; the defaults give Codex's unsegmented ``0/1`` shape."""
    return RelayFrame(
        RELAY_MESSAGE_FRAME_VERSION,
        stream_id,
        ack,
        ack_bits,
        DataBody(seq, segment_index, segment_count, payload),
        traceparent,
        tracestate,
    )


_ACK_BODY = AckBody()
_HEARTBEAT_BODY = HeartbeatBody()


def ack_frame(stream_id: str, *, ack: int, ack_bits: int) -> RelayFrame:
    """A standalone acknowledgement (``ack_frame`` body, state in ``ack``/``ack_bits``)."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, ack, ack_bits, _ACK_BODY)


def resume_frame(stream_id: str, next_seq: int, *, ack: int = 0, ack_bits: int = 0) -> RelayFrame:
    """A ``resume{next_seq}`` frame; ``resume_frame(id, 0)`` is Codex's stream claim."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, ack, ack_bits, ResumeBody(next_seq))


def reset_frame(stream_id: str, reason: str, *, ack: int = 0, ack_bits: int = 0) -> RelayFrame:
    """A ``reset{reason}`` frame; ``reason`` is truncated to 256 bytes if needed."""
    return RelayFrame(
        RELAY_MESSAGE_FRAME_VERSION,
        stream_id,
        ack,
        ack_bits,
        ResetBody(truncate_reason(reason)),
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


def heartbeat_frame(stream_id: str, *, ack: int = 0, ack_bits: int = 0) -> RelayFrame:
    """A ``heartbeat`` frame (liveness; it also carries the current acks)."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, ack, ack_bits, _HEARTBEAT_BODY)


# --------------------------------------------------------------------------- validation


def validate_frame(frame: RelayFrame, limits: FrameLimits = INBOUND_LIMITS) -> None:
    """Check the rules in the module docstring; raise :class:`InvalidFrame` on the first miss."""
    if frame.version != RELAY_MESSAGE_FRAME_VERSION:
        raise InvalidFrame(
            InvalidFrameReason.BAD_VERSION,
            f"unsupported relay message frame version {frame.version}",
        )
    stream_id = frame.stream_id
    stripped = stream_id.strip()
    if not stripped:
        raise InvalidFrame(
            InvalidFrameReason.MISSING_STREAM_ID, "relay message frame is missing stream_id"
        )
    if stripped != stream_id:
        raise InvalidFrame(
            InvalidFrameReason.NON_CANONICAL_STREAM_ID,
            "relay stream_id has surrounding whitespace",
        )
    # len(str) <= len(utf-8) <= 4 * len(str): skip the encode in the common short case.
    max_id = limits.max_stream_id_bytes
    if len(stream_id) * 4 > max_id and len(stream_id.encode()) > max_id:
        raise InvalidFrame(
            InvalidFrameReason.STREAM_ID_TOO_LONG,
            f"relay stream_id exceeds {max_id} bytes",
        )
    body = frame.body
    if isinstance(body, DataBody):
        if not body.payload:
            raise InvalidFrame(
                InvalidFrameReason.EMPTY_PAYLOAD, "relay data frame has an empty payload"
            )
        if not 0 <= body.segment_index < body.segment_count <= limits.max_segment_count:
            raise InvalidFrame(
                InvalidFrameReason.BAD_SEGMENT,
                f"segment {body.segment_index}/{body.segment_count} is outside "
                f"0 <= index < count <= {limits.max_segment_count}",
            )
    elif body is None:
        raise InvalidFrame(InvalidFrameReason.MISSING_BODY, "relay message frame is missing body")
    elif isinstance(body, ResetBody):
        reason = body.reason
        if not reason:
            raise InvalidFrame(
                InvalidFrameReason.EMPTY_RESET_REASON, "relay reset frame has no reason"
            )
        max_reason = limits.max_reset_reason_bytes
        if len(reason) * 4 > max_reason and len(reason.encode()) > max_reason:
            raise InvalidFrame(
                InvalidFrameReason.RESET_REASON_TOO_LONG,
                f"reset reason exceeds {max_reason} bytes",
            )
    elif isinstance(body, HandshakeBody) and not body.payload:
        raise InvalidFrame(
            InvalidFrameReason.EMPTY_HANDSHAKE, "relay handshake frame has no payload"
        )
    if frame.traceparent is not None:
        _check_trace_field("traceparent", frame.traceparent, limits.max_trace_field_bytes)
    if frame.tracestate is not None:
        _check_trace_field("tracestate", frame.tracestate, limits.max_trace_field_bytes)


def _check_trace_field(name: str, value: str, max_bytes: int) -> None:
    # len(str) <= len(utf-8) <= 4 * len(str): skip the encode in the common case.
    if len(value) * 4 > max_bytes and len(value.encode()) > max_bytes:
        raise InvalidFrame(
            InvalidFrameReason.TRACE_CONTEXT_TOO_LONG, f"{name} exceeds {max_bytes} bytes"
        )


# --------------------------------------------------------------------------- encoding

_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))
_ACK_BITS_FLAG = b"\x20\x01"  # ack_bits = 1: the capability flag alone
_ONE_SEGMENT = b"\x18\x01"  # data.segment_count = 1
_MAX_CACHED_PREFIXES = 4096
_prefixes: dict[str, bytes] = {}  # stream_id -> encoded version 1 + stream_id


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
        seq, index, count = body.seq, body.segment_index, body.segment_count
        inner = _uint_field(0x08, seq) if seq else b""
        if index:
            inner += _uint_field(0x10, index)
        if count:
            inner += _ONE_SEGMENT if count == 1 else _uint_field(0x18, count)
        payload = body.payload
        size = len(payload)
        if size:
            inner += _uint_field(0x22, size)
        head += _uint_field(0x2A, len(inner) + size) + inner
        # The one copy of the payload.
        return b"".join((head, payload, tail)) if tail else head + payload
    if isinstance(body, AckBody):
        head += b"\x32\x00"
    elif isinstance(body, ResumeBody):
        head += (
            _length_delimited(b"\x3a", b"\x08" + _varint(body.next_seq))
            if body.next_seq
            else b"\x3a\x00"
        )
    elif isinstance(body, ResetBody):
        reason = body.reason.encode()
        head += (
            _length_delimited(b"\x42", _length_delimited(b"\x0a", reason))
            if reason
            else b"\x42\x00"
        )
    elif isinstance(body, HeartbeatBody):
        head += b"\x4a\x00"
    elif isinstance(body, HandshakeBody):
        payload = body.payload
        head += (
            _length_delimited(b"\x52", _length_delimited(b"\x0a", payload))
            if payload
            else b"\x52\x00"
        )
    return head + tail if tail else head


# --------------------------------------------------------------------------- decoding


class _NotCanonical(Exception):
    """Internal: the fast decoder hands the bytes to the protobuf parser."""


def _read_u32(data: bytes, pos: int) -> tuple[int, int]:
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
    body: FrameBody | None = None
    traceparent: str | None = None
    tracestate: str | None = None
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
    if tag == 0x2A:  # data
        size, pos = _read_u32(data, pos + 1)
        stop = pos + size
        if stop > end:
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
        body = DataBody(seq, index, count, payload)
        tag = data[pos] if pos < end else 0
    elif 0x32 <= tag <= 0x52 and tag & 7 == 2:  # fields 6..10, length-delimited
        body, pos = _decode_control_body(data, pos, tag)
        tag = data[pos] if pos < end else 0
    if tag == 0x5A:  # traceparent
        traceparent, pos = _read_str(data, pos + 1, end)
        tag = data[pos] if pos < end else 0
    if tag == 0x62:  # tracestate
        tracestate, pos = _read_str(data, pos + 1, end)
    if pos != end:
        raise _NotCanonical
    return RelayFrame(version, stream_id, ack, ack_bits, body, traceparent, tracestate)


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
        body = _ACK_BODY
    else:  # 0x4A
        body = _HEARTBEAT_BODY
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
        body = _ACK_BODY
    elif kind == "resume":
        body = ResumeBody(message.resume.next_seq)
    elif kind == "reset":
        body = ResetBody(message.reset.reason)
    elif kind == "heartbeat":
        body = _HEARTBEAT_BODY
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


def peek_stream_id(data: bytes) -> str | None:
    """``stream_id`` (field 2) of an encoded frame, or ``None``, without decoding it.

    Walks the protobuf fields and stops at field 2, which follows ``version``: a
    handful of bytes per frame and no payload copy. For forwarders that only route;
    it does not validate the frame (use :func:`decode_frame` for that).
    """
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag, pos = _varint_any(data, pos)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint_any(data, pos)
            elif wire == 2:
                length, pos = _varint_any(data, pos)
                if field_no == 2:
                    return data[pos : pos + length].decode()
                pos += length
            elif wire == 5:
                pos += 4
            elif wire == 1:
                pos += 8
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _varint_any(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")
