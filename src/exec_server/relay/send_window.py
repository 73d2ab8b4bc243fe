"""The sending half of a reliable stream: segmentation, the window, retransmission.

:class:`SendWindow` is the counterpart of aioquic's ``QuicStreamSender`` plus
``QuicPacketRecovery``. It cuts messages into segments with consecutive seqs, keeps
them until the peer's cumulative ack covers them, lets at most ``max_unacked_bytes``
(and ``max_unacked_segments``) be in flight, and decides what to resend:

* after the retransmission timeout (:class:`RttEstimator`: SRTT/RTTVAR as in RFC 6298,
  Karn's rule, exponential backoff), per segment;
* at once, once ``FAST_RETRANSMIT_SACKS`` later segments are selectively acknowledged
  (RFC 6675's ``IsLost``), and once more after the short repair timeout if that fast
  retransmission is lost too;
* everything unacknowledged, after a resume (:meth:`SendWindow.mark_all_for_resend`).

Each segment and the RTO estimator are in :mod:`~exec_server.relay.segment` (and
importable from here). Retransmission deadlines come from two queues (RTO and repair)
kept in ``sent_at`` order, so finding the earliest one does not scan the window.

**Payload transform seam.** ``seal``, if given, is applied to every segment's payload
exactly once, in seq order, when the message is segmented; it is also told the segment's
``segment_index`` and ``segment_count``, so that an authenticating transform can bind
them (the Noise relay uses them as associated data: the unauthenticated frame header
then cannot regroup segments into other messages). Retransmissions resend the sealed
bytes. Byte accounting (window, send buffer) counts sealed bytes. Nothing here reads a
clock: ``now`` is an argument.
"""

from __future__ import annotations

import itertools
from collections import deque

from exec_server.relay.frame_codec import RELIABLE_CAPABILITY_BIT, U32_MAX
from exec_server.relay.frame_encoder import OutboundPayload, is_whole_message
from exec_server.relay.segment import PayloadTransform, RttEstimator, Segment
from exec_server.relay.stream_config import (
    FAST_RETRANSMIT_SACKS,
    MAX_WINDOW_SEGMENTS,
    PeerProtocolViolation,
    ReliableStreamConfig,
    StreamStats,
    seq_from_wire,
    seq_to_wire,
)

__all__ = ["PayloadTransform", "RttEstimator", "Segment", "SendWindow"]

_MAX_TIMER_QUEUE = 4 * MAX_WINDOW_SEGMENTS
"""Entries a retransmission-deadline queue may hold before it is rebuilt from the window."""


