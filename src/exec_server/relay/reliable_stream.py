"""Sans-IO reliable relay stream: one virtual stream, both directions, no clock, no sockets.

A :class:`ReliableStream` turns whole messages into relay frames
(:class:`~exec_server.relay.frame_codec.RelayFrame`) and back. The
owner feeds it frames (:meth:`~ReliableStream.receive_frame`) and timer expiries
(:meth:`~ReliableStream.handle_timer`), passing the current time as ``now`` (seconds, any
monotonic origin); it collects frames to write (:meth:`~ReliableStream.frames_to_send`) and
events (:meth:`~ReliableStream.next_event`), and asks when to wake up
(:meth:`~ReliableStream.get_timer`). Time is never read from a clock, so tests drive it
deterministically (the aioquic pattern).

Peer modes and negotiation
==========================

A stream talks either to this project's relay (``RELIABLE``) or to a Codex 0.133/0.137
endpoint (``LEGACY``). Codex peers set ``ack = 0`` and ``ack_bits = 0`` on every frame,
never send ``ack_frame``/``heartbeat``, never segment, ignore ``ack``/``ack_bits``/``seq``/
``resume``/``heartbeat`` from us, and execute a re-sent request twice. So:

* **The capability flag.** In ``ack_bits``, bit *i* acknowledges seq ``ack + 1 + i``. Bit 0
  therefore names seq ``ack + 1``, the receiver's next expected seq, which by definition has
  not arrived (had it arrived, ``ack`` would cover it): a real acknowledgement never sets
  bit 0. Our endpoints set it on **every** frame they send while reliable mode is possible
  (``RELIABLE_CAPABILITY_BIT``). Codex ignores ``ack_bits`` entirely and always sends 0, so
  the flag is invisible to a Codex peer and a Codex peer can never look like ours. No extra
  frame and no extra round trip: every frame describes its sender, so negotiation survives
  any loss, and the environment can still create streams lazily on the first data frame.
* **Resolution.** A stream starts ``PROBING`` (initiator, i.e. the harness side) and resolves
  on the first frame it receives from the peer: flag set means ``RELIABLE``, flag clear
  means ``LEGACY``. The acceptor (environment side) is created by the peer's first frame,
  so it resolves before it sends anything. Our acceptor acks that first frame at once, so
  our initiator resolves within one round trip. A Codex executor answers the harness's
  first request (``initialize``), which resolves ``LEGACY``.
* **While PROBING** the initiator sends only what a Codex peer accepts: unsegmented data
  frames and the opening ``resume``. It never retransmits data, never sends ``ack_frame`` or
  ``heartbeat``, and does not segment: a message larger than one segment raises
  :class:`~exec_server.relay.errors.SendBlocked` until negotiation ends. Sent data is
  retained (within the send window), so it becomes retransmittable if the peer turns out
  reliable. The (flagged) opening ``resume`` is repeated on the RTO schedule until the peer
  answers: our acceptor creates the stream on a flagged ``resume`` and acks it at once, so
  losing the first data frames cannot stall negotiation, while a Codex peer ignores every
  ``resume``. Nothing heard for ``negotiation_timeout_s`` resolves ``LEGACY``; a flagged
  frame arriving after that is a conflict and resets the stream (``negotiation_conflict``),
  since the data sent meanwhile was not retained.
* **LEGACY** behaves exactly like Codex: outbound data frames are ``0/1`` segments with
  ``ack = 0``, ``ack_bits = 0`` and a per-stream ``seq`` counter (from 0 on the
  acceptor side, wrapping at u32; Codex peers ignore it); nothing is retained, retransmitted
  or acknowledged; no ``ack_frame``/``heartbeat``/``resume`` is sent (except the initiator's
  opening ``resume``). A message larger than ``legacy_max_message_bytes`` (default
  16 MiB - 4 KiB, under the 16 MiB single-frame limit of Codex's websocket) raises
  :class:`~exec_server.relay.errors.MessageTooLarge` instead of producing a frame the peer
  would drop along with its whole connection. Inbound data is delivered in arrival order,
  duplicates included (as Codex does); a segmented inbound frame is dropped and counted.
  A legacy stream cannot survive a physical disconnect: it ends with reason
  ``connection_lost``. A probing one survives it and repeats its claim.
  ``allow_reliable=False`` pins a stream to LEGACY from the start.

Sequence space (reliable mode)
==============================

* Segment seqs are per direction and start at **1**; seq 0 is reserved, so ``ack = 0``
  unambiguously means "nothing received yet" (as in later Codex, PR #31457). A legacy peer
  ignores seqs, so starting at 1 while probing costs nothing.
* Internally seqs are unbounded integers. On the wire they cycle through ``1 .. 2**32 - 1``
  (:func:`seq_to_wire`), skipping 0, and the receiver maps a wire value back to the logical
  seq nearest its own position (:func:`seq_from_wire`, RFC 1982 serial arithmetic over
  ``2**32 - 1`` values). At most ``MAX_WINDOW_SEGMENTS`` (256) segments are in flight and
  the reorder window is as wide, so every live wire value is within a few hundred of the
  reference and the mapping is unambiguous: streams never run out of sequence numbers.
* ``ack`` is the highest contiguous seq received (wire form; 0 while nothing is); bit *i*
  of ``ack_bits`` (``i >= 1``) selectively acknowledges ``ack + 1 + i``; bit 0 is the
  capability flag. Only the cumulative ack slides the send window; selective acks stop
  retransmission of the segments they name. Segments more than 31 past ``ack`` cannot be
  named selectively: they wait for the cumulative ack (or their RTO).
* A message of ``n`` segments gets consecutive seqs with ``segment_index`` ``0 .. n-1`` and
  ``segment_count = n`` (``message_start_seq = seq - segment_index``). Inbound segments are
  released in seq order; reassembly requires the first segment of a message to have index
  0 and each following one the next index with the same count; a violation, or a message
  over ``max_message_bytes``, is a protocol error that resets the stream.

Reliability machinery
=====================

* **Acks** ride on every outbound frame. When data arrived and nothing is going out, a
  standalone ``ack_frame`` follows after ``ack_delay_s`` (batching), at once after a gap,
  a segment that fills a gap, a duplicate, a resume or every ``ack_every_segments``
  segments.
* **Retransmission** after the RTO: SRTT/RTTVAR as in RFC 6298, samples only from segments
  sent once (Karn), bounded to ``[min_rto_s, max_rto_s]``, doubled per expiry until a valid
  sample arrives. Only segments whose own RTO has elapsed are resent. A segment is sampled
  when it is first acknowledged, selectively or cumulatively: a segment that sat SACKed
  behind a hole would otherwise yield the hole's repair time as its RTT, and under steady
  loss those samples drive the RTO to its maximum.
* **Fast retransmit**: once ``FAST_RETRANSMIT_SACKS`` segments sent after an unacknowledged
  one are selectively acknowledged, it is taken as lost and resent at once, without waiting
  for (or backing off) the RTO (RFC 6675's ``IsLost``). Each segment is resent this way at
  most once. A fast retransmission still unacknowledged after twice the smoothed RTT
  (``REPAIR_RESEND_MIN_S`` at least, the RTO at most) is taken as lost too and resent
  once more without backoff; after that only the RTO applies.
* **Send window**: counted in bytes: at most ``max_unacked_bytes`` in flight, and at most
  ``max_unacked_segments`` segments (256 by default, far past the 32 of the ``ack_bits``
  span, so small messages such as Codex's 8 KiB output chunks fill the byte window too).
  Messages wait in the send buffer beyond that; :meth:`ReliableStream.send_message`
  raises :class:`~exec_server.relay.errors.SendBlocked` once the buffer holds
  ``max_send_buffer_bytes`` (a single message is always admitted into an empty buffer, up
  to ``max_message_bytes``).
* **Receive flow control**: while undelivered messages (events not yet taken with
  :meth:`ReliableStream.next_event`) hold ``max_receive_buffer_bytes`` or more, new data is
  dropped unacknowledged; once the owner drains below half of it, the stream sends
  ``resume`` so the peer resends at once instead of waiting for its RTO.
* **Resume**: after a physical reconnect (:meth:`ReliableStream.on_reconnect`) the stream
  sends ``resume{next_seq}`` (carrying its acks) and resends every unacknowledged segment;
  a peer receiving ``resume`` does the same and acks at once. Duplicates are suppressed by
  seq, so nothing is delivered twice and nothing is lost.
* **Heartbeats**: a reliable stream that sent nothing for ``heartbeat_interval_s`` sends a
  ``heartbeat``; one that heard nothing for ``idle_timeout_s`` (disconnected time
  included) resets itself with reason ``idle_timeout``.
* **Reset** ends both directions at once (``reset{reason}``, reason <= 256 bytes). It is
  terminal whatever its capability flag and the stream's mode: the rendezvous and the
  peer's multiplexer send resets too (:func:`~exec_server.relay.frame_codec.reset_for_peer`).

Memory per stream is bounded by the configuration: send side ``max(max_send_buffer_bytes,
max_message_bytes)``; receive side ``max_reorder_bytes`` (out-of-order segments) +
``max_message_bytes`` (reassembly) + undelivered events, which stop growing at
``max_receive_buffer_bytes`` plus what one in-order segment releases (at most one
reassembled message and the reorder buffer). In LEGACY mode a peer cannot be slowed
down, so undelivered events are bounded only by the owner draining them.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from exec_server.relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from exec_server.relay.events import (
    MessageReceived,
    PeerMode,
    PeerModeResolved,
    PeerResumed,
    StreamEvent,
    StreamReset,
)
from exec_server.relay.frame_codec import (
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    U32_MAX,
    DataBody,
    FrameBody,
    HandshakeBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
    truncate_reason,
)

__all__ = [
    "ACK_DELAY_S",
    "ACK_EVERY_SEGMENTS",
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
    "RELIABLE_CAPABILITY_BIT",
    "REPAIR_RESEND_MIN_S",
    "RESEND_INITIAL_S",
    "RESEND_MAX_S",
    "RESEND_MIN_S",
    "SEQ_SPACE",
    "ReliableStream",
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
``ReliableStream._repair_timeout_s``): about the ack delay."""

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

