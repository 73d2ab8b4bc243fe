"""Unit tests of the sans-IO reliable stream between two of our own endpoints."""

from __future__ import annotations

import pytest
from relay_sim import STREAM_ID, Pair, kinds, messages, take_events

from exec_server.relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from exec_server.relay.events import (
    MessageReceived,
    PeerMode,
    PeerModeResolved,
    PeerResumed,
    StreamReset,
)
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    data_frame,
    decode_frame,
    reset_for_peer,
    reset_frame,
)
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig, StreamDropReason
from exec_server.relay.stream_config import SEQ_SPACE, seq_from_wire, seq_to_wire

SMALL = ReliableStreamConfig(
    max_segment_payload_bytes=10,
    max_message_bytes=1000,
    max_unacked_segments=4,
    max_unacked_bytes=40,
    max_send_buffer_bytes=100,
    max_reorder_bytes=40,
    max_receive_buffer_bytes=200,
)


def test_initiator_claims_the_stream_with_a_flagged_resume() -> None:
    pair = Pair()
    frames = pair.out(pair.a)
    assert kinds(frames) == ["resume"]
    assert frames[0].resume.next_seq == 1
    assert frames[0].ack == 0
    assert frames[0].ack_bits == RELIABLE_CAPABILITY_BIT
    assert pair.a.mode is PeerMode.PROBING


def test_negotiation_resolves_both_sides_within_one_round_trip() -> None:
    pair = Pair()
    pair.a.send_message(b"initialize", pair.now)
    pair.deliver(pair.b, pair.out(pair.a))
    assert pair.b.mode is PeerMode.RELIABLE
    assert pair.received_b == [b"initialize"]
    reply = pair.out(pair.b)  # immediate ack so the initiator resolves quickly
    assert kinds(reply) == ["ack_frame"]
    assert reply[0].ack == 1
    pair.deliver(pair.a, reply)
    assert pair.a.mode is PeerMode.RELIABLE


def test_mode_resolution_is_an_event() -> None:
    fresh = ReliableStream("s", initiator=False, now=0.0)
    fresh.receive_frame(data_frame("s", 1, b"x", ack_bits=RELIABLE_CAPABILITY_BIT), 0.0)
    assert take_events(fresh) == [
        PeerModeResolved("s", PeerMode.RELIABLE),
        MessageReceived("s", b"x"),
    ]


def test_messages_flow_both_ways_in_order_with_piggybacked_acks() -> None:
    pair = Pair()
    pair.open()
    for i in range(5):
        pair.a.send_message(f"req{i}".encode(), pair.now)
    pair.flush()
    for i in range(5):
        pair.b.send_message(f"resp{i}".encode(), pair.now)
    frames = pair.out(pair.b)
    assert all(f.ack == 5 for f in frames)  # every frame carries the cumulative ack
    pair.deliver(pair.a, frames)
    pair.settle()
    assert pair.received_b == [f"req{i}".encode() for i in range(5)]
    assert pair.received_a == [f"resp{i}".encode() for i in range(5)]
    assert pair.a.unacked_segments == pair.b.unacked_segments == 0
    assert pair.a.buffered_send_bytes == pair.b.buffered_send_bytes == 0


def test_large_messages_are_segmented_and_reassembled() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    message = bytes(range(256)) * 2  # 512 bytes -> 52 segments of <= 10 bytes
    pair.a.send_message(message, pair.now)
    first = pair.out(pair.a)
    assert len(first) == 4  # window: 4 segments
    assert [f.data.segment_index for f in first] == [0, 1, 2, 3]
    assert {f.data.segment_count for f in first} == {52}
    assert [f.data.seq for f in first] == [1, 2, 3, 4]
    pair.deliver(pair.b, first)
    pair.settle()
    assert pair.received_b == [message]
    assert pair.a.stats.data_frames_sent == 52
    assert pair.a.stats.retransmissions == 0


