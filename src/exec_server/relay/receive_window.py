"""The receiving half of a reliable stream: reorder buffer, reassembly, acknowledgements.

:class:`ReceiveWindow` is the counterpart of aioquic's ``QuicStreamReceiver`` plus its
``RangeSet``. It takes data segments in any order, drops duplicates, holds out-of-order
ones (at most ``max_reorder_bytes``, within ``MAX_WINDOW_SEGMENTS`` of the next expected
seq), releases them in seq order, reassembles segmented messages, and says what to
acknowledge (:meth:`ReceiveWindow.ack_fields`) and when (:attr:`ReceiveWindow.ack_due`):
at once after a gap, a segment that fills one, a duplicate, every
``ack_every_segments`` segments or half the sender's byte window
(``max_unacked_bytes``); otherwise after ``ack_delay_s``, so several segments share one
``ack_frame``.

**Payload transform seam.** ``unseal``, if given, is applied to every segment's payload
exactly once, in seq order, as the segment is released in order (before reassembly),
with the frame's ``segment_index`` and ``segment_count``; it may raise
:class:`~exec_server.relay.stream_config.PeerProtocolViolation` to reject it.
Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

from typing import NamedTuple

from exec_server.relay.frame_codec import RELIABLE_CAPABILITY_BIT, DataBody, RelayFrame
from exec_server.relay.segment import PayloadTransform
from exec_server.relay.stream_config import (
    MAX_UNACKED_SEGMENTS,
    MAX_WINDOW_SEGMENTS,
    PeerProtocolViolation,
    ReliableStreamConfig,
    StreamDropReason,
    StreamStats,
    seq_from_wire,
    seq_to_wire,
)

__all__ = ["Delivered", "ReceiveWindow"]


class Delivered(NamedTuple):
    """One whole message released by the window, in the peer's send order."""

    payload: bytes
    traceparent: str | None
    tracestate: str | None


