"""The relay layer's exception hierarchy.

Everything the sans-IO relay raises derives from :class:`RelayError`. Inbound problems
never escape as exceptions from the multiplexer: an invalid frame is dropped and counted
by :class:`InvalidFrame` reason, and a peer's protocol violation resets only its stream.
The exceptions below reach callers only from calls they make themselves (decoding a frame
directly, sending a message).
"""

from __future__ import annotations

from enum import StrEnum


class RelayError(Exception):
    """Base class of every error raised by :mod:`exec_server.relay`."""


class InvalidFrameReason(StrEnum):
    """Why a relay frame was rejected; stable strings, usable as metric labels."""

    UNDECODABLE = "undecodable"
    """The bytes are not a protobuf ``RelayMessageFrame`` (includes invalid UTF-8 strings)."""
    OVERSIZE = "oversize"
    """The encoded frame is longer than the configured maximum frame size."""
    BAD_VERSION = "bad_version"
    """``version`` is not 1 (``RELAY_MESSAGE_FRAME_VERSION``)."""
    MISSING_STREAM_ID = "missing_stream_id"
    """``stream_id`` is empty or whitespace only."""
    NON_CANONICAL_STREAM_ID = "non_canonical_stream_id"
    """``stream_id`` has leading or trailing whitespace."""
    STREAM_ID_TOO_LONG = "stream_id_too_long"
    """``stream_id`` is longer than the configured maximum (UTF-8 bytes)."""
    MISSING_BODY = "missing_body"
    """No member of the ``body`` oneof is set."""
    BAD_SEGMENT = "bad_segment"
    """``data`` violates ``0 <= segment_index < segment_count <= max_segment_count``."""
    EMPTY_PAYLOAD = "empty_payload"
    """``data.payload`` is empty."""
    EMPTY_RESET_REASON = "empty_reset_reason"
    """``reset.reason`` is empty."""
    RESET_REASON_TOO_LONG = "reset_reason_too_long"
    """``reset.reason`` is longer than 256 UTF-8 bytes."""
    EMPTY_HANDSHAKE = "empty_handshake"
    """``handshake.payload`` is empty."""
    TRACE_CONTEXT_TOO_LONG = "trace_context_too_long"
    """``traceparent`` or ``tracestate`` is longer than the configured maximum."""


class InvalidFrame(RelayError):
    """A relay frame that cannot be decoded or fails validation.

    ``reason`` is machine-readable (drop-and-count by it); ``detail`` is for logs and
    never contains payload bytes.
    """

    def __init__(self, reason: InvalidFrameReason, detail: str) -> None:
        super().__init__(f"invalid relay frame ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


class SendBlocked(RelayError):
    """The stream cannot take this message now; retry once ``can_send`` says so.

    Raised when the send buffer is full, and while the peer's capabilities are still
    being negotiated for a message that would need segmentation. This is backpressure,
    not failure: acknowledgements, negotiation or a drained frame queue lift it.
    """


class MessageTooLarge(RelayError, ValueError):
    """The message can never be sent on this stream (size over the mode's limit)."""

    def __init__(self, size: int, limit: int, detail: str) -> None:
        super().__init__(f"relay message of {size} bytes exceeds {limit} bytes: {detail}")
        self.size = size
        self.limit = limit


class StreamClosed(RelayError):
    """The stream was reset (by either side) or timed out; it accepts nothing more."""

    def __init__(self, stream_id: str, reason: str | None) -> None:
        super().__init__(f"relay stream {stream_id!r} is closed: {reason or 'closed'}")
        self.stream_id = stream_id
        self.reason = reason
