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

Encoding is proto3: zero scalars are omitted and a selected empty oneof member is still
emitted, so ``resume{next_seq: 0}`` is ``3a 00`` and a data frame with ``seq=0`` has no seq
field at all. The builders below produce exactly Codex's bytes for Codex-shaped frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exec_server.relay.errors import InvalidFrame, InvalidFrameReason
from exec_server.relay.proto.relay_v1_pb2 import (
    RelayAck,
    RelayData,
    RelayHeartbeat,
    RelayMessageFrame,
    RelayReset,
    RelayResume,
)

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
    "U32_MAX",
    "BodyKind",
    "FrameLimits",
    "RelayMessageFrame",
    "ack_frame",
    "body_kind",
    "data_frame",
    "decode_frame",
    "encode_frame",
    "heartbeat_frame",
    "peek_stream_id",
    "reset_frame",
    "resume_frame",
    "truncate_reason",
    "validate_frame",
]

RELAY_MESSAGE_FRAME_VERSION = 1
"""The only frame version that exists (Codex ``RELAY_MESSAGE_FRAME_VERSION``)."""

U32_MAX = 0xFFFF_FFFF
"""Largest value of a ``uint32`` wire field."""

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


def body_kind(frame: RelayMessageFrame) -> BodyKind | None:
    """Which ``body`` member is set, or ``None``."""
    kind: BodyKind | None = frame.WhichOneof("body")
    return kind


def decode_frame(
    data: bytes | bytearray | memoryview, limits: FrameLimits = INBOUND_LIMITS
) -> RelayMessageFrame:
    """Decode and validate one binary websocket message.

    Raises :class:`InvalidFrame` (and nothing else) when the bytes are oversize, are not a
    ``RelayMessageFrame`` or fail :func:`validate_frame`.
    """
    if len(data) > limits.max_frame_bytes:
        raise InvalidFrame(
            InvalidFrameReason.OVERSIZE,
            f"frame of {len(data)} bytes exceeds {limits.max_frame_bytes} bytes",
        )
    frame = RelayMessageFrame()
    try:
        frame.ParseFromString(bytes(data) if not isinstance(data, bytes) else data)
    except Exception as exc:  # the decoder's failure modes vary by backend; all mean one thing
        raise InvalidFrame(
            InvalidFrameReason.UNDECODABLE, f"not a RelayMessageFrame: {exc}"
        ) from None
    validate_frame(frame, limits)
    return frame


def validate_frame(frame: RelayMessageFrame, limits: FrameLimits = INBOUND_LIMITS) -> None:
    """Check the rules in the module docstring; raise :class:`InvalidFrame` on the first miss."""
    if frame.version != RELAY_MESSAGE_FRAME_VERSION:
        raise InvalidFrame(
            InvalidFrameReason.BAD_VERSION,
            f"unsupported relay message frame version {frame.version}",
        )
    _check_stream_id(frame.stream_id, limits.max_stream_id_bytes)
    kind = body_kind(frame)
    if kind is None:
        raise InvalidFrame(InvalidFrameReason.MISSING_BODY, "relay message frame is missing body")
    if kind == "data":
        data = frame.data
        if not data.payload:
            raise InvalidFrame(
                InvalidFrameReason.EMPTY_PAYLOAD, "relay data frame has an empty payload"
            )
        if not 0 <= data.segment_index < data.segment_count <= limits.max_segment_count:
            raise InvalidFrame(
                InvalidFrameReason.BAD_SEGMENT,
                f"segment {data.segment_index}/{data.segment_count} is outside "
                f"0 <= index < count <= {limits.max_segment_count}",
            )
    elif kind == "reset":
        reason = frame.reset.reason
        if not reason:
            raise InvalidFrame(
                InvalidFrameReason.EMPTY_RESET_REASON, "relay reset frame has no reason"
            )
        if len(reason.encode()) > limits.max_reset_reason_bytes:
            raise InvalidFrame(
                InvalidFrameReason.RESET_REASON_TOO_LONG,
                f"reset reason exceeds {limits.max_reset_reason_bytes} bytes",
            )
    elif kind == "handshake" and not frame.handshake.payload:
        raise InvalidFrame(
            InvalidFrameReason.EMPTY_HANDSHAKE, "relay handshake frame has no payload"
        )
    for field in ("traceparent", "tracestate"):
        if (
            frame.HasField(field)
            and len(getattr(frame, field).encode()) > limits.max_trace_field_bytes
        ):
            raise InvalidFrame(
                InvalidFrameReason.TRACE_CONTEXT_TOO_LONG,
                f"{field} exceeds {limits.max_trace_field_bytes} bytes",
            )