def test_trace_context_rides_on_the_first_segment() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    pair.a.send_message(b"x" * 25, pair.now, traceparent="tp", tracestate="ts")
    frames = pair.out(pair.a)
    assert [f.traceparent is not None for f in frames] == [True, False, False]
    events = []
    for frame in frames:
        pair.b.receive_frame(frame, pair.now)
    events = take_events(pair.b)
    assert events == [MessageReceived(STREAM_ID, b"x" * 25, "tp", "ts")]


def test_standalone_ack_is_delayed_to_batch() -> None:
    pair = Pair(config=ReliableStreamConfig(ack_delay_s=0.05))
    pair.open()
    pair.a.send_message(b"one", pair.now)
    pair.deliver(pair.b, pair.out(pair.a))
    assert pair.out(pair.b) == []
    assert pair.b.get_timer() == pytest.approx(pair.now + 0.05)
    pair.a.send_message(b"two", pair.now + 0.01)
    pair.now += 0.01
    pair.deliver(pair.b, pair.out(pair.a))
    pair.now += 0.04
    acks = pair.out(pair.b)
    assert kinds(acks) == ["ack_frame"]
    assert acks[0].ack == 2  # one ack for both


def test_lost_segment_is_retransmitted_after_the_rto_with_backoff() -> None:
    pair = Pair()
    pair.open()
    rto = pair.a.rto_s
    pair.a.send_message(b"lost", pair.now)
    lost = pair.out(pair.a)
    assert pair.a.get_timer() == pytest.approx(pair.now + rto)
    pair.advance(rto)
    again = pair.out(pair.a)
    assert kinds(again) == ["data"]
    assert again[0].data.seq == lost[0].data.seq
    assert pair.a.stats.retransmissions == 1
    assert pair.a.rto_s == pytest.approx(min(2 * rto, pair.config.max_rto_s))
    pair.advance(pair.a.rto_s)
    assert pair.out(pair.a)[0].data.seq == lost[0].data.seq
    pair.deliver(pair.b, pair.out(pair.a))
    pair.settle()
    assert pair.received_b == [b"lost"]
    assert pair.a.stats.rtt_samples == 0  # Karn: a resent segment gives no RTT sample


def test_rtt_estimate_follows_samples_and_respects_bounds() -> None:
    config = ReliableStreamConfig(min_rto_s=0.05, initial_rto_s=0.5, max_rto_s=2.0)
    pair = Pair(config=config)
    pair.open()
    for _ in range(20):
        pair.a.send_message(b"ping", pair.now)
        frames = pair.out(pair.a)
        pair.now += 0.1  # 100 ms one way
        pair.deliver(pair.b, frames)
        pair.b.send_message(b"pong", pair.now)
        frames = pair.out(pair.b)
        pair.now += 0.1
        pair.deliver(pair.a, frames)
    assert 0.05 <= pair.a.rto_s <= 0.5
    assert pair.a.rto_s >= 0.2  # srtt 0.2 plus a variance term
    assert pair.a.stats.retransmissions == 0


def test_karn_no_rtt_sample_from_retransmitted_segments() -> None:
    pair = Pair()
    pair.open()
    samples = pair.a.stats.rtt_samples
    pair.a.send_message(b"x", pair.now)
    pair.out(pair.a)  # lost
    pair.advance(pair.a.rto_s)
    pair.deliver(pair.b, pair.out(pair.a))
    pair.settle()
    assert pair.received_b == [b"x"]
    assert pair.a.stats.rtt_samples == samples


def test_duplicates_are_suppressed_and_acked() -> None:
    pair = Pair()
    pair.open()
    pair.a.send_message(b"once", pair.now)
    frames = pair.out(pair.a)
    pair.deliver(pair.b, frames + frames + frames)
    assert pair.received_b == [b"once"]
    assert pair.b.stats.duplicates_received == 2
    assert kinds(pair.out(pair.b)) == ["ack_frame"]  # duplicate: ack at once


