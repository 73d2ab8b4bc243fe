"""Limits, counters and sequence arithmetic shared by a reliable stream and its windows.

:class:`ReliableStreamConfig` holds every limit and timing of one stream (the roles are
described in ``docs/relay.md``); :class:`StreamStats` its counters, exported as metrics
and read by the tests; :class:`StreamDropReason` why an inbound frame was ignored.
:func:`seq_to_wire` and :func:`seq_from_wire` map the unbounded logical seqs the windows
use onto the ``uint32`` wire field and back (RFC 1982 serial arithmetic).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from exec_server.relay.frame_codec import U32_MAX

__all__ = [
    "ACK_DELAY_S",
    "ACK_EVERY_SEGMENTS",
    "CLOCK_GRANULARITY_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_RECEIVE_BUFFER_BYTES",
    "DEFAULT_MAX_REORDER_BYTES",
    "DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES",
    "DEFAULT_MAX_SEND_BUFFER_BYTES",
    "DEFAULT_MAX_UNACKED_BYTES",
    "FAST_RETRANSMIT_SACKS",
    "HEARTBEAT_INTERVAL_S",
    "IDLE_TIMEOUT_S",
    "LEGACY_MAX_MESSAGE_BYTES",
    "MAX_UNACKED_SEGMENTS",
    "MAX_WINDOW_SEGMENTS",
    "NEGOTIATION_TIMEOUT_S",
    "REPAIR_RESEND_MIN_S",
    "RESEND_INITIAL_S",
    "RESEND_MAX_S",
    "RESEND_MIN_S",
    "SEQ_SPACE",
    "PeerProtocolViolation",
    "ReliableStreamConfig",
    "StreamDropReason",
    "StreamStats",
    "seq_from_wire",
    "seq_to_wire",
]

SEQ_SPACE = U32_MAX
"""Number of distinct non-zero wire seqs (``1 .. 2**32 - 1``); 0 is reserved."""

MAX_UNACKED_SEGMENTS = 32
"""Segments ``ack`` + ``ack_bits`` can describe (Codex ``MAX_UNACKED_SEGMENTS``): the span
of selective acknowledgement."""

MAX_WINDOW_SEGMENTS = 256
"""Hard cap on segments in flight and the receive (reorder) window. The window is
really counted in bytes (``max_unacked_bytes``); this bounds the bookkeeping when
messages are small."""

DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES = 252 * 1024
"""Largest segment payload: a full frame (payload, 256-byte stream id, trace context) fits
a 256 KiB websocket message, the limit Codex uses for relay sockets."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message in reliable mode (Codex ``MAX_NOISE_JSONRPC_MESSAGE_LEN``)."""

LEGACY_MAX_MESSAGE_BYTES = 16 * 1024 * 1024 - 4 * 1024
"""Largest message sent to a Codex peer: one frame must stay under tungstenite's 16 MiB
frame limit, over which the 0.133 executor drops the whole connection."""

DEFAULT_MAX_UNACKED_BYTES = 2 * 1024 * 1024
"""Bytes in flight (sent, not cumulatively acked) per stream (Codex ``MAX_UNACKED_BYTES``)."""

DEFAULT_MAX_SEND_BUFFER_BYTES = 8 * 1024 * 1024
"""Bytes queued or in flight before ``send_message`` pushes back."""

DEFAULT_MAX_REORDER_BYTES = 2 * 1024 * 1024
"""Out-of-order segment bytes held by the receiver; beyond it segments are dropped unacked."""

DEFAULT_MAX_RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024
"""Undelivered message bytes at which the receiver stops accepting new data."""

ACK_DELAY_S = 0.02
"""Longest wait before a standalone ack, so several segments share one ``ack_frame``."""

ACK_EVERY_SEGMENTS = 8
"""Ack at once after this many in-order segments arrived unacknowledged."""

FAST_RETRANSMIT_SACKS = 3
"""Selectively acknowledged later segments that mark an unacknowledged one as lost (TCP's
DupThresh): enough to ride out a little reordering without waiting for the RTO."""

REPAIR_RESEND_MIN_S = 0.02
"""Shortest wait before a lost fast retransmission is sent once more (see
:attr:`~exec_server.relay.segment.RttEstimator.repair_s`): about the ack delay."""

RESEND_INITIAL_S = 0.5
"""RTO before any RTT sample (Codex ``RESEND_AFTER`` is a fixed 500 ms)."""

RESEND_MIN_S = 0.2
"""Lower bound of the RTO."""

RESEND_MAX_S = 10.0
"""Upper bound of the RTO, exponential backoff included."""

CLOCK_GRANULARITY_S = 0.001
"""The ``G`` of RFC 6298: smallest variance term of the RTO."""

HEARTBEAT_INTERVAL_S = 15.0
"""A reliable stream that sent nothing for this long sends a ``heartbeat``."""

IDLE_TIMEOUT_S = 60.0
"""A reliable stream that heard nothing for this long resets itself (``idle_timeout``)."""

NEGOTIATION_TIMEOUT_S = 10.0
"""A probing initiator that heard nothing for this long treats the peer as legacy."""