def _check_stream_id(stream_id: str, max_bytes: int) -> None:
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
    if len(stream_id) * 4 > max_bytes and len(stream_id.encode()) > max_bytes:
        raise InvalidFrame(
            InvalidFrameReason.STREAM_ID_TOO_LONG,
            f"relay stream_id exceeds {max_bytes} bytes",
        )


def encode_frame(frame: RelayMessageFrame) -> bytes:
    """Serialize a frame. No validation: build frames with the helpers below, or call
    :func:`validate_frame` with :data:`OUTBOUND_LIMITS` first when the fields come from
    elsewhere."""
    data: bytes = frame.SerializeToString()
    return data


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
) -> RelayMessageFrame:
    """A ``data`` frame; the defaults give Codex's unsegmented ``0/1`` shape."""
    return RelayMessageFrame(
        version=RELAY_MESSAGE_FRAME_VERSION,
        stream_id=stream_id,
        ack=ack,
        ack_bits=ack_bits,
        data=RelayData(
            seq=seq, segment_index=segment_index, segment_count=segment_count, payload=payload
        ),
        traceparent=traceparent,
        tracestate=tracestate,
    )


def ack_frame(stream_id: str, *, ack: int, ack_bits: int) -> RelayMessageFrame:
    """A standalone acknowledgement (``ack_frame`` body, state in ``ack``/``ack_bits``)."""
    return RelayMessageFrame(
        version=RELAY_MESSAGE_FRAME_VERSION,
        stream_id=stream_id,
        ack=ack,
        ack_bits=ack_bits,
        ack_frame=RelayAck(),
    )


def resume_frame(
    stream_id: str, next_seq: int, *, ack: int = 0, ack_bits: int = 0
) -> RelayMessageFrame:
    """A ``resume{next_seq}`` frame; ``resume_frame(id, 0)`` is Codex's stream claim."""
    return RelayMessageFrame(
        version=RELAY_MESSAGE_FRAME_VERSION,
        stream_id=stream_id,
        ack=ack,
        ack_bits=ack_bits,
        resume=RelayResume(next_seq=next_seq),
    )


def reset_frame(
    stream_id: str, reason: str, *, ack: int = 0, ack_bits: int = 0
) -> RelayMessageFrame:
    """A ``reset{reason}`` frame; ``reason`` is truncated to 256 bytes if needed."""
    return RelayMessageFrame(
        version=RELAY_MESSAGE_FRAME_VERSION,
        stream_id=stream_id,
        ack=ack,
        ack_bits=ack_bits,
        reset=RelayReset(reason=truncate_reason(reason)),
    )


def heartbeat_frame(stream_id: str, *, ack: int = 0, ack_bits: int = 0) -> RelayMessageFrame:
    """A ``heartbeat`` frame (liveness; it also carries the current acks)."""
    return RelayMessageFrame(
        version=RELAY_MESSAGE_FRAME_VERSION,
        stream_id=stream_id,
        ack=ack,
        ack_bits=ack_bits,
        heartbeat=RelayHeartbeat(),
    )


def peek_stream_id(data: bytes) -> str | None:
    """``stream_id`` (field 2) of an encoded frame, or ``None``, without decoding it.

    Walks the protobuf fields and stops at field 2, which follows ``version``: a
    handful of bytes per frame and no payload copy. For forwarders that only route;
    it does not validate the frame (use :func:`decode_frame` for that).
    """
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag, pos = _varint(data, pos)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                length, pos = _varint(data, pos)
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


def _varint(data: bytes, pos: int) -> tuple[int, int]:
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
