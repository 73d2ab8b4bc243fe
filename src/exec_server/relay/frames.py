"""The ``codex.exec_server.relay.v1.RelayMessageFrame`` model and the rules every frame obeys.

Frames in memory are :class:`RelayFrame` s: small immutable values with one ``body``
(:class:`DataBody`, :class:`AckBody`, :class:`ResumeBody`, :class:`ResetBody`,
:class:`HeartbeatBody`, :class:`HandshakeBody`, or ``None``), read as ``frame.data.seq``,
``frame.reset.reason``... like the protobuf message they stand for. The builders
(:func:`data_frame`, :func:`reset_frame`...) make well-formed frames.

:func:`validate_frame` checks the rules every frame must satisfy, whichever side it
comes from (Codex spec section 4.2, plus this project's segmentation):

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
:class:`~exec_server.relay.errors.InvalidFrameReason`. The wire codec is
:mod:`~exec_server.relay.frame_codec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import msgspec

from exec_server.relay.errors import InvalidFrame, InvalidFrameReason

__all__ = [
    "ACK_BODY",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_SEGMENT_COUNT",
    "HEARTBEAT_BODY",
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
    "heartbeat_frame",
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
    ``data``, ``resume``, ``reset`` and ``handshake`` return the body when it is of that
    kind and raise ``AttributeError`` otherwise; check :attr:`kind` first.
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
    def resume(self) -> ResumeBody:
        return self._body_as(ResumeBody, "resume")

    @property
    def reset(self) -> ResetBody:
        return self._body_as(ResetBody, "reset")

    @property
    def handshake(self) -> HandshakeBody:
        return self._body_as(HandshakeBody, "handshake")


def _wrong_body(frame: RelayFrame, wanted: BodyKind) -> AttributeError:
    return AttributeError(f"relay frame body is {frame.kind or 'not set'}, not {wanted}")


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


ACK_BODY = AckBody()
"""The one ``ack_frame`` body (it has no fields)."""
HEARTBEAT_BODY = HeartbeatBody()
"""The one ``heartbeat`` body (it has no fields)."""


def ack_frame(stream_id: str, *, ack: int, ack_bits: int) -> RelayFrame:
    """A standalone acknowledgement (``ack_frame`` body, state in ``ack``/``ack_bits``)."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, ack, ack_bits, ACK_BODY)


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


def heartbeat_frame(stream_id: str, *, ack: int = 0, ack_bits: int = 0) -> RelayFrame:
    """A ``heartbeat`` frame (liveness; it also carries the current acks)."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, ack, ack_bits, HEARTBEAT_BODY)


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
