"""The state of one relay stream, and how it ends: the base of
:class:`~exec_server.relay.reliable_stream.ReliableStream`.

:class:`StreamState` holds what the stream knows: its id and role, the
:class:`~exec_server.relay.send_window.SendWindow` and
:class:`~exec_server.relay.receive_window.ReceiveWindow` it composes, the peer mode and
its rules (:mod:`~exec_server.relay.peer_rules`), whether a socket is up, the queued
reset and resume, the event queue and what it holds, and the clocks of the last frame
each way. It reads that state out (the properties), hands out events, and makes the two
transitions every verb shares: the peer mode resolving and the stream closing (reset by
either side, protocol violation, idle timeout). It builds no frame and reads no input:
:class:`~exec_server.relay.reliable_stream.ReliableStream` adds the protocol (sending,
the frames to write, input, timers, reconnects) over this state. Not used on its own.
"""

from __future__ import annotations

from collections import deque

from exec_server.relay.events import (
    MessageReceived,
    PeerMode,
    PeerModeResolved,
    StreamEvent,
    StreamReset,
)
from exec_server.relay.frame_codec import truncate_reason
from exec_server.relay.peer_rules import RULES
from exec_server.relay.receive_window import ReceiveWindow
from exec_server.relay.send_window import PayloadTransform, SendWindow
from exec_server.relay.stream_config import ReliableStreamConfig, StreamStats

__all__ = ["StreamState"]


class StreamState:
    """The state under one :class:`~exec_server.relay.reliable_stream.ReliableStream`
    (its constructor's arguments are documented there)."""

    def __init__(
        self,
        stream_id: str,
        *,
        initiator: bool,
        now: float,
        config: ReliableStreamConfig | None = None,
        seal: PayloadTransform | None = None,
        unseal: PayloadTransform | None = None,
        peer_mode: PeerMode | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.initiator = initiator
        self.config = cfg = config or ReliableStreamConfig()
        self.stats = StreamStats()
        self._send = SendWindow(cfg, self.stats, seal=seal)
        self._receive = ReceiveWindow(cfg, self.stats, unseal=unseal)
        negotiated = peer_mode is not None
        if peer_mode is None:
            peer_mode = PeerMode.PROBING if cfg.allow_reliable else PeerMode.LEGACY
        self._rules = RULES[peer_mode]
        self._legacy_by_timeout = False
        self._connected = True
        self._closed_reason: str | None = None
        self._pending_reset: str | None = None
        self._pending_resume = initiator and not negotiated
        self._events: deque[StreamEvent] = deque()
        self._undelivered_bytes = 0
        self._last_sent_at = now
        self._last_received_at = now
        self._negotiation_deadline = now + cfg.negotiation_timeout_s
        self._probe_resend_at: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> PeerMode:
        """What is known about the peer (``PROBING`` until its first frame)."""
        return self._rules.mode

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
        return self._send.buffered_bytes

    @property
    def inflight_bytes(self) -> int:
        """Bytes sent and not yet cumulatively acknowledged (bounded by the send window)."""
        return self._send.inflight_bytes

    @property
    def unacked_segments(self) -> int:
        """Segments sent and not yet cumulatively acknowledged."""
        return self._send.in_flight if self._rules.retains else 0

    @property
    def reorder_buffer_bytes(self) -> int:
        return self._receive.reorder_bytes

    @property
    def reorder_buffer_segments(self) -> int:
        return self._receive.reorder_segments

    @property
    def reassembly_bytes(self) -> int:
        return self._receive.reassembly_bytes

    @property
    def undelivered_bytes(self) -> int:
        """Payload bytes of messages waiting in :meth:`next_event`."""
        return self._undelivered_bytes

    @property
    def rto_s(self) -> float:
        """The current retransmission timeout, backoff included."""
        return self._send.rtt.rto_s

    @property
    def nothing_unsent(self) -> bool:
        """Every queued segment went out at least once (a new message would be next)."""
        return self._send.nothing_unsent

    # ------------------------------------------------------------------ events

    def next_event(self) -> StreamEvent | None:
        """The next event, or ``None``. Taking messages frees receive-buffer space (and
        may queue a ``resume``: call ``frames_to_send`` after it)."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, MessageReceived):
            self._undelivered_bytes -= len(event.payload)
            if (
                self._receive.starved
                and self._undelivered_bytes <= self.config.max_receive_buffer_bytes // 2
                and self._closed_reason is None
            ):
                # Data was dropped while nobody read: ask for it now, not after the RTO.
                self._receive.starved = False
                self._pending_resume = True
        return event

    def _emit_message(self, payload: bytes, tp: str | None, ts: str | None) -> None:
        self._events.append(MessageReceived(self.stream_id, payload, tp, ts))
        self._undelivered_bytes += len(payload)
        self.stats.messages_received += 1

    # ------------------------------------------------------------------ transitions

    def reset(self, reason: str) -> None:
        """End the stream: queue ``reset{reason}`` (<= 256 bytes), drop all buffers; no
        event for a local reset. Idempotent."""
        if self._closed_reason is None:
            self._close(truncate_reason(reason), remote=False, send_reset=True, emit=False)

    def _resolve(self, mode: PeerMode) -> None:
        self._rules = RULES[mode]
        self._probe_resend_at = None
        self._send.rtt.reset_backoff()
        if not self._rules.retains:
            self._send.forget_in_flight()  # a legacy peer must never see a retransmission
        self._events.append(PeerModeResolved(self.stream_id, mode))

    def _close(self, reason: str, *, remote: bool, send_reset: bool, emit: bool) -> None:
        self._closed_reason = reason
        if send_reset:
            self._pending_reset = truncate_reason(reason)
        self._pending_resume = False
        self._send.clear()
        self._receive.clear()
        if emit:
            self._events.append(StreamReset(self.stream_id, reason, remote))