def test_out_of_order_segments_are_buffered_and_selectively_acked() -> None:
    pair = Pair()
    pair.open()
    for i in range(3):
        pair.a.send_message(f"m{i}".encode(), pair.now)
    f0, f1, f2 = pair.out(pair.a)
    pair.deliver(pair.b, [f2])
    assert pair.received_b == []
    ack = pair.out(pair.b)
    assert kinds(ack) == ["ack_frame"]
    assert ack[0].ack == 0
    # bit i acknowledges ack + 1 + i: seq 3 is bit 2; bit 0 is the capability flag
    assert ack[0].ack_bits == RELIABLE_CAPABILITY_BIT | (1 << 2)
    pair.deliver(pair.a, ack)
    pair.advance(pair.a.rto_s)
    resent = pair.out(pair.a)
    assert sorted(f.data.seq for f in resent) == [1, 2]  # the sacked seq 3 is not resent
    pair.deliver(pair.b, [f1, f0])
    assert pair.received_b == [b"m0", b"m1", b"m2"]


def test_send_window_limits_segments_in_flight() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    for i in range(6):
        pair.a.send_message(f"{i}".encode(), pair.now)
    assert len(pair.out(pair.a)) == 4
    assert pair.a.unacked_segments == 4
    assert pair.out(pair.a) == []
    pair.settle()
    assert pair.received_b == [f"{i}".encode() for i in range(6)]


def test_send_window_limits_bytes_in_flight() -> None:
    config = ReliableStreamConfig(
        max_segment_payload_bytes=10, max_unacked_bytes=25, max_send_buffer_bytes=1000
    )
    pair = Pair(config=config)
    pair.open()
    pair.a.send_message(b"x" * 50, pair.now)
    assert len(pair.out(pair.a)) == 2
    assert pair.a.inflight_bytes == 20


def test_send_buffer_pushes_back_then_reopens() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    pair.a.send_message(b"x" * 60, pair.now)
    assert pair.a.can_send(40)
    pair.a.send_message(b"y" * 40, pair.now)
    assert not pair.a.can_send(1)
    with pytest.raises(SendBlocked):
        pair.a.send_message(b"z", pair.now)
    pair.settle()
    assert pair.a.can_send(100)
    assert pair.received_b == [b"x" * 60, b"y" * 40]


def test_one_message_is_always_admitted_into_an_empty_buffer() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    pair.a.send_message(b"m" * 500, pair.now)  # > max_send_buffer_bytes, <= max_message_bytes
    assert not pair.a.can_send(1)
    pair.settle()
    assert pair.received_b == [b"m" * 500]


def test_oversized_and_empty_messages_are_refused() -> None:
    pair = Pair(config=SMALL)
    pair.open()
    with pytest.raises(MessageTooLarge):
        pair.a.send_message(b"m" * 1001, pair.now)
    with pytest.raises(ValueError):
        pair.a.send_message(b"", pair.now)


def test_probing_initiator_blocks_messages_that_need_segmentation() -> None:
    pair = Pair(config=SMALL)
    assert pair.a.mode is PeerMode.PROBING
    assert not pair.a.can_send(11)
    with pytest.raises(SendBlocked, match="negotiated"):
        pair.a.send_message(b"x" * 11, pair.now)
    pair.a.send_message(b"x" * 10, pair.now)  # one segment is fine
    pair.open()
    assert pair.a.can_send(11)
    pair.a.send_message(b"x" * 11, pair.now)


def test_probing_initiator_repeats_its_claim_but_never_its_data() -> None:
    pair = Pair()
    pair.a.send_message(b"lost", pair.now)
    assert kinds(pair.out(pair.a)) == ["resume", "data"]  # both lost
    for _ in range(3):
        pair.now = pair.a.get_timer() or 0.0
        pair.a.handle_timer(pair.now)
        assert kinds(pair.out(pair.a)) == ["resume"]
    pair.deliver(pair.b, pair.out(pair.a) or [])
    pair.now = pair.a.get_timer() or 0.0
    pair.a.handle_timer(pair.now)
    claim = pair.out(pair.a)
    pair.deliver(pair.b, claim)
    pair.deliver(pair.a, pair.out(pair.b))  # the acceptor's ack resolves the initiator
    assert pair.a.mode is PeerMode.RELIABLE
    pair.settle()
    assert pair.received_b == [b"lost"]  # now retransmitted


