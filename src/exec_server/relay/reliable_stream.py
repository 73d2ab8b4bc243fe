"""Sans-IO reliable relay stream: one virtual stream, both directions, no clock, no sockets.

A :class:`ReliableStream` turns whole messages into relay frames
(:class:`~exec_server.relay.frame_codec.RelayFrame`) and back. The owner feeds it frames
(:meth:`~ReliableStream.receive_frame`) and timer expiries
(:meth:`~ReliableStream.handle_timer`), passing the current time as ``now`` (seconds, any
monotonic origin); it collects frames to write (:meth:`~ReliableStream.frames_to_send`)
and events (:meth:`~ReliableStream.next_event`), and asks when to wake up
(:meth:`~ReliableStream.get_timer`): the aioquic shape.

The stream composes a :class:`~exec_server.relay.send_window.SendWindow` (segmentation,
window, retransmission, RTO) and a :class:`~exec_server.relay.receive_window.ReceiveWindow`
(reorder, reassembly, acks) and keeps what concerns both directions: negotiating the peer
mode (a flag in ``ack_bits`` tells our endpoints from Codex's; the rules of each mode are
in :mod:`~exec_server.relay.peer_rules`), heartbeats and the idle timeout, resets, and
resuming on a new socket. A Codex (``LEGACY``) peer gets exactly Codex's frames: no acks,
no retransmissions, one frame per message.

This module has the protocol: sending (the general path and the fast paths for whole
``message_with_headroom`` messages), the frames to write, input, timers and reconnects.
The state it works on, its accessors, the events and the two shared transitions (the
peer mode resolving, the stream closing) are in the base class,
:class:`~exec_server.relay.stream_state.StreamState`.

``docs/relay.md`` has the protocol in full: negotiation, the sequence space, acks,
retransmission, flow control, resume, and the memory bound of each buffer.
"""

from __future__ import annotations

from typing import cast