class StreamDropReason(StrEnum):
    """Why a stream ignored an inbound frame (keys of :attr:`StreamStats.dropped`)."""

    CLOSED = "closed"
    """The stream had already ended."""
    MODE_MISMATCH = "mode_mismatch"
    """The frame's capability flag contradicts the resolved peer mode."""
    LEGACY_SEGMENTED = "legacy_segmented"
    """A legacy peer sent a segment other than ``0/1`` (Codex drops these too)."""
    LEGACY_CONTROL = "legacy_control"
    """``ack_frame``/``resume``/``heartbeat``/``handshake`` on a legacy stream: ignored."""
    BAD_SEQ = "bad_seq"
    """A reliable data frame with the reserved seq 0."""
    BEYOND_WINDOW = "beyond_window"
    """A segment 32 or more seqs ahead of the next expected one."""
    REORDER_BUFFER_FULL = "reorder_buffer_full"
    """Out-of-order segments already hold ``max_reorder_bytes``."""
    RECEIVE_BUFFER_FULL = "receive_buffer_full"
    """Undelivered messages hold ``max_receive_buffer_bytes``: the owner is not reading."""
    HANDSHAKE_UNSUPPORTED = "handshake_unsupported"
    """A ``handshake`` frame: Noise is not implemented here."""


@dataclass(frozen=True, slots=True)
class ReliableStreamConfig:
    """Limits and timings of one stream; ``docs/relay.md`` describes their roles.

    Both endpoints should use the same window sizes; a receiver with smaller buffers than
    its peer's window stays correct but drops and forces resends. ``initial_seq`` exists to
    test wraparound: both endpoints must agree on it, and it must stay 1 in production.
    """

    max_segment_payload_bytes: int = DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    legacy_max_message_bytes: int = LEGACY_MAX_MESSAGE_BYTES
    max_unacked_segments: int = MAX_WINDOW_SEGMENTS
    max_unacked_bytes: int = DEFAULT_MAX_UNACKED_BYTES
    max_send_buffer_bytes: int = DEFAULT_MAX_SEND_BUFFER_BYTES
    max_reorder_bytes: int = DEFAULT_MAX_REORDER_BYTES
    max_receive_buffer_bytes: int = DEFAULT_MAX_RECEIVE_BUFFER_BYTES
    ack_delay_s: float = ACK_DELAY_S
    ack_every_segments: int = ACK_EVERY_SEGMENTS
    initial_rto_s: float = RESEND_INITIAL_S
    min_rto_s: float = RESEND_MIN_S
    max_rto_s: float = RESEND_MAX_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    negotiation_timeout_s: float = NEGOTIATION_TIMEOUT_S
    allow_reliable: bool = True
    initial_seq: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.max_unacked_segments <= MAX_WINDOW_SEGMENTS:
            raise ValueError(f"max_unacked_segments must be in 1..{MAX_WINDOW_SEGMENTS}")
        positive = (
            "max_segment_payload_bytes",
            "max_message_bytes",
            "legacy_max_message_bytes",
            "max_unacked_bytes",
            "max_send_buffer_bytes",
            "max_reorder_bytes",
            "max_receive_buffer_bytes",
            "ack_every_segments",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_segment_payload_bytes > self.max_unacked_bytes:
            raise ValueError("max_segment_payload_bytes must not exceed max_unacked_bytes")
        if not 0 < self.min_rto_s <= self.initial_rto_s <= self.max_rto_s:
            raise ValueError("need 0 < min_rto_s <= initial_rto_s <= max_rto_s")
        if self.ack_delay_s < 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("ack_delay_s must be >= 0 and heartbeat_interval_s > 0")
        if self.idle_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("idle_timeout_s must exceed heartbeat_interval_s")
        if self.negotiation_timeout_s <= 0:
            raise ValueError("negotiation_timeout_s must be positive")
        if not 1 <= self.initial_seq <= SEQ_SPACE:
            raise ValueError(f"initial_seq must be in 1..{SEQ_SPACE}")


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream, for metrics and tests."""

    messages_sent: int = 0
    messages_received: int = 0
    data_frames_sent: int = 0
    """Data frames written, retransmissions included."""
    retransmissions: int = 0
    """Data frames resent, for any reason (RTO, fast retransmit, resume)."""
    fast_retransmits: int = 0
    """Segments resent before their RTO: marked lost by selective acks, or a fast
    retransmission that was lost too."""
    ack_frames_sent: int = 0
    heartbeats_sent: int = 0
    resumes_sent: int = 0
    duplicates_received: int = 0
    rto_expiries: int = 0
    rtt_samples: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


_HALF_SEQ_SPACE = SEQ_SPACE // 2


def seq_to_wire(seq: int) -> int:
    """Wire form of logical seq ``seq``: ``1 .. 2**32 - 1`` cyclically; 0 stays 0."""
    return 0 if seq <= 0 else (seq - 1) % SEQ_SPACE + 1


def seq_from_wire(wire: int, reference: int) -> int:
    """The logical seq nearest ``reference`` (>= 1) whose wire form is ``wire`` (>= 1).

    Correct while the true value is within ``2**31`` of ``reference``; the relay keeps every
    live seq within a few dozen of it. May return a value < 1 for a stale seq.
    """
    # seq_to_wire(reference), inlined: this runs for every inbound data frame and ack.
    delta = (wire - (0 if reference <= 0 else (reference - 1) % SEQ_SPACE + 1)) % SEQ_SPACE
    if delta > _HALF_SEQ_SPACE:
        delta -= SEQ_SPACE
    return reference + delta


class PeerProtocolViolation(Exception):
    """The peer broke the protocol; the stream resets itself with ``reason``.

    Raised by the windows (and by a receive transform that rejects a segment) while a
    frame is processed; :class:`~exec_server.relay.reliable_stream.ReliableStream` catches
    it, so it never reaches the stream's owner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