def test_negotiation_timeout_falls_back_to_legacy_and_conflicts_are_reset() -> None:
    pair = Pair(config=ReliableStreamConfig(negotiation_timeout_s=2.0))
    pair.out(pair.a)
    pair.now = 2.0
    pair.a.handle_timer(pair.now)
    assert pair.a.mode is PeerMode.LEGACY
    pair.a.receive_frame(data_frame(STREAM_ID, 1, b"late", ack_bits=1), pair.now)
    assert pair.a.is_closed
    events = take_events(pair.a)
    assert StreamReset(STREAM_ID, "negotiation_conflict", remote=False) in events
    assert kinds(pair.out(pair.a)) == ["reset"]


def test_reconnect_resumes_and_loses_nothing() -> None:
    pair = Pair()
    pair.open()
    for i in range(3):
        pair.a.send_message(f"a{i}".encode(), pair.now)
        pair.b.send_message(f"b{i}".encode(), pair.now)
    pair.out(pair.a)
    pair.out(pair.b)  # everything in flight is lost with the socket
    pair.a.connection_lost(pair.now)
    pair.a.send_message(b"while-down", pair.now)
    assert pair.a.frames_to_send(pair.now) == []
    assert pair.a.get_timer() is not None  # the idle timer keeps running
    pair.now += 1.0
    pair.a.on_reconnect(pair.now)
    frames = pair.out(pair.a)
    assert kinds(frames)[0] == "resume"
    assert frames[0].resume.next_seq == 4  # 3 sent, the next never sent
    for frame in frames:
        pair.b.receive_frame(frame, pair.now)
    events = take_events(pair.b)
    assert PeerResumed(STREAM_ID, 4) in events
    pair.received_b += messages(events)
    pair.settle()
    assert pair.received_b == [b"a0", b"a1", b"a2", b"while-down"]
    assert pair.received_a == [b"b0", b"b1", b"b2"]


def test_peer_resume_triggers_immediate_resend_and_ack() -> None:
    pair = Pair()
    pair.open()
    pair.b.send_message(b"reply", pair.now)
    pair.out(pair.b)  # lost
    pair.a.on_reconnect(pair.now)
    pair.deliver(pair.b, pair.out(pair.a))
    frames = pair.out(pair.b)
    assert "data" in kinds(frames)  # resent without waiting for the RTO
    pair.deliver(pair.a, frames)
    assert pair.received_a == [b"reply"]


def test_local_reset_sends_reset_and_peer_sees_remote_reset() -> None:
    pair = Pair()
    pair.open()
    pair.a.reset("client_gone")
    assert pair.a.is_closed
    frames = pair.out(pair.a)
    assert kinds(frames) == ["reset"]
    assert frames[0].reset.reason == "client_gone"
    pair.b.receive_frame(frames[0], pair.now)
    assert take_events(pair.b) == [StreamReset(STREAM_ID, "client_gone", remote=True)]
    with pytest.raises(StreamClosed):
        pair.b.send_message(b"x", pair.now)
    assert pair.out(pair.a) == []
    assert pair.a.is_finished


def test_ack_beyond_what_was_sent_is_a_protocol_error() -> None:
    pair = Pair()
    pair.open()
    pair.a.receive_frame(
        data_frame(STREAM_ID, 1, b"x", ack=7, ack_bits=RELIABLE_CAPABILITY_BIT), pair.now
    )
    events = take_events(pair.a)
    assert events[-1] == StreamReset(STREAM_ID, "protocol_error:ack_beyond_sent", remote=False)
    frames = pair.out(pair.a)
    assert kinds(frames) == ["reset"]
    assert frames[0].reset.reason == "protocol_error:ack_beyond_sent"


