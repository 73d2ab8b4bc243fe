"""The send window on its own, driven without a stream (as aioquic's tests/test_recovery.py).

Acks are given as the wire values a receiver would send: ``ack`` is the highest
contiguous seq, bit ``i`` of ``ack_bits`` names seq ``ack + 1 + i`` (bit 0 is the
capability flag).
"""

from __future__ import annotations

import pytest

from exec_server.relay.frame_codec import RELIABLE_CAPABILITY_BIT as FLAG
from exec_server.relay.send_window import PayloadTransform, RttEstimator, Segment, SendWindow
from exec_server.relay.stream_config import (
    FAST_RETRANSMIT_SACKS,
    SEQ_SPACE,
    PeerProtocolViolation,
    ReliableStreamConfig,
    StreamStats,
    seq_to_wire,
)

CONFIG = ReliableStreamConfig(
    max_segment_payload_bytes=10,
    max_message_bytes=1000,
    max_unacked_segments=8,
    max_unacked_bytes=40,
    max_send_buffer_bytes=100,
    initial_rto_s=0.5,
    min_rto_s=0.2,
    max_rto_s=4.0,
)


def window(
    config: ReliableStreamConfig = CONFIG, seal: PayloadTransform | None = None
) -> SendWindow:
    return SendWindow(config, StreamStats(), seal=seal)


def send_all(w: SendWindow, now: float, *, retransmit: bool = True) -> list[Segment]:
    out = []
    while (segment := w.next_segment(now, retransmit=retransmit)) is not None:
        out.append(segment)
    return out


def sack(*seqs: int, ack: int) -> int:
    bits = FLAG
    for seq in seqs:
        bits |= 1 << (seq - ack - 1)
    return bits


def test_a_message_is_cut_into_segments_with_the_trace_on_the_first() -> None:
    w = window()
    w.queue(b"a" * 25, "tp", "ts")
    segments = send_all(w, 0.0)
    assert [(s.seq, s.index, s.count, len(s.payload)) for s in segments] == [
        (1, 0, 3, 10),
        (2, 1, 3, 10),
        (3, 2, 3, 5),
    ]
    assert [(s.traceparent, s.tracestate) for s in segments] == [
        ("tp", "ts"),
        (None, None),
        (None, None),
    ]
    assert (w.buffered_bytes, w.inflight_bytes, w.in_flight) == (25, 25, 3)


def test_the_window_is_counted_in_bytes_and_capped_in_segments() -> None:
    w = window()
    for _ in range(6):
        w.queue(b"x" * 10)
    assert len(send_all(w, 0.0)) == 4  # 40 bytes in flight: the byte window is full
    w.on_ack(seq_to_wire(2), FLAG, 0.1)
    assert [s.seq for s in send_all(w, 0.1)] == [5, 6]
    small = window(ReliableStreamConfig(max_unacked_segments=3))
    for _ in range(5):
        small.queue(b"tiny")
    assert len(send_all(small, 0.0)) == 3  # far under the byte window: the segment cap


def test_one_segment_always_fits_an_empty_window() -> None:
    w = window(ReliableStreamConfig(max_segment_payload_bytes=50, max_unacked_bytes=50))
    w.queue(b"y" * 50)
    w.queue(b"z" * 50)
    assert len(send_all(w, 0.0)) == 1
    w.on_ack(1, FLAG, 0.1)
    assert len(send_all(w, 0.1)) == 1


def test_the_send_buffer_pushes_back_but_admits_one_message_when_empty() -> None:
    w = window()
    assert w.blocked_reason(500) is None  # an empty buffer takes any single message
    w.queue(b"m" * 90)
    assert w.blocked_reason(10) is None
    assert w.blocked_reason(11) == "relay send buffer is full"


def test_a_cumulative_ack_frees_the_window_and_samples_the_rtt() -> None:
    w = window()
    w.queue(b"a" * 10)
    w.queue(b"b" * 10)
    send_all(w, 1.0)
    w.on_ack(seq_to_wire(2), FLAG, 1.3)
    assert (w.snd_una, w.buffered_bytes, w.inflight_bytes) == (3, 0, 0)
    assert w.rtt.srtt == pytest.approx(0.3)
    assert w.stats.rtt_samples == 1
    assert w.deadline() is None


def test_acks_of_seqs_never_sent_are_protocol_violations() -> None:
    w = window()
    w.queue(b"a")
    send_all(w, 0.0)
    with pytest.raises(PeerProtocolViolation, match="ack_beyond_sent"):
        w.on_ack(2, FLAG, 0.1)
    with pytest.raises(PeerProtocolViolation, match="sack_beyond_sent"):
        w.on_ack(0, sack(2, ack=0), 0.1)


def test_rto_expiry_resends_only_the_due_segments_and_backs_off() -> None:
    w = window()
    w.queue(b"a")
    send_all(w, 0.0)
    w.queue(b"b")
    send_all(w, 0.3)
    assert w.deadline() == pytest.approx(0.5)
    w.on_timer(0.5)
    assert [(s.seq, s.transmissions) for s in send_all(w, 0.5)] == [(1, 2)]
    assert (w.stats.rto_expiries, w.stats.retransmissions) == (1, 1)
    assert w.rtt.rto_s == pytest.approx(1.0)  # doubled
    w.on_ack(seq_to_wire(1), FLAG, 0.6)  # acks a retransmission: no sample (Karn)
    assert w.stats.rtt_samples == 0
    assert w.rtt.rto_s == pytest.approx(1.0)
    w.on_ack(seq_to_wire(2), FLAG, 0.7)  # seq 2 was sent once: a valid sample
    assert w.rtt.srtt == pytest.approx(0.4)
    assert w.rtt.backoff == 0