class SendWindow:
    """Outbound segments of one stream, from ``queue`` until cumulatively acknowledged.

    Seqs are unbounded logical integers from ``config.initial_seq``; ``snd_una`` is the
    oldest unacknowledged one, ``snd_nxt`` the next never sent. The deque holds the
    segments in flight (``snd_una .. snd_nxt - 1``) followed by those not sent yet.
    Unretained sending (:meth:`pop_unsent`, for a legacy peer) takes segments off the
    front without keeping them.
    """

    def __init__(
        self,
        config: ReliableStreamConfig,
        stats: StreamStats,
        *,
        seal: PayloadTransform | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.rtt = RttEstimator(config)
        self._seal = seal
        self._out: deque[Segment] = deque()
        self.snd_una = self.snd_nxt = self._next_assign = config.initial_seq
        self.legacy_seq = 0
        """The next seq of an unsegmented (legacy) message: per stream, wrapping at u32."""
        self.buffered_bytes = 0
        """Bytes queued or in flight (not yet cumulatively acknowledged)."""
        self.inflight_bytes = 0
        """Bytes sent and not yet cumulatively acknowledged."""
        # Every transmission appends (sent_at, seq, transmissions) to the queue of its
        # timeout class; an entry whose segment was acked, SACKed, marked for resend or
        # sent again since is stale and dropped when met, so the first live entry of a
        # queue holds its earliest deadline. Rebuilt if the clock goes backwards.
        self._rto_queue: deque[tuple[float, int, int]] = deque()
        self._repair_queue: deque[tuple[float, int, int]] = deque()
        self._maybe_resend = False  # False while no segment can have ``resend`` set

    # ------------------------------------------------------------------ state

    @property
    def in_flight(self) -> int:
        """Segments sent and not yet cumulatively acknowledged."""
        return self.snd_nxt - self.snd_una

    @property
    def nothing_sent(self) -> bool:
        """No segment was ever queued with a window seq."""
        return self._next_assign == self.config.initial_seq

    def resume_seq(self, *, legacy: bool) -> int:
        """The wire seq a ``resume`` announces: the next data seq to go out."""
        if not legacy:
            return seq_to_wire(self.snd_nxt)
        return self._out[0].wire_seq if self._out else self.legacy_seq

    def blocked_reason(self, nbytes: int) -> str | None:
        """Why ``nbytes`` more cannot be queued now (``None`` if they can). A single
        message is always admitted into an empty buffer."""
        buffered = self.buffered_bytes
        if buffered and buffered + nbytes > self.config.max_send_buffer_bytes:
            return "relay send buffer is full"
        return None

    # ------------------------------------------------------------------ queueing

    def queue(
        self,
        payload: OutboundPayload,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Segment one message with window seqs; the trace context rides on segment 0.
        A message from ``message_with_headroom`` that fits one segment is kept as it is
        (its writer then copies it once); anything else is copied into ``bytes``."""
        step = self.config.max_segment_payload_bytes
        size = len(payload)
        count = max(1, -(-size // step))
        seal = self._seal
        added = 0
        for index in range(count):
            chunk: OutboundPayload
            if count == 1:
                chunk = payload if seal is None and type(payload) is memoryview else bytes(payload)
            else:
                chunk = bytes(payload[index * step : (index + 1) * step])
            if seal is not None:
                chunk = seal(bytes(chunk), index, count)
            added += len(chunk)
            first = index == 0
            seq = self._next_assign
            self._out.append(
                Segment(
                    seq,
                    seq_to_wire(seq),
                    chunk,
                    index,
                    count,
                    traceparent if first else None,
                    tracestate if first else None,
                )
            )
            self._next_assign += 1
        self.buffered_bytes += added

    def queue_unsegmented(
        self,
        payload: OutboundPayload,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Queue one message as a single ``0/1`` segment with the next legacy seq."""
        seq = self.legacy_seq
        self._out.append(Segment(seq, seq, payload, 0, 1, traceparent, tracestate))
        self.legacy_seq = (self.legacy_seq + 1) & U32_MAX
        self.buffered_bytes += len(payload)

    def send_now(self, payload: OutboundPayload, now: float) -> Segment | None:
        """:meth:`queue` of a one-segment message followed by the :meth:`next_segment`
        that sends it, when that is what they would do: nothing is queued or marked for
        resend ahead of it, no seal, and the window and the send buffer take it. Returns
        the segment, recorded as sent, or ``None`` (nothing changed: queue it)."""
        size = len(payload)
        in_flight = self.snd_nxt - self.snd_una
        cfg = self.config
        if (
            self._maybe_resend
            or self._seal is not None
            or len(self._out) != in_flight
            or self._next_assign != self.snd_nxt
            or in_flight >= cfg.max_unacked_segments
            or not 0 < size <= cfg.max_segment_payload_bytes
        ):
            return None
        inflight_bytes = self.inflight_bytes
        if inflight_bytes and inflight_bytes + size > cfg.max_unacked_bytes:
            return None
        buffered = self.buffered_bytes
        if buffered and buffered + size > cfg.max_send_buffer_bytes:
            return None
        seq = self._next_assign
        segment = Segment(seq, seq_to_wire(seq), payload, 0, 1, None, None, now, 1)
        self._out.append(segment)
        self._next_assign = self.snd_nxt = seq + 1
        self.buffered_bytes = buffered + size
        self.inflight_bytes = inflight_bytes + size
        self._track(segment, now)
        return segment

    @property
    def nothing_unsent(self) -> bool:
        """Every queued segment was sent at least once."""
        return len(self._out) == self.snd_nxt - self.snd_una

    def peek_new(self) -> Segment | None:
        """The never-sent segment the window lets out next, if any (nothing changes)."""
        out = self._out
        in_flight = self.snd_nxt - self.snd_una
        if in_flight < len(out) and in_flight < self.config.max_unacked_segments:
            segment = out[in_flight]
            inflight_bytes = self.inflight_bytes
            if (
                inflight_bytes == 0
                or inflight_bytes + len(segment.payload) <= self.config.max_unacked_bytes
            ):
                return segment
        return None

    def next_whole_message(self, now: float) -> Segment | None:
        """What :meth:`next_segment` would return, recorded as sent as it records it,
        when that is new data carrying a whole ``message_with_headroom`` message without
        trace context and no segment is marked for resend; otherwise ``None`` (nothing
        changed)."""
        if self._maybe_resend:
            return None
        out = self._out
        snd_nxt = self.snd_nxt
        in_flight = snd_nxt - self.snd_una
        if in_flight >= len(out) or in_flight >= self.config.max_unacked_segments:
            return None
        segment = out[in_flight]
        payload = segment.payload
        size = len(payload)
        inflight_bytes = self.inflight_bytes
        if (
            (inflight_bytes and inflight_bytes + size > self.config.max_unacked_bytes)
            or segment.count != 1
            or segment.traceparent is not None
            or segment.tracestate is not None
            or not is_whole_message(payload)
        ):
            return None
        segment.sent_at = now
        segment.transmissions = 1
        self.snd_nxt = snd_nxt + 1
        self.inflight_bytes = inflight_bytes + size
        self._track(segment, now)
        return segment

    @property
    def has_segment_due(self) -> bool:
        """Whether :meth:`next_segment` (retransmitting) would return a segment now."""
        out = self._out
        if self._maybe_resend and any(out[i].resend for i in range(self.snd_nxt - self.snd_una)):
            return True
        return self.peek_new() is not None

    # ------------------------------------------------------------------ sending

    def pop_unsent(self) -> Segment | None:
        """Take the next queued segment without retaining it (a legacy peer's data)."""
        if not self._out:
            return None
        segment = self._out.popleft()
        self.buffered_bytes -= len(segment.payload)
        return segment

    def next_segment(self, now: float, *, retransmit: bool) -> Segment | None:
        """The next segment to put on the wire at ``now``, recorded as sent: a segment
        marked for resend first (if ``retransmit``), else new data within the window."""
        out = self._out
        in_flight = self.snd_nxt - self.snd_una
        if retransmit and self._maybe_resend:
            for i in range(in_flight):
                segment = out[i]
                if segment.resend:
                    segment.resend = False
                    segment.sent_at = now
                    segment.transmissions += 1
                    self.stats.retransmissions += 1
                    self._track(segment, now)
                    return segment
            self._maybe_resend = False
        if in_flight < len(out) and in_flight < self.config.max_unacked_segments:
            segment = out[in_flight]
            size = len(segment.payload)
            if (
                self.inflight_bytes == 0
                or self.inflight_bytes + size <= self.config.max_unacked_bytes
            ):
                segment.sent_at = now
                segment.transmissions = 1
                self.snd_nxt += 1
                self.inflight_bytes += size
                self._track(segment, now)
                return segment
        return None

    # ------------------------------------------------------------------ acknowledgements

    def on_ack(self, ack_wire: int, ack_bits: int, now: float) -> None:
        """Apply the peer's ``ack``/``ack_bits``; raise :class:`PeerProtocolViolation` for
        an ack of a seq never sent."""
        snd_una = self.snd_una
        ack = 0 if ack_wire == 0 else seq_from_wire(ack_wire, snd_una)
        if ack >= self.snd_nxt:
            raise PeerProtocolViolation("protocol_error:ack_beyond_sent")
        selective = ack_bits & ~RELIABLE_CAPABILITY_BIT
        if ack < snd_una and not selective:
            return  # nothing new (the common case on a receiving stream)
        # RTT sample: the newest segment acknowledged for the first time by this frame
        # and sent only once (Karn). Segments SACKed earlier were sampled then.
        sample_at = self._on_cumulative_ack(ack) if ack >= snd_una else None
        newly_sacked = False
        while selective:
            low = selective & -selective
            selective ^= low
            seq = ack + low.bit_length()  # bit i names ack + 1 + i
            if seq >= self.snd_nxt:
                raise PeerProtocolViolation("protocol_error:sack_beyond_sent")
            if seq < self.snd_una:
                continue
            segment = self._out[seq - self.snd_una]
            segment.resend = False
            if segment.sacked:
                continue
            segment.sacked = newly_sacked = True
            sent_at = segment.sent_at
            if (
                segment.transmissions == 1
                and sent_at is not None
                and (sample_at is None or sent_at > sample_at)
            ):
                sample_at = sent_at
        if sample_at is not None:
            self.rtt.sample(now - sample_at)
            self.stats.rtt_samples += 1
        if newly_sacked:
            self._mark_lost_by_sack()

    def _on_cumulative_ack(self, ack: int) -> float | None:
        """Slide the window past ``ack``; the send time to sample, if any."""
        out = self._out
        sample_at: float | None = None
        acked_bytes = 0
        for _ in range(ack - self.snd_una + 1):
            segment = out.popleft()
            acked_bytes += len(segment.payload)
            if segment.transmissions == 1 and not segment.sacked:
                sample_at = segment.sent_at
        self.buffered_bytes -= acked_bytes
        self.inflight_bytes -= acked_bytes
        self.snd_una = ack + 1
        return sample_at

    def _mark_lost_by_sack(self) -> None:
        """Fast retransmit: resend each unacknowledged segment with at least
        ``FAST_RETRANSMIT_SACKS`` selectively acknowledged segments above it, once."""
        sacked_above = 0
        for i in range(self.snd_nxt - self.snd_una - 1, -1, -1):
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

    def mark_all_for_resend(self) -> None:
        """Queue every segment in flight the peer has not selectively acknowledged."""
        for i in range(self.snd_nxt - self.snd_una):
            segment = self._out[i]
            if not segment.sacked:
                segment.resend = True
                self._maybe_resend = True

    # ------------------------------------------------------------------ timers

    def _track(self, segment: Segment, now: float) -> None:
        """Queue the retransmission deadline of a segment just (re)sent at ``now``."""
        queue = self._repair_queue if segment.is_repair else self._rto_queue
        if queue and (now < queue[-1][0] or len(queue) >= _MAX_TIMER_QUEUE):
            # The clock went backwards, or stale entries piled up behind a live one.
            self._rebuild_timer_queues()
        else:
            queue.append((now, segment.seq, segment.transmissions))

    def _rebuild_timer_queues(self) -> None:
        """Both queues from the window: its live segments, in ``sent_at`` order."""
        live = sorted(
            (segment.sent_at, segment.seq, segment.transmissions, segment.is_repair)
            for segment in itertools.islice(self._out, self.snd_nxt - self.snd_una)
            if not (segment.sacked or segment.resend or segment.sent_at is None)
        )
        self._rto_queue.clear()
        self._repair_queue.clear()
        for sent_at, seq, transmissions, repair in live:
            queue = self._repair_queue if repair else self._rto_queue
            queue.append((sent_at, seq, transmissions))

    def _queue_deadline(self, queue: deque[tuple[float, int, int]], timeout: float) -> float | None:
        snd_una, out = self.snd_una, self._out
        while queue:
            sent_at, seq, transmissions = queue[0]
            if seq >= snd_una:
                segment = out[seq - snd_una]
                if segment.transmissions == transmissions and not (
                    segment.sacked or segment.resend
                ):
                    # Float addition is monotonic: the earliest sent_at gives the deadline.
                    return sent_at + timeout
            queue.popleft()  # stale: acked, SACKed, marked for resend or sent again
        return None

    def deadline(self) -> float | None:
        """The earliest retransmission deadline of a segment in flight (not SACKed, not
        already marked for resend): ``sent_at`` plus the RTO, or plus the repair timeout
        for a first fast retransmission."""
        rto = self._queue_deadline(self._rto_queue, self.rtt.rto_s)
        repair = self._queue_deadline(self._repair_queue, self.rtt.repair_s)
        if rto is None or (repair is not None and repair < rto):
            return repair
        return rto

    def on_timer(self, now: float) -> None:
        """Mark every segment whose retransmission deadline passed at ``now`` for resend;
        back the RTO off once if any RTO (not a repair timeout) expired."""
        earliest = self.deadline()
        if earliest is None or now < earliest:
            return  # no segment is due: the scan below would change nothing
        rto, repair = self.rtt.rto_s, self.rtt.repair_s
        expired = False
        for i in range(self.snd_nxt - self.snd_una):
            segment = self._out[i]
            if segment.sacked or segment.resend or segment.sent_at is None:
                continue
            timeout = repair if segment.is_repair else rto
            if now >= segment.sent_at + timeout:
                segment.resend = True
                self._maybe_resend = True
                if timeout < rto:
                    self.stats.fast_retransmits += 1  # a lost fast retransmission, resent
                else:
                    expired = True
        if expired:
            self.stats.rto_expiries += 1
            self.rtt.back_off()

    # ------------------------------------------------------------------ endings

    def forget_in_flight(self) -> None:
        """The peer is legacy: drop the retained copies (it must never see a
        retransmission) and continue with legacy seqs after the window's."""
        self.legacy_seq = 0 if self.nothing_sent else self._next_assign & U32_MAX
        for _ in range(self.snd_nxt - self.snd_una):
            segment = self._out.popleft()
            self.buffered_bytes -= len(segment.payload)
        self.snd_una = self.snd_nxt
        self.inflight_bytes = 0
        self._rto_queue.clear()
        self._repair_queue.clear()

    def clear(self) -> None:
        """Drop everything (the stream ended)."""
        self._out.clear()
        self.buffered_bytes = self.inflight_bytes = 0
        self.snd_una = self.snd_nxt
        self._rto_queue.clear()
        self._repair_queue.clear()