def test_selective_ack_beyond_what_was_sent_is_a_protocol_error() -> None:
    pair = Pair()
    pair.open()
    pair.a.receive_frame(
        data_frame(STREAM_ID, 1, b"x", ack=0, ack_bits=RELIABLE_CAPABILITY_BIT | 0b100),
        pair.now,
    )
    assert pair.a.close_reason == "protocol_error:sack_beyond_sent"


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ([(1, 1, 2)], "protocol_error:segment_out_of_order"),
        ([(1, 0, 2), (2, 0, 2)], "protocol_error:segment_mismatch"),
        ([(1, 0, 2), (2, 1, 3)], "protocol_error:segment_mismatch"),
        ([(1, 0, 200), (2, 1, 200)], "protocol_error:message_too_large"),
    ],
)
def test_reassembly_violations_reset_the_stream(
    segments: list[tuple[int, int, int]], reason: str
) -> None:
    stream = ReliableStream(STREAM_ID, initiator=False, now=0.0, config=SMALL)
    for seq, index, count in segments:
        stream.receive_frame(
            data_frame(
                STREAM_ID,
                seq,
                b"p" * 600,
                segment_index=index,
                segment_count=count,
                ack_bits=RELIABLE_CAPABILITY_BIT,
            )
            if reason.endswith("too_large")
            else data_frame(
                STREAM_ID,
                seq,
                b"p",
                segment_index=index,
                segment_count=count,
                ack_bits=RELIABLE_CAPABILITY_BIT,
            ),
            0.0,
        )
    assert stream.close_reason == reason
    assert stream.reassembly_bytes == 0


def test_idle_reliable_stream_sends_heartbeats() -> None:
    config = ReliableStreamConfig(heartbeat_interval_s=5.0, idle_timeout_s=20.0)
    pair = Pair(config=config)
    pair.open()
    sent_before = pair.a.stats.heartbeats_sent
    for _ in range(10):
        pair.advance(5.0)
        pair.flush()
    assert pair.a.stats.heartbeats_sent > sent_before
    assert not pair.a.is_closed and not pair.b.is_closed


def test_silent_peer_times_out() -> None:
    config = ReliableStreamConfig(heartbeat_interval_s=5.0, idle_timeout_s=20.0)
    pair = Pair(config=config)
    pair.open()
    while not pair.a.is_closed:
        pair.now = pair.a.get_timer() or pair.now
        pair.a.handle_timer(pair.now)
        pair.out(pair.a)  # heartbeats go nowhere
    assert pair.a.close_reason == "idle_timeout"
    assert pair.now == pytest.approx(20.0, abs=0.1)
    assert StreamReset(STREAM_ID, "idle_timeout", remote=False) in take_events(pair.a)


def test_receiver_withholds_acks_until_the_owner_reads() -> None:
    config = ReliableStreamConfig(
        max_segment_payload_bytes=10,
        max_unacked_bytes=40,
        max_reorder_bytes=40,
        max_receive_buffer_bytes=20,
    )
    a = ReliableStream("s", initiator=True, now=0.0, config=config)
    b = ReliableStream("s", initiator=False, now=0.0, config=config)
    for i in range(4):
        a.send_message(f"msg{i}".encode() * 2, 0.0)  # 8 bytes each
    for frame in a.frames_to_send(0.0):
        b.receive_frame(frame, 0.0)
    # 3 messages (24 bytes) fill the 20-byte budget; the 4th is dropped unacked
    assert b.undelivered_bytes == 24
    assert b.stats.dropped[StreamDropReason.RECEIVE_BUFFER_FULL] == 1
    frames = b.frames_to_send(0.0)
    assert frames[-1].ack == 3
    events = take_events(b)  # the owner reads: ask the peer to resend now
    assert len(messages(events)) == 3
    nudge = b.frames_to_send(0.0)
    assert kinds(nudge) == ["resume"]
    for frame in frames + nudge:
        a.receive_frame(frame, 0.0)
    for frame in a.frames_to_send(0.0):
        b.receive_frame(frame, 0.0)
    assert messages(take_events(b)) == [b"msg3msg3"]