def test_without_retransmission_nothing_is_resent() -> None:
    w = window()
    w.queue(b"a")
    send_all(w, 0.0, retransmit=False)
    w.on_timer(10.0)
    assert send_all(w, 10.0, retransmit=False) == []


def test_selective_acks_trigger_one_fast_retransmission() -> None:
    w = window()
    for i in range(FAST_RETRANSMIT_SACKS + 1):
        w.queue(bytes([65 + i]))
    send_all(w, 0.0)
    w.on_ack(0, sack(2, 3, ack=0), 0.05)
    assert send_all(w, 0.05) == []  # two SACKs above seq 1: not yet lost
    w.on_ack(0, sack(2, 3, 4, ack=0), 0.06)
    (resent,) = send_all(w, 0.06)
    assert (resent.seq, resent.transmissions, resent.is_repair) == (1, 2, True)
    assert w.stats.fast_retransmits == 1
    # The repair timeout (2 x SRTT here) is shorter than the RTO, and does not back off.
    assert w.rtt.repair_s < w.rtt.rto_s
    assert w.deadline() == pytest.approx(0.06 + w.rtt.repair_s)
    w.on_timer(0.06 + w.rtt.repair_s)
    (again,) = send_all(w, 0.2)
    assert (again.seq, again.transmissions, again.is_repair) == (1, 3, False)
    assert w.stats.fast_retransmits == 2 and w.rtt.backoff == 0


def test_resume_resends_everything_not_selectively_acknowledged() -> None:
    w = window()
    for payload in (b"1", b"2", b"3"):
        w.queue(payload)
    send_all(w, 0.0)
    w.on_ack(0, sack(2, ack=0), 0.1)
    w.mark_all_for_resend()
    assert [s.seq for s in send_all(w, 0.2)] == [1, 3]


def test_deadlines_survive_a_clock_that_goes_backwards() -> None:
    w = window()
    w.queue(b"a")
    send_all(w, 5.0)
    w.queue(b"b")
    send_all(w, 2.0)  # earlier than the first transmission
    assert w.deadline() == pytest.approx(2.0 + w.rtt.rto_s)


def test_legacy_messages_are_unsegmented_and_not_retained() -> None:
    w = window()
    w.queue(b"probe")  # sent while probing, with a window seq
    send_all(w, 0.0, retransmit=False)
    w.queue(b"waiting")
    w.forget_in_flight()  # the peer turned out legacy
    assert (w.in_flight, w.legacy_seq) == (0, 3)
    w.queue_unsegmented(b"z" * 25)  # one frame whatever the segment size
    first, second = w.pop_unsent(), w.pop_unsent()
    assert first is not None and second is not None and w.pop_unsent() is None
    assert (first.seq, first.payload) == (2, b"waiting")
    assert (second.seq, second.index, second.count, len(second.payload)) == (3, 0, 1, 25)
    assert w.buffered_bytes == 0


def test_legacy_seqs_start_at_zero_and_wrap_at_u32() -> None:
    w = window()
    w.forget_in_flight()
    w.queue_unsegmented(b"a")
    assert w.legacy_seq == 1
    w.legacy_seq = 0xFFFF_FFFF
    w.queue_unsegmented(b"b")
    assert w.legacy_seq == 0


def test_seal_runs_once_per_segment_in_seq_order_and_retransmits_sealed_bytes() -> None:
    calls: list[tuple[bytes, int, int]] = []

    def seal(plain: bytes, index: int, count: int) -> bytes:
        calls.append((plain, index, count))
        return b"<" + plain[::-1] + b">"

    w = window(seal=seal)
    w.queue(b"0123456789abc")
    w.queue(b"xy")
    sent = send_all(w, 0.0)
    assert calls == [(b"0123456789", 0, 2), (b"abc", 1, 2), (b"xy", 0, 1)]
    assert [s.payload for s in sent] == [b"<9876543210>", b"<cba>", b"<yx>"]
    assert w.buffered_bytes == 12 + 5 + 4  # sealed bytes are what the window holds
    w.on_timer(10.0)
    assert [s.payload for s in send_all(w, 10.0)] == [s.payload for s in sent]
    assert len(calls) == 3


def test_seqs_wrap_on_the_wire_without_running_out() -> None:
    config = ReliableStreamConfig(initial_seq=SEQ_SPACE - 1)
    w = window(config)
    for payload in (b"a", b"b", b"c"):
        w.queue(payload)
    assert [seq_to_wire(s.seq) for s in send_all(w, 0.0)] == [SEQ_SPACE - 1, SEQ_SPACE, 1]
    w.on_ack(1, FLAG, 0.1)  # wire 1 is logical SEQ_SPACE + 1
    assert w.in_flight == 0


def test_rtt_estimator_follows_rfc_6298() -> None:
    rtt = RttEstimator(CONFIG)
    assert rtt.rto_s == 0.5  # nothing measured yet: the initial RTO
    rtt.sample(0.1)
    assert (rtt.srtt, rtt.rttvar) == (pytest.approx(0.1), pytest.approx(0.05))
    assert rtt.rto_s == pytest.approx(0.3)  # SRTT + 4 RTTVAR
    rtt.sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    for _ in range(10):
        rtt.back_off()
    assert rtt.rto_s == CONFIG.max_rto_s  # bounded, backoff included
    rtt.reset_backoff()
    assert rtt.rto_s < CONFIG.max_rto_s
    rtt.sample(0.0)
    assert rtt.rto_s >= CONFIG.min_rto_s