class ReceiveWindow:
    """Inbound segments of one stream, until whole messages are released in order.

    ``rcv_nxt`` is the next expected logical seq. Messages come out of
    :meth:`on_data`; the owner counts them as undelivered until its consumer takes them
    and passes ``buffer_full`` while they hold ``max_receive_buffer_bytes``: new data is
    then dropped unacknowledged and :attr:`starved` is set, so the owner can ask the peer
    to resend (``resume``) once it drains.
    """

    def __init__(
        self,
        config: ReliableStreamConfig,
        stats: StreamStats,
        *,
        unseal: PayloadTransform | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self._unseal = unseal
        self.rcv_nxt = config.initial_seq
        self._ooo: dict[int, RelayFrame] = {}  # out-of-order data frames by logical seq
        self.reorder_bytes = 0
        self._parts: list[bytes] = []
        self._count = 0
        self.reassembly_bytes = 0
        self._trace: tuple[str | None, str | None] = (None, None)
        self.starved = False
        """Data was dropped because undelivered messages filled the receive buffer."""
        self.ack_due: float | None = None
        """When a standalone ack must go out if nothing else carries one (``None``: no
        ack owed)."""
        self._unacked_segments = 0
        self._unacked_bytes = 0

    @property
    def reorder_segments(self) -> int:
        return len(self._ooo)

    # ------------------------------------------------------------------ acknowledgements

    def ack_fields(self) -> tuple[int, int]:
        """``(ack, ack_bits)`` for the next outbound frame: the highest contiguous seq
        (wire form) and the out-of-order seqs within the selective span, plus the
        capability flag."""
        rcv_nxt = self.rcv_nxt
        bits = RELIABLE_CAPABILITY_BIT
        for seq in self._ooo:
            offset = seq - rcv_nxt
            if offset < MAX_UNACKED_SEGMENTS:  # beyond the span: cumulative ack only
                bits |= 1 << offset
        return seq_to_wire(rcv_nxt - 1), bits

    def ack_sent(self) -> None:
        """An outbound frame carried the current acks: nothing is owed any more."""
        self.ack_due = None
        self._unacked_segments = 0
        self._unacked_bytes = 0

    def ack_now(self, now: float) -> None:
        """Owe an ack at once (a resume, a stream that must resolve its peer quickly)."""
        self.ack_due = now

    # ------------------------------------------------------------------ data

    def on_data(
        self,
        frame: RelayFrame,
        data: DataBody,
        now: float,
        delivered: list[Delivered],
        *,
        buffer_full: bool = False,
    ) -> None:
        """Take one data frame (``data`` is its body); append the messages it completes
        to ``delivered``.

        Raises :class:`PeerProtocolViolation` for a reassembly violation or a message
        over ``max_message_bytes``; messages completed before it are in ``delivered``."""
        if data.seq == 0:
            self.stats.dropped[StreamDropReason.BAD_SEQ] += 1
            return
        rcv_nxt = self.rcv_nxt
        seq = seq_from_wire(data.seq, rcv_nxt)
        ooo = self._ooo
        if seq < rcv_nxt or seq in ooo:
            self.stats.duplicates_received += 1
            self.ack_due = now
            return
        if seq >= rcv_nxt + MAX_WINDOW_SEGMENTS:
            self.stats.dropped[StreamDropReason.BEYOND_WINDOW] += 1
            self.ack_due = now
            return
        if buffer_full:
            self.stats.dropped[StreamDropReason.RECEIVE_BUFFER_FULL] += 1
            self.starved = True
            return
        size = len(data.payload)
        if seq != rcv_nxt:
            if self.reorder_bytes + size > self.config.max_reorder_bytes:
                self.stats.dropped[StreamDropReason.REORDER_BUFFER_FULL] += 1
            else:
                ooo[seq] = frame
                self.reorder_bytes += size
            self.ack_due = now
            return
        filled_gap = bool(ooo)
        self._accept_in_order(frame, data, delivered)
        rcv_nxt += 1
        while rcv_nxt in ooo:
            pending = ooo.pop(rcv_nxt)
            pending_data = pending.data
            self.reorder_bytes -= len(pending_data.payload)
            self.rcv_nxt = rcv_nxt
            self._accept_in_order(pending, pending_data, delivered)
            rcv_nxt += 1
        self.rcv_nxt = rcv_nxt
        self._schedule_ack(size, now, urgent=filled_gap or bool(ooo))

    def _schedule_ack(self, size: int, now: float, *, urgent: bool) -> None:
        cfg = self.config
        self._unacked_segments += 1
        self._unacked_bytes += size
        # A segment that fills a gap is acked at once (RFC 5681 4.2): the sender's window
        # is stuck on it, and a delayed ack would idle the stream after every repair.
        if (
            urgent
            or self._unacked_segments >= cfg.ack_every_segments
            or self._unacked_bytes >= cfg.max_unacked_bytes // 2
        ):
            self.ack_due = now
        elif self.ack_due is None:
            self.ack_due = now + cfg.ack_delay_s

    def _accept_in_order(
        self, frame: RelayFrame, data: DataBody, delivered: list[Delivered]
    ) -> None:
        """Release or reassemble the next in-order data frame (``data`` is its body)."""
        unseal = self._unseal
        payload = (
            data.payload
            if unseal is None
            else unseal(data.payload, data.segment_index, data.segment_count)
        )
        if not self._parts:
            if data.segment_index != 0:
                raise PeerProtocolViolation("protocol_error:segment_out_of_order")
            if data.segment_count == 1:
                delivered.append(Delivered(payload, frame.traceparent, frame.tracestate))
                return
            self._count = data.segment_count
            self._trace = (frame.traceparent, frame.tracestate)
        elif data.segment_count != self._count or data.segment_index != len(self._parts):
            raise PeerProtocolViolation("protocol_error:segment_mismatch")
        self.reassembly_bytes += len(payload)
        if self.reassembly_bytes > self.config.max_message_bytes:
            raise PeerProtocolViolation("protocol_error:message_too_large")
        self._parts.append(payload)
        if len(self._parts) == self._count:
            whole = b"".join(self._parts)
            self._parts = []
            self.reassembly_bytes = 0
            delivered.append(Delivered(whole, *self._trace))

    def clear(self) -> None:
        """Drop everything (the stream ended)."""
        self._ooo.clear()
        self.reorder_bytes = 0
        self._parts = []
        self.reassembly_bytes = 0
        self.ack_due = None