def test_acceptor_can_be_pinned_to_legacy() -> None:
    stream = ReliableStream(
        "s", initiator=False, now=0.0, config=ReliableStreamConfig(allow_reliable=False)
    )
    stream.receive_frame(data_frame("s", 1, b"x", ack_bits=RELIABLE_CAPABILITY_BIT), 0.0)
    assert stream.mode is PeerMode.LEGACY
    assert messages(take_events(stream)) == [b"x"]
    stream.send_message(b"y", 0.0)
    (frame,) = stream.frames_to_send(0.0)
    assert (frame.ack, frame.ack_bits, frame.data.seq) == (0, 0, 0)


def test_seq_wire_mapping_skips_zero_and_wraps() -> None:
    assert seq_to_wire(0) == 0
    assert seq_to_wire(1) == 1
    assert seq_to_wire(SEQ_SPACE) == SEQ_SPACE == 2**32 - 1
    assert seq_to_wire(SEQ_SPACE + 1) == 1
    assert seq_from_wire(1, SEQ_SPACE) == SEQ_SPACE + 1
    assert seq_from_wire(SEQ_SPACE, SEQ_SPACE + 2) == SEQ_SPACE
    assert seq_from_wire(5, 3) == 5
    assert seq_from_wire(2, 10) == 2
    for reference in (1, 1000, SEQ_SPACE - 3, 5 * SEQ_SPACE + 17):
        for delta in (-40, -1, 0, 1, 40):
            true = reference + delta
            if true >= 1:
                assert seq_from_wire(seq_to_wire(true), reference) == true


def test_streams_cross_the_u32_wrap() -> None:
    config = ReliableStreamConfig(initial_seq=SEQ_SPACE - 5, max_segment_payload_bytes=4)
    pair = Pair(config=config)
    pair.open()
    sent = [f"msg-{i}".encode() for i in range(12)]  # 2 segments each: crosses the wrap
    for m in sent:
        pair.a.send_message(m, pair.now)
        pair.b.send_message(m, pair.now)
    frames = pair.out(pair.a)
    seqs = [f.data.seq for f in frames if f.kind == "data"]
    assert SEQ_SPACE in seqs and 1 in seqs and 0 not in seqs
    pair.deliver(pair.b, frames)
    pair.settle()
    assert pair.received_b == sent
    assert pair.received_a == sent


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_unacked_segments"):
        ReliableStreamConfig(max_unacked_segments=257)
    with pytest.raises(ValueError, match="max_segment_payload_bytes"):
        ReliableStreamConfig(max_segment_payload_bytes=10, max_unacked_bytes=5)
    with pytest.raises(ValueError, match="rto"):
        ReliableStreamConfig(min_rto_s=1.0, initial_rto_s=0.5)


@pytest.mark.parametrize("flag", [0, RELIABLE_CAPABILITY_BIT])
def test_a_reset_is_terminal_whatever_its_capability_flag(flag: int) -> None:
    """Resets also come from outside the stream (the rendezvous giving up on the peer);
    an unflagged one must not be dropped as a mode mismatch on a reliable stream."""
    pair = Pair()
    pair.a.send_message(b"x", pair.now)
    pair.deliver(pair.b, pair.out(pair.a))
    pair.deliver(pair.a, pair.out(pair.b))
    assert pair.a.mode is PeerMode.RELIABLE
    pair.a.receive_frame(reset_frame(STREAM_ID, "environment_offline", ack_bits=flag), pair.now)
    assert pair.a.is_closed and pair.a.close_reason == "environment_offline"
    assert StreamReset(STREAM_ID, "environment_offline", True) in take_events(pair.a)
    assert pair.out(pair.a) == []  # a reset is never answered


def test_reset_for_peer_mirrors_the_flag() -> None:
    assert decode_frame(reset_for_peer("s", "r", reliable=True)).ack_bits == RELIABLE_CAPABILITY_BIT
    frame = decode_frame(reset_for_peer("s", "r", reliable=False))
    assert (frame.ack_bits, frame.reset.reason) == (0, "r")