_MAX_TIMER_QUEUE = 4 * MAX_WINDOW_SEGMENTS
"""Entries a retransmission-deadline queue may hold before it is rebuilt from the window."""


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
    """Limits and timings of one stream; see the module docstring for their roles.

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


@dataclass(slots=True)
class _OutSegment:
    seq: int
    payload: bytes
    index: int
    count: int
    traceparent: str | None
    tracestate: str | None
    sent_at: float | None = None
    transmissions: int = 0
    sacked: bool = False
    resend: bool = False
    fast_retransmitted: bool = False


class _ProtocolViolation(Exception):
    """Internal: the peer broke the protocol; the stream resets with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReliableStream:
    """One relay virtual stream (see the module docstring for the protocol).

    ``initiator`` is true on the side that opens the stream (the harness): it queues the
    opening ``resume`` frame (Codex's stream claim) and negotiates the peer mode. The
    acceptor (environment) side is created for the peer's first frame, which the owner must
    pass to :meth:`receive_frame` right away.

    Frames given to :meth:`receive_frame` must already have passed
    :func:`~exec_server.relay.frame_codec.validate_frame` and belong to this stream; the
    multiplexer guarantees both. No method raises on peer input: violations reset the
    stream and surface as :class:`~exec_server.relay.events.StreamReset`.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        initiator: bool,
        now: float,
        config: ReliableStreamConfig | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.initiator = initiator
        self.config = cfg = config or ReliableStreamConfig()
        self.stats = StreamStats()
        self.on_output_pending: Callable[[ReliableStream], None] | None = None
        """Called (by a multiplexer that owns the stream) when a call other than
        ``receive_frame``/``handle_timer``/``on_reconnect`` gives the stream something to
        send: ``send_message``, ``reset``, or ``next_event`` reopening the receive window."""
        self._mode = PeerMode.PROBING if cfg.allow_reliable else PeerMode.LEGACY
        self._legacy_by_timeout = False
        self._connected = True
        self._closed_reason: str | None = None
        self._pending_reset: str | None = None
        self._pending_resume = initiator
        self._events: deque[StreamEvent] = deque()
        self._undelivered_bytes = 0
        # send side
        self._out: deque[_OutSegment] = deque()
        self._snd_una = cfg.initial_seq
        self._snd_nxt = cfg.initial_seq
        self._next_assign = cfg.initial_seq
        self._legacy_seq = 0
        self._buffered_send_bytes = 0
        self._inflight_bytes = 0
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._backoff = 0
        self._rto = self._repair = 0.0  # rto_s and _repair_timeout_s(), see _update_rto
        self._update_rto()
        # Retransmission deadlines without scanning the send window: every transmission
        # appends (sent_at, seq, transmissions) to the queue of its timeout class (RTO, or
        # the short repair timeout of a first fast retransmission). Entries stay in sent_at
        # order (the queues are rebuilt if the clock goes backwards), and an entry whose
        # segment was acked, SACKed, marked for resend or sent again since is stale and
        # dropped, so the first live entry of a queue holds its earliest deadline.
        self._rto_queue: deque[tuple[float, int, int]] = deque()
        self._repair_queue: deque[tuple[float, int, int]] = deque()
        # False while no segment can have ``resend`` set: _next_frame skips its scan.
        self._maybe_resend = False
        # receive side
        self._rcv_nxt = cfg.initial_seq
        # out-of-order data frames by logical seq (their body is a DataBody)
        self._ooo: dict[int, RelayFrame] = {}
        self._ooo_bytes = 0
        self._reasm_parts: list[bytes] = []
        self._reasm_count = 0
        self._reasm_bytes = 0
        self._reasm_trace: tuple[str | None, str | None] = (None, None)
        self._rx_starved = False
        self._ack_due: float | None = None
        self._unacked_rx_segments = 0
        self._unacked_rx_bytes = 0
        # clocks
        self._last_sent_at = now
        self._last_received_at = now
        self._negotiation_deadline = now + cfg.negotiation_timeout_s
        self._probe_resend_at: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> PeerMode:
        """What is known about the peer (``PROBING`` until its first frame)."""
        return self._mode

    @property
    def is_closed(self) -> bool:
        """True once the stream was reset by either side or timed out."""
        return self._closed_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._closed_reason

    @property
    def is_finished(self) -> bool:
        """Closed, its reset frame (if any) written and every event taken: safe to forget."""
        return self.is_closed and self._pending_reset is None and not self._events

    @property
    def has_events(self) -> bool:
        """True while :meth:`next_event` has something to return."""
        return bool(self._events)

    @property
    def buffered_send_bytes(self) -> int:
        """Message bytes queued or in flight (not yet cumulatively acknowledged)."""
        return self._buffered_send_bytes

    @property
    def inflight_bytes(self) -> int:
        """Bytes sent and not yet cumulatively acknowledged (bounded by the send window)."""
        return self._inflight_bytes

    @property
    def unacked_segments(self) -> int:
        """Segments sent and not yet cumulatively acknowledged."""
        return self._snd_nxt - self._snd_una if self._mode is not PeerMode.LEGACY else 0

    @property
    def reorder_buffer_bytes(self) -> int:
        return self._ooo_bytes

    @property
    def reorder_buffer_segments(self) -> int:
        return len(self._ooo)

    @property
    def reassembly_bytes(self) -> int:
        return self._reasm_bytes

    @property
    def undelivered_bytes(self) -> int:
        """Payload bytes of messages waiting in :meth:`next_event`."""
        return self._undelivered_bytes

    @property
    def rto_s(self) -> float:
        """The current retransmission timeout, backoff included."""
        return self._rto

    def _update_rto(self) -> None:
        """Recompute ``rto_s`` and ``_repair_timeout_s()``; call after every change of
        ``_srtt``, ``_rttvar`` or ``_backoff``."""
        cfg = self.config
        srtt = self._srtt
        if srtt is None:
            base = cfg.initial_rto_s
        else:
            base = srtt + max(CLOCK_GRANULARITY_S, 4 * self._rttvar)
        base = min(max(base, cfg.min_rto_s), cfg.max_rto_s)
        self._rto = rto = float(min(base * (1 << self._backoff), cfg.max_rto_s))
        smoothed = cfg.initial_rto_s if srtt is None else srtt
        self._repair = min(rto, max(REPAIR_RESEND_MIN_S, 2 * smoothed))

    def _set_backoff(self, backoff: int) -> None:
        if backoff != self._backoff:
            self._backoff = backoff
            self._update_rto()

    # ------------------------------------------------------------------ sending

    def _message_limit(self) -> int:
        if self._mode is PeerMode.LEGACY:
            return self.config.legacy_max_message_bytes
        if self._mode is PeerMode.RELIABLE:
            return self.config.max_message_bytes
        return max(self.config.max_message_bytes, self.config.legacy_max_message_bytes)

    def _blocked_reason(self, nbytes: int) -> str | None:
        if self._mode is PeerMode.PROBING and nbytes > self.config.max_segment_payload_bytes:
            return "peer capabilities not negotiated yet; large messages wait for them"
        buffered = self._buffered_send_bytes
        if buffered and buffered + nbytes > self.config.max_send_buffer_bytes:
            return "relay send buffer is full"
        return None

    def can_send(self, nbytes: int) -> bool:
        """Whether :meth:`send_message` of ``nbytes`` would not raise ``SendBlocked`` now.

        It may still raise ``MessageTooLarge`` or ``StreamClosed``: those never clear, so a
        caller waiting for ``can_send`` must not wait on them.
        """
        return self.is_closed or self._blocked_reason(nbytes) is None

    def send_message(
        self,
        payload: bytes,
        now: float,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Queue one whole message; frames come out of :meth:`frames_to_send`.

        Raises ``StreamClosed`` after a reset, ``ValueError`` for an empty payload,
        ``MessageTooLarge`` over the mode's limit, ``SendBlocked`` under backpressure.
        The trace context rides on the message's first segment.
        """
        if self._closed_reason is not None:
            raise StreamClosed(self.stream_id, self._closed_reason)
        size = len(payload)
        if size == 0:
            raise ValueError("relay messages must not be empty")
        limit = self._message_limit()
        if size > limit:
            detail = (
                "the peer is a legacy Codex endpoint, which cannot take it in one frame"
                if self._mode is PeerMode.LEGACY
                else "over the stream's max_message_bytes"
            )
            raise MessageTooLarge(size, limit, detail)
        blocked = self._blocked_reason(size)
        if blocked is not None:
            raise SendBlocked(blocked)
        if self._mode is PeerMode.LEGACY:
            self._out.append(_OutSegment(self._legacy_seq, payload, 0, 1, traceparent, tracestate))
            self._legacy_seq = (self._legacy_seq + 1) & U32_MAX
        elif size <= self.config.max_segment_payload_bytes:  # one segment: the common case
            self._out.append(
                _OutSegment(self._next_assign, bytes(payload), 0, 1, traceparent, tracestate)
            )
            self._next_assign += 1
        else:
            step = self.config.max_segment_payload_bytes
            count = max(1, math.ceil(size / step))
            for index in range(count):
                chunk = payload if count == 1 else payload[index * step : (index + 1) * step]
                first = index == 0
                self._out.append(
                    _OutSegment(
                        self._next_assign,
                        bytes(chunk),
                        index,
                        count,
                        traceparent if first else None,
                        tracestate if first else None,
                    )
                )
                self._next_assign += 1
        self._buffered_send_bytes += size
        self.stats.messages_sent += 1
        self._output_pending()

    def _output_pending(self) -> None:
        if self.on_output_pending is not None:
            self.on_output_pending(self)

    def reset(self, reason: str) -> None:
        """End the stream: queue ``reset{reason}`` (<= 256 bytes) and drop all buffers.

        No event is emitted for a local reset. Idempotent.
        """
        if self._closed_reason is None:
            self._close(truncate_reason(reason), remote=False, send_reset=True, emit=False)
            self._output_pending()

    # ------------------------------------------------------------------ output

    def _ack_fields(self) -> tuple[int, int]:
        if self._mode is PeerMode.LEGACY:
            return 0, 0
        rcv_nxt = self._rcv_nxt
        bits = RELIABLE_CAPABILITY_BIT
        for seq in self._ooo:
            offset = seq - rcv_nxt
            if offset < MAX_UNACKED_SEGMENTS:  # beyond the span: cumulative ack only
                bits |= 1 << offset
        return seq_to_wire(rcv_nxt - 1), bits

    def _stamp(self, now: float) -> tuple[int, int]:
        self._ack_due = None
        self._unacked_rx_segments = 0
        self._unacked_rx_bytes = 0
        self._last_sent_at = now
        return self._ack_fields()

    def _data(self, segment: _OutSegment, now: float) -> RelayFrame:
        ack, ack_bits = self._stamp(now)
        seq = segment.seq
        wire_seq = (
            seq & U32_MAX
            if self._mode is PeerMode.LEGACY
            else (0 if seq <= 0 else (seq - 1) % SEQ_SPACE + 1)  # seq_to_wire, inlined
        )
        self.stats.data_frames_sent += 1
        return RelayFrame(
            RELAY_MESSAGE_FRAME_VERSION,
            self.stream_id,
            ack,
            ack_bits,
            DataBody(wire_seq, segment.index, segment.count, segment.payload),
            segment.traceparent,
            segment.tracestate,
        )

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[RelayFrame]:
        """Frames to write now, in order (at most ``max_frames``); call after every input.

        Priority: reset, resume, retransmissions, new data (within the send window),
        heartbeat, standalone ack. Nothing is produced while disconnected.
        """
        out: list[RelayFrame] = []
        while max_frames is None or len(out) < max_frames:
            frame = self.next_frame(now)
            if frame is None:
                break
            out.append(frame)
        return out

    def next_frame(self, now: float) -> RelayFrame | None:
        """The next frame to write now, or ``None``: ``frames_to_send(now, 1)`` without the
        list (a reset, once written, is the stream's last frame)."""
        if not self._connected:
            return None
        if self._pending_reset is not None:
            ack, ack_bits = self._stamp(now)
            frame = reset_frame(self.stream_id, self._pending_reset, ack=ack, ack_bits=ack_bits)
            self._pending_reset = None
            return frame
        if self._closed_reason is not None:
            return None
        return self._next_frame(now)

    def _next_frame(self, now: float) -> RelayFrame | None:
        mode = self._mode
        if self._pending_resume:
            self._pending_resume = False
            if mode is PeerMode.PROBING and self.initiator:
                self._probe_resend_at = now + self.rto_s
            if mode is PeerMode.LEGACY:  # the seq of the next data frame to go out
                next_seq = self._out[0].seq & U32_MAX if self._out else self._legacy_seq
            else:
                next_seq = seq_to_wire(self._snd_nxt)
            ack, ack_bits = self._stamp(now)
            self.stats.resumes_sent += 1
            return resume_frame(self.stream_id, next_seq, ack=ack, ack_bits=ack_bits)
        if mode is PeerMode.LEGACY:
            if self._out:
                segment = self._out.popleft()
                self._buffered_send_bytes -= len(segment.payload)
                return self._data(segment, now)
            return None
        in_flight = self._snd_nxt - self._snd_una
        out = self._out
        if mode is PeerMode.RELIABLE and self._maybe_resend:
            for i in range(in_flight):
                segment = out[i]
                if segment.resend:
                    segment.resend = False
                    segment.sent_at = now
                    segment.transmissions += 1
                    self.stats.retransmissions += 1
                    self._track_transmission(segment, now)
                    return self._data(segment, now)
            self._maybe_resend = False
        if in_flight < len(out) and in_flight < self.config.max_unacked_segments:
            segment = out[in_flight]
            size = len(segment.payload)
            if (
                self._inflight_bytes == 0
                or self._inflight_bytes + size <= self.config.max_unacked_bytes
            ):
                segment.sent_at = now
                segment.transmissions = 1
                self._snd_nxt += 1
                self._inflight_bytes += size
                self._track_transmission(segment, now)
                return self._data(segment, now)
        if mode is PeerMode.RELIABLE:
            if now >= self._last_sent_at + self.config.heartbeat_interval_s:
                ack, ack_bits = self._stamp(now)
                self.stats.heartbeats_sent += 1
                return heartbeat_frame(self.stream_id, ack=ack, ack_bits=ack_bits)
            if self._ack_due is not None and now >= self._ack_due:
                ack, ack_bits = self._stamp(now)
                self.stats.ack_frames_sent += 1
                return ack_frame(self.stream_id, ack=ack, ack_bits=ack_bits)
        return None

    # ------------------------------------------------------------------ events

    def next_event(self) -> StreamEvent | None:
        """The next event, or ``None``. Taking messages frees receive-buffer space."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, MessageReceived):
            self._undelivered_bytes -= len(event.payload)
            if (
                self._rx_starved
                and self._undelivered_bytes <= self.config.max_receive_buffer_bytes // 2
                and self._closed_reason is None
            ):
                # Data was dropped while the owner was not reading: ask the peer to resend
                # now rather than after its (possibly backed-off) RTO.
                self._rx_starved = False
                self._pending_resume = True
                self._output_pending()
        return event

    # ------------------------------------------------------------------ timers

    def _repair_timeout_s(self) -> float:
        """How long a fast retransmission may go unacknowledged before it is sent again:
        twice the smoothed RTT (at least ``REPAIR_RESEND_MIN_S``), capped by the RTO. The
        receiver acks a segment that fills a gap at once, and every later segment is
        usually SACKed already, so waiting for the full RTO (200 ms floor) would only
        idle the send window. Cached with ``rto_s`` (see ``_update_rto``)."""
        return self._repair

    @staticmethod
    def _is_repair(segment: _OutSegment) -> bool:
        # Only the first fast retransmission gets the short timer; after that, the RTO.
        return segment.fast_retransmitted and segment.transmissions == 2

    def _track_transmission(self, segment: _OutSegment, now: float) -> None:
        """Queue the retransmission deadline of a segment just (re)sent at ``now``."""
        queue = self._repair_queue if self._is_repair(segment) else self._rto_queue
        if queue and (now < queue[-1][0] or len(queue) >= _MAX_TIMER_QUEUE):
            # The clock went backwards, or stale entries piled up behind a live one.
            self._rebuild_timer_queues()
        else:
            queue.append((now, segment.seq, segment.transmissions))

    def _rebuild_timer_queues(self) -> None:
        """Both queues from the send window: its live segments, in ``sent_at`` order."""
        live = sorted(
            (segment.sent_at, segment.seq, segment.transmissions, self._is_repair(segment))
            for segment in itertools.islice(self._out, self._snd_nxt - self._snd_una)
            if not (segment.sacked or segment.resend or segment.sent_at is None)
        )
        self._rto_queue.clear()
        self._repair_queue.clear()
        for sent_at, seq, transmissions, repair in live:
            queue = self._repair_queue if repair else self._rto_queue
            queue.append((sent_at, seq, transmissions))

    def _rto_deadline(self) -> float | None:
        """The earliest retransmission deadline of a segment in flight (not SACKed, not
        already marked for resend): its ``sent_at`` plus the RTO, or plus the repair
        timeout for a first fast retransmission."""
        snd_una, out = self._snd_una, self._out
        earliest: float | None = None
        for queue, timeout in ((self._rto_queue, self._rto), (self._repair_queue, self._repair)):
            while queue:
                sent_at, seq, transmissions = queue[0]
                if seq >= snd_una:
                    segment = out[seq - snd_una]
                    if (
                        segment.transmissions == transmissions
                        and not segment.sacked
                        and not segment.resend
                    ):
                        # Float addition is monotonic, so the earliest sent_at of a timeout
                        # class gives that class's earliest deadline.
                        deadline = sent_at + timeout
                        if earliest is None or deadline < earliest:
                            earliest = deadline
                        break
                queue.popleft()  # stale: acked, SACKed, marked for resend or sent again
        return earliest

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (then :meth:`frames_to_send`) should run next, or ``None``."""
        if self._closed_reason is not None:
            return None
        mode = self._mode
        if mode is PeerMode.RELIABLE:
            cfg = self.config
            deadline = self._last_received_at + cfg.idle_timeout_s
            if self._connected:
                heartbeat = self._last_sent_at + cfg.heartbeat_interval_s
                if heartbeat < deadline:
                    deadline = heartbeat
                ack_due = self._ack_due
                if ack_due is not None and ack_due < deadline:
                    deadline = ack_due
                rto = self._rto_deadline()
                if rto is not None and rto < deadline:
                    deadline = rto
            return deadline
        if mode is PeerMode.PROBING:
            if not self.initiator:
                return None
            if self._probe_resend_at is None or not self._connected:
                return self._negotiation_deadline
            return min(self._negotiation_deadline, self._probe_resend_at)
        return None

    def handle_timer(self, now: float) -> None:
        """Process every deadline that is due at ``now`` (early calls are harmless)."""
        if self._closed_reason is not None:
            return
        if self._mode is PeerMode.PROBING:
            if not self.initiator:
                return
            if now >= self._negotiation_deadline:
                self._legacy_by_timeout = True
                self._resolve(PeerMode.LEGACY)
            elif self._probe_resend_at is not None and now >= self._probe_resend_at:
                # Repeat the (flagged) stream claim: our acceptor creates the stream on it and
                # acks, even if every data frame so far was lost. A Codex peer ignores it.
                self._probe_resend_at = None
                self._pending_resume = True
                if self._rto < self.config.max_rto_s:
                    self._set_backoff(self._backoff + 1)
            return
        if self._mode is not PeerMode.RELIABLE:
            return
        if now >= self._last_received_at + self.config.idle_timeout_s:
            self._close("idle_timeout", remote=False, send_reset=True, emit=True)
            return
        if not self._connected:
            return
        earliest = self._rto_deadline()
        if earliest is None or now < earliest:
            return  # no segment is due: the scan below would change nothing
        rto, repair = self._rto, self._repair
        expired = False
        for i in range(self._snd_nxt - self._snd_una):
            segment = self._out[i]
            if segment.sacked or segment.resend or segment.sent_at is None:
                continue
            timeout = repair if self._is_repair(segment) else rto
            if now >= segment.sent_at + timeout:
                segment.resend = True
                self._maybe_resend = True
                if timeout < rto:
                    self.stats.fast_retransmits += 1  # a lost fast retransmission, resent
                else:
                    expired = True
        if expired:
            self.stats.rto_expiries += 1
            if self._rto < self.config.max_rto_s:
                self._set_backoff(self._backoff + 1)

    # ------------------------------------------------------------------ connection

    def connection_lost(self, now: float) -> None:
        """The physical socket went away; output stops until :meth:`on_reconnect`.

        A legacy stream ends (``connection_lost``): a Codex peer drops its side of every
        stream with the socket and cannot resume. Reliable and probing streams keep their
        state (a probing stream has not heard from its peer, so there is nothing to tear
        down yet)."""
        if self._closed_reason is not None:
            return
        if self._mode is PeerMode.LEGACY:
            self._close("connection_lost", remote=False, send_reset=False, emit=True)
        else:
            self._connected = False

    def on_reconnect(self, now: float) -> None:
        """A new physical socket is up.

        Reliable: send ``resume{next_seq}`` (with our acks) and resend every segment the
        peer has not acknowledged; the receiver drops duplicates. Probing: repeat the
        flagged stream claim; data sent so far is resent only if the peer proves reliable
        (against a Codex peer it may be lost, exactly as with Codex). Legacy: the stream
        ends, as in :meth:`connection_lost`."""
        if self._closed_reason is not None or self._mode is PeerMode.LEGACY:
            self.connection_lost(now)
            self._connected = True  # lets a pending reset out
            return
        self._connected = True
        self._set_backoff(0)
        if self._mode is PeerMode.RELIABLE:
            self._pending_resume = True
            self._mark_all_for_resend()
        else:
            self._pending_resume = self.initiator
            self._probe_resend_at = None

    def _mark_all_for_resend(self) -> None:
        for i in range(self._snd_nxt - self._snd_una):
            segment = self._out[i]
            if not segment.sacked:
                segment.resend = True
                self._maybe_resend = True

    # ------------------------------------------------------------------ input

    def receive_frame(self, frame: RelayFrame, now: float) -> None:
        """Process one validated inbound frame of this stream."""
        if self._closed_reason is not None:
            self.stats.dropped[StreamDropReason.CLOSED] += 1
            return
        body = frame.body
        if isinstance(body, ResetBody):
            # Terminal whatever the capability flag: resets also come from outside the
            # stream (the rendezvous giving up on the peer, a multiplexer refusing the
            # stream), and dropping one would leave the stream to its idle timeout.
            self._last_received_at = now
            self._close(body.reason, remote=True, send_reset=False, emit=True)
            return
        ack_bits = frame.ack_bits
        flagged = bool(ack_bits & RELIABLE_CAPABILITY_BIT)
        mode = self._mode
        if mode is PeerMode.PROBING:
            mode = PeerMode.RELIABLE if flagged else PeerMode.LEGACY
            self._resolve(mode)
            if mode is PeerMode.RELIABLE and not self.initiator:
                self._ack_due = now  # let a probing initiator resolve within one round trip
        elif flagged != (mode is PeerMode.RELIABLE) and self.config.allow_reliable:
            if self._legacy_by_timeout:
                self._close("negotiation_conflict", remote=False, send_reset=True, emit=True)
            else:
                self.stats.dropped[StreamDropReason.MODE_MISMATCH] += 1
            return
        self._last_received_at = now
        if mode is PeerMode.LEGACY:
            self._receive_legacy(frame, body)
            return
        try:
            self._on_ack(frame.ack, ack_bits, now)
            if isinstance(body, DataBody):
                self._on_data(frame, body, now)
            elif isinstance(body, ResumeBody):
                self._on_resume(body.next_seq, now)
            elif isinstance(body, HandshakeBody):
                self.stats.dropped[StreamDropReason.HANDSHAKE_UNSUPPORTED] += 1
        except _ProtocolViolation as violation:
            self._close(violation.reason, remote=False, send_reset=True, emit=True)

    def _receive_legacy(self, frame: RelayFrame, body: FrameBody | None) -> None:
        if not isinstance(body, DataBody):
            self.stats.dropped[StreamDropReason.LEGACY_CONTROL] += 1
            return
        if body.segment_index != 0 or body.segment_count != 1:
            self.stats.dropped[StreamDropReason.LEGACY_SEGMENTED] += 1
            return
        self._emit_message(body.payload, frame.traceparent, frame.tracestate)

    def _resolve(self, mode: PeerMode) -> None:
        self._mode = mode
        self._probe_resend_at = None
        self._set_backoff(0)
        if mode is PeerMode.LEGACY:
            # Forget retained copies: a legacy peer must never see a retransmission.
            self._legacy_seq = (
                0 if self._next_assign == self.config.initial_seq else self._next_assign & U32_MAX
            )
            for _ in range(self._snd_nxt - self._snd_una):
                segment = self._out.popleft()
                self._buffered_send_bytes -= len(segment.payload)
            self._snd_una = self._snd_nxt
            self._inflight_bytes = 0
            self._rto_queue.clear()
            self._repair_queue.clear()
        self._events.append(PeerModeResolved(self.stream_id, mode))

    def _on_ack(self, ack_wire: int, ack_bits: int, now: float) -> None:
        snd_una = self._snd_una
        ack = 0 if ack_wire == 0 else seq_from_wire(ack_wire, snd_una)
        if ack >= self._snd_nxt:
            raise _ProtocolViolation("protocol_error:ack_beyond_sent")
        selective = ack_bits & ~RELIABLE_CAPABILITY_BIT
        if ack < snd_una and not selective:
            return  # nothing new (the common case on a receiving stream)
        # RTT sample: the newest segment acknowledged for the first time by this frame
        # and sent only once (Karn). Segments SACKed earlier were sampled then.
        sample_at: float | None = None
        if ack >= snd_una:
            out = self._out
            acked_bytes = 0
            for _ in range(ack - snd_una + 1):
                segment = out.popleft()
                acked_bytes += len(segment.payload)
                if segment.transmissions == 1 and not segment.sacked:
                    sample_at = segment.sent_at
            self._buffered_send_bytes -= acked_bytes
            self._inflight_bytes -= acked_bytes
            self._snd_una = ack + 1
        newly_sacked = False
        while selective:
            low = selective & -selective
            selective ^= low
            seq = ack + low.bit_length()  # bit i names ack + 1 + i
            if seq >= self._snd_nxt:
                raise _ProtocolViolation("protocol_error:sack_beyond_sent")
            if seq >= self._snd_una:
                segment = self._out[seq - self._snd_una]
                if not segment.sacked:
                    segment.sacked = True
                    newly_sacked = True
                    sent_at = segment.sent_at
                    if (
                        segment.transmissions == 1
                        and sent_at is not None
                        and (sample_at is None or sent_at > sample_at)
                    ):
                        sample_at = sent_at
                segment.resend = False
        if sample_at is not None:
            self._rtt_sample(now - sample_at)
        if newly_sacked:
            self._mark_lost_by_sack()

    def _mark_lost_by_sack(self) -> None:
        """Fast retransmit: resend each unacknowledged segment with at least
        ``FAST_RETRANSMIT_SACKS`` selectively acknowledged segments above it, once."""
        sacked_above = 0
        for i in range(self._snd_nxt - self._snd_una - 1, -1, -1):
            segment = self._out[i]
            if segment.sacked:
                sacked_above += 1
            elif (
                sacked_above >= FAST_RETRANSMIT_SACKS
                and not segment.fast_retransmitted
                and not segment.resend
                and segment.sent_at is not None
            ):
                segment.fast_retransmitted = True
                segment.resend = True
                self._maybe_resend = True
                self.stats.fast_retransmits += 1

    def _rtt_sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._backoff = 0
        self._update_rto()
        self.stats.rtt_samples += 1

    def _on_resume(self, next_seq: int, now: float) -> None:
        self._set_backoff(0)
        self._mark_all_for_resend()
        self._ack_due = now
        self._events.append(PeerResumed(self.stream_id, next_seq))

    def _on_data(self, frame: RelayFrame, data: DataBody, now: float) -> None:
        if data.seq == 0:
            self.stats.dropped[StreamDropReason.BAD_SEQ] += 1
            return
        rcv_nxt = self._rcv_nxt
        seq = seq_from_wire(data.seq, rcv_nxt)
        ooo = self._ooo
        if seq < rcv_nxt or seq in ooo:
            self.stats.duplicates_received += 1
            self._ack_due = now
            return
        if seq >= rcv_nxt + MAX_WINDOW_SEGMENTS:
            self.stats.dropped[StreamDropReason.BEYOND_WINDOW] += 1
            self._ack_due = now
            return
        if self._undelivered_bytes >= self.config.max_receive_buffer_bytes:
            self.stats.dropped[StreamDropReason.RECEIVE_BUFFER_FULL] += 1
            self._rx_starved = True
            return
        size = len(data.payload)
        cfg = self.config
        if seq != rcv_nxt:
            if self._ooo_bytes + size > cfg.max_reorder_bytes:
                self.stats.dropped[StreamDropReason.REORDER_BUFFER_FULL] += 1
            else:
                ooo[seq] = frame
                self._ooo_bytes += size
            self._ack_due = now
            return
        filled_gap = bool(ooo)
        self._accept_in_order(frame, data)
        rcv_nxt += 1
        self._rcv_nxt = rcv_nxt
        while rcv_nxt in ooo:
            pending = ooo.pop(rcv_nxt)
            pending_data = pending.data
            self._ooo_bytes -= len(pending_data.payload)
            self._accept_in_order(pending, pending_data)
            rcv_nxt += 1
            self._rcv_nxt = rcv_nxt
        self._unacked_rx_segments += 1
        self._unacked_rx_bytes += size
        if (
            # A segment that fills a gap is acked at once (RFC 5681 4.2): the sender's
            # window is stuck on it, and a delayed ack would idle the stream for
            # ack_delay_s after every repaired loss.
            filled_gap
            or ooo
            or self._unacked_rx_segments >= cfg.ack_every_segments
            or self._unacked_rx_bytes >= cfg.max_unacked_bytes // 4
        ):
            self._ack_due = now
        elif self._ack_due is None:
            self._ack_due = now + cfg.ack_delay_s

    def _accept_in_order(self, frame: RelayFrame, data: DataBody) -> None:
        """Deliver or reassemble the next in-order data frame (``data`` is its body)."""
        if not self._reasm_parts:
            if data.segment_index != 0:
                raise _ProtocolViolation("protocol_error:segment_out_of_order")
            if data.segment_count == 1:
                self._emit_message(data.payload, frame.traceparent, frame.tracestate)
                return
            self._reasm_count = data.segment_count
            self._reasm_trace = (frame.traceparent, frame.tracestate)
        elif data.segment_count != self._reasm_count or data.segment_index != len(
            self._reasm_parts
        ):
            raise _ProtocolViolation("protocol_error:segment_mismatch")
        self._reasm_bytes += len(data.payload)
        if self._reasm_bytes > self.config.max_message_bytes:
            raise _ProtocolViolation("protocol_error:message_too_large")
        self._reasm_parts.append(data.payload)
        if len(self._reasm_parts) == self._reasm_count:
            payload = b"".join(self._reasm_parts)
            self._reasm_parts = []
            self._reasm_bytes = 0
            self._emit_message(payload, *self._reasm_trace)

    def _emit_message(
        self, payload: bytes, traceparent: str | None, tracestate: str | None
    ) -> None:
        self._events.append(MessageReceived(self.stream_id, payload, traceparent, tracestate))
        self._undelivered_bytes += len(payload)
        self.stats.messages_received += 1

    def _close(self, reason: str, *, remote: bool, send_reset: bool, emit: bool) -> None:
        self._closed_reason = reason
        if send_reset:
            self._pending_reset = truncate_reason(reason)
        self._pending_resume = False
        self._out.clear()
        self._buffered_send_bytes = 0
        self._inflight_bytes = 0
        self._snd_una = self._snd_nxt
        self._rto_queue.clear()
        self._repair_queue.clear()
        self._ooo.clear()
        self._ooo_bytes = 0
        self._reasm_parts = []
        self._reasm_bytes = 0
        self._ack_due = None
        if emit:
            self._events.append(StreamReset(self.stream_id, reason, remote))