from exec_server.relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from exec_server.relay.events import (
    PeerMode,
    PeerResumed,
)
from exec_server.relay.frame_codec import (
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    DataBody,
    HandshakeBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.frame_encoder import (
    HeadroomBuffer,
    OutboundPayload,
    frame_message_in_place,
)
from exec_server.relay.peer_rules import RULES
from exec_server.relay.receive_window import Delivered
from exec_server.relay.segment import Segment
from exec_server.relay.stream_config import (
    PeerProtocolViolation,
    ReliableStreamConfig,
    StreamDropReason,
    StreamStats,
)
from exec_server.relay.stream_state import StreamState

__all__ = ["ReliableStream", "ReliableStreamConfig", "StreamDropReason", "StreamStats"]

_RELIABLE_RULES = RULES[PeerMode.RELIABLE]


class ReliableStream(StreamState):
    """One relay virtual stream (see the module docstring and ``docs/relay.md``).

    ``initiator`` is true on the side that opens the stream (the harness): it queues the
    opening ``resume`` (Codex's stream claim) and negotiates the peer mode. The acceptor is
    created for the peer's first frame, which must go to :meth:`receive_frame` at once.
    Inbound frames must be validated and belong to this stream (the multiplexer sees to
    both); nothing raises on peer input: violations reset the stream (a ``StreamReset``).
    ``seal``/``unseal`` transform each segment's payload once (see the windows). A stream
    owned by a :class:`~exec_server.relay.stream_mux.StreamMux` is driven only through it.
    ``peer_mode`` is given when the peer is already known (the Noise handshake negotiates
    it): the stream then starts in that mode, without an opening ``resume``.
    """

    # ------------------------------------------------------------------ sending

    def _blocked_reason(self, nbytes: int) -> str | None:
        if self._rules.negotiates and nbytes > self.config.max_segment_payload_bytes:
            return "peer capabilities not negotiated yet; large messages wait for them"
        return self._send.blocked_reason(nbytes)

    def can_send(self, nbytes: int) -> bool:
        """Whether :meth:`send_message` of ``nbytes`` would not raise ``SendBlocked`` now
        (``MessageTooLarge`` and ``StreamClosed`` never clear: do not wait for those)."""
        return self.is_closed or self._blocked_reason(nbytes) is None

    def send_message(
        self,
        payload: OutboundPayload,
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
        rules = self._rules
        limit = rules.message_limit(self.config)
        if size > limit:
            raise MessageTooLarge(size, limit, rules.too_large)
        blocked = self._blocked_reason(size)
        if blocked is not None:
            raise SendBlocked(blocked)
        if rules.retains:
            self._send.queue(payload, traceparent, tracestate)
        else:
            self._send.queue_unsegmented(payload, traceparent, tracestate)
        self.stats.messages_sent += 1

    def try_send_now(self, message: memoryview, now: float) -> memoryview | None:
        """The fast path of :meth:`send_message` then :meth:`next_frame`: when the
        stream is reliable and connected, nothing is queued ahead (no reset, resume,
        retransmission or unsent segment) and the window and the send buffer take the
        message in one segment, send it now: returns its data frame, framed in place in
        a ``message_with_headroom`` message (``frame_message_in_place``), to be written
        at once (before anything else of this stream). The stream is then in exactly
        the state, and the frame exactly the bytes, that ``send_message``, ``next_frame``
        and ``encode_frame_for_socket`` give. ``None``: nothing changed, take the
        general path (which may raise where this declines)."""
        if (
            self._rules is not _RELIABLE_RULES
            or self._closed_reason is not None
            or self._pending_resume
            or not self._connected
            or len(message) > self.config.max_message_bytes
            or type(message.obj) is not HeadroomBuffer
        ):
            return None
        segment = self._send.send_now(message, now)
        if segment is None:
            return None
        receive = self._receive
        receive.ack_sent()
        self._last_sent_at = now
        ack, ack_bits = receive.ack_fields()
        frame = frame_message_in_place(message, self.stream_id, ack, ack_bits, segment.wire_seq)
        assert frame is not None  # a HeadroomBuffer message of one segment always fits
        stats = self.stats
        stats.messages_sent += 1
        stats.data_frames_sent += 1
        return frame

    def next_frame_in_place(self, now: float) -> memoryview | None:
        """:meth:`next_frame` then ``encode_frame_for_socket`` when the next frame is new
        data carrying a whole ``message_with_headroom`` message (no reset, resume or
        retransmission ahead of it, no trace context) on a reliable, connected stream:
        the segment is sent (recorded as :meth:`next_frame` records it) and its frame
        returned framed in place, byte for byte the same, without a :class:`RelayFrame`.
        ``None``: nothing changed, call :meth:`next_frame`."""
        if (
            self._rules is not _RELIABLE_RULES
            or self._closed_reason is not None
            or self._pending_resume
            or not self._connected
        ):
            return None
        segment = self._send.next_whole_message(now)
        if segment is None:
            return None
        receive = self._receive
        ack, ack_bits = receive.ack_fields()
        receive.ack_sent()
        self._last_sent_at = now
        self.stats.data_frames_sent += 1
        frame = frame_message_in_place(
            cast(memoryview, segment.payload), self.stream_id, ack, ack_bits, segment.wire_seq
        )
        assert frame is not None  # next_whole_message checked the message
        return frame

    @property
    def has_frame_due(self) -> bool:
        """Whether :meth:`next_frame` would return a frame at ``now`` = the last call's
        time or later, without the frames a timer adds (see :meth:`get_timer`): a reset,
        a resume, or data (new or marked for resend) the window lets out."""
        if not self._connected:
            return False
        if self._pending_reset is not None:
            return True
        if self._closed_reason is not None:
            return False
        if self._pending_resume:
            return True
        if not self._rules.retains:
            return bool(self._send.buffered_bytes)
        return self._send.has_segment_due

    # ------------------------------------------------------------------ output

    def _stamp(self, now: float) -> tuple[int, int]:
        """The ack fields of a frame going out at ``now``; nothing is owed after it."""
        self._receive.ack_sent()
        self._last_sent_at = now
        return self._receive.ack_fields() if self._rules.flags_frames else (0, 0)

    def _data(self, segment: Segment, now: float) -> RelayFrame:
        ack, ack_bits = self._stamp(now)
        self.stats.data_frames_sent += 1
        return RelayFrame(
            RELAY_MESSAGE_FRAME_VERSION,
            self.stream_id,
            ack,
            ack_bits,
            # The payload may be the view of a message_with_headroom message: the same
            # bytes, which only the frame encoder reads (encode_frame_for_socket).
            DataBody(segment.wire_seq, segment.index, segment.count, cast(bytes, segment.payload)),
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
            if (frame := self.next_frame(now)) is None:
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
        if self._pending_resume:
            return self._resume_frame(now)
        rules, send = self._rules, self._send
        if not rules.retains:
            segment = send.pop_unsent()
            return None if segment is None else self._data(segment, now)
        segment = send.next_segment(now, retransmit=rules.retransmits)
        if segment is not None:
            return self._data(segment, now)
        if rules.keepalive:
            if now >= self._last_sent_at + self.config.heartbeat_interval_s:
                ack, ack_bits = self._stamp(now)
                self.stats.heartbeats_sent += 1
                return heartbeat_frame(self.stream_id, ack=ack, ack_bits=ack_bits)
            ack_due = self._receive.ack_due
            if ack_due is not None and now >= ack_due:
                ack, ack_bits = self._stamp(now)
                self.stats.ack_frames_sent += 1
                return ack_frame(self.stream_id, ack=ack, ack_bits=ack_bits)
        return None

    def _resume_frame(self, now: float) -> RelayFrame:
        self._pending_resume = False
        rules, send = self._rules, self._send
        if rules.negotiates and self.initiator:
            self._probe_resend_at = now + send.rtt.rto_s
        next_seq = send.resume_seq(legacy=not rules.flags_frames)
        ack, ack_bits = self._stamp(now)
        self.stats.resumes_sent += 1
        return resume_frame(self.stream_id, next_seq, ack=ack, ack_bits=ack_bits)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (then :meth:`frames_to_send`) should run next, or ``None``."""
        if self._closed_reason is not None:
            return None
        rules = self._rules
        if rules.keepalive:
            cfg = self.config
            deadline = self._last_received_at + cfg.idle_timeout_s
            if self._connected:
                deadline = min(deadline, self._last_sent_at + cfg.heartbeat_interval_s)
                ack_due = self._receive.ack_due
                if ack_due is not None and ack_due < deadline:
                    deadline = ack_due
                rto = self._send.deadline()
                if rto is not None and rto < deadline:
                    deadline = rto
            return deadline
        if rules.negotiates and self.initiator:
            if self._probe_resend_at is None or not self._connected:
                return self._negotiation_deadline
            return min(self._negotiation_deadline, self._probe_resend_at)
        return None

    def handle_timer(self, now: float) -> None:
        """Process every deadline that is due at ``now`` (early calls are harmless)."""
        if self._closed_reason is not None:
            return
        rules = self._rules
        if rules.negotiates and self.initiator:
            if now >= self._negotiation_deadline:
                self._legacy_by_timeout = True
                self._resolve(PeerMode.LEGACY)
            elif self._probe_resend_at is not None and now >= self._probe_resend_at:
                # Repeat the (flagged) stream claim: our acceptor creates the stream on it and
                # acks, even if every data frame so far was lost. A Codex peer ignores it.
                self._probe_resend_at = None
                self._pending_resume = True
                self._send.rtt.back_off()
        elif rules.keepalive:
            if now >= self._last_received_at + self.config.idle_timeout_s:
                self._close("idle_timeout", remote=False, send_reset=True, emit=True)
            elif self._connected:
                self._send.on_timer(now)

    # ------------------------------------------------------------------ connection

    def connection_lost(self, now: float) -> None:
        """The socket went away: output stops until :meth:`on_reconnect`. A legacy stream
        ends (``connection_lost``): a Codex peer cannot resume."""
        if self._closed_reason is not None:
            return
        if self._rules.retains:
            self._connected = False
        else:
            self._close("connection_lost", remote=False, send_reset=False, emit=True)

    def on_reconnect(self, now: float) -> None:
        """A new socket is up. Reliable: send ``resume{next_seq}`` and resend everything
        unacknowledged. Probing: repeat the flagged claim. Legacy: the stream ends."""
        if self._closed_reason is not None or not self._rules.retains:
            self.connection_lost(now)
            self._connected = True  # lets a pending reset out
            return
        self._connected = True
        self._send.rtt.reset_backoff()
        if self._rules.retransmits:
            self._pending_resume = True
            self._send.mark_all_for_resend()
        else:
            self._pending_resume = self.initiator
            self._probe_resend_at = None

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
        flagged = bool(frame.ack_bits & RELIABLE_CAPABILITY_BIT)
        if self._rules.negotiates:
            self._resolve(PeerMode.RELIABLE if flagged else PeerMode.LEGACY)
            if flagged and not self.initiator:
                self._receive.ack_now(now)  # a probing initiator resolves in one round trip
        elif flagged != self._rules.flags_frames and self.config.allow_reliable:
            if self._legacy_by_timeout:
                self._close("negotiation_conflict", remote=False, send_reset=True, emit=True)
            else:
                self.stats.dropped[StreamDropReason.MODE_MISMATCH] += 1
            return
        self._last_received_at = now
        if not self._rules.flags_frames:
            self._receive_legacy(frame, body)
            return
        try:
            self._send.on_ack(frame.ack, frame.ack_bits, now)
            if isinstance(body, DataBody):
                self._on_data(frame, body, now)
            elif isinstance(body, ResumeBody):
                self._on_resume(body.next_seq, now)
            elif isinstance(body, HandshakeBody):
                self.stats.dropped[StreamDropReason.HANDSHAKE_UNSUPPORTED] += 1
        except PeerProtocolViolation as violation:
            self._close(violation.reason, remote=False, send_reset=True, emit=True)

    def _receive_legacy(self, frame: RelayFrame, body: object) -> None:
        if not isinstance(body, DataBody):
            self.stats.dropped[StreamDropReason.LEGACY_CONTROL] += 1
        elif body.segment_index != 0 or body.segment_count != 1:
            self.stats.dropped[StreamDropReason.LEGACY_SEGMENTED] += 1
        else:
            self._emit_message(body.payload, frame.traceparent, frame.tracestate)

    def _on_data(self, frame: RelayFrame, body: DataBody, now: float) -> None:
        delivered: list[Delivered] = []
        full = self._undelivered_bytes >= self.config.max_receive_buffer_bytes
        try:
            self._receive.on_data(frame, body, now, delivered, buffer_full=full)
        finally:  # messages completed before a violation are delivered before the reset
            for message in delivered:
                self._emit_message(*message)

    def _on_resume(self, next_seq: int, now: float) -> None:
        self._send.rtt.reset_backoff()
        self._send.mark_all_for_resend()
        self._receive.ack_now(now)
        self._events.append(PeerResumed(self.stream_id, next_seq))
