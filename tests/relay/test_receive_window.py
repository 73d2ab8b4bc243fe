"""The receive window on its own, driven without a stream.

Data frames are built as a sender would put them on the wire (wire seqs from 1).
"""

from __future__ import annotations

import pytest

from exec_server.relay.frame_codec import RELIABLE_CAPABILITY_BIT as FLAG
from exec_server.relay.frame_codec import DataBody, RelayFrame, data_frame
from exec_server.relay.receive_window import Delivered, ReceiveWindow
from exec_server.relay.send_window import PayloadTransform
from exec_server.relay.stream_config import (
    MAX_WINDOW_SEGMENTS,
    SEQ_SPACE,
    PeerProtocolViolation,
    ReliableStreamConfig,
    StreamDropReason,
    StreamStats,
)

CONFIG = ReliableStreamConfig(
    max_message_bytes=100,
    max_reorder_bytes=20,
    ack_delay_s=0.02,
    ack_every_segments=3,
)


def window(
    config: ReliableStreamConfig = CONFIG, unseal: PayloadTransform | None = None
) -> ReceiveWindow:
    return ReceiveWindow(config, StreamStats(), unseal=unseal)


def frame(
    seq: int,
    payload: bytes,
    index: int = 0,
    count: int = 1,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> RelayFrame:
    return data_frame(
        "s",
        seq,
        payload,
        segment_index=index,
        segment_count=count,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def give(w: ReceiveWindow, f: RelayFrame, now: float = 0.0, *, full: bool = False) -> list[bytes]:
    out: list[Delivered] = []
    assert isinstance(f.body, DataBody)
    w.on_data(f, f.body, now, out, buffer_full=full)
    return [m.payload for m in out]


def test_in_order_segments_are_released_and_acked_after_a_short_delay() -> None:
    w = window()
    assert w.ack_fields() == (0, FLAG)  # nothing received yet
    assert give(w, frame(1, b"a"), 1.0) == [b"a"]
    assert w.ack_due == pytest.approx(1.02)  # batched with what follows
    assert give(w, frame(2, b"b"), 1.01) == [b"b"]
    assert w.ack_due == pytest.approx(1.02)  # the first deadline stands
    assert w.ack_fields() == (2, FLAG)
    w.ack_sent()
    assert w.ack_due is None


def test_every_few_segments_are_acked_at_once() -> None:
    w = window()
    for seq in (1, 2, 3):
        give(w, frame(seq, b"x"), 1.0)
    assert w.ack_due == 1.0


def test_a_gap_is_held_selectively_acked_and_filled() -> None:
    w = window()
    assert give(w, frame(2, b"b"), 1.0) == []
    assert give(w, frame(4, b"d"), 1.0) == []
    assert w.ack_due == 1.0  # a gap is reported at once
    assert w.ack_fields() == (0, FLAG | 1 << 1 | 1 << 3)  # seqs 2 and 4
    assert (w.reorder_segments, w.reorder_bytes) == (2, 2)
    w.ack_sent()
    assert give(w, frame(1, b"a"), 2.0) == [b"a", b"b"]
    assert w.ack_due == 2.0  # filling a gap is acked at once
    assert w.ack_fields() == (2, FLAG | 1 << 1)
    assert give(w, frame(3, b"c"), 2.0) == [b"c", b"d"]
    assert (w.rcv_nxt, w.reorder_bytes) == (5, 0)


def test_selective_acks_name_only_the_seqs_within_32_of_the_next_expected() -> None:
    w = window(ReliableStreamConfig(max_reorder_bytes=1000))
    for seq in (2, 32, 33):
        give(w, frame(seq, b"x"))
    ack, bits = w.ack_fields()
    assert ack == 0 and bits == FLAG | 1 << 1 | 1 << 31  # seq 33 is past the span


def test_duplicates_and_far_seqs_are_dropped_and_acked_at_once() -> None:
    w = window()
    give(w, frame(1, b"a"))
    give(w, frame(3, b"c"))
    w.ack_sent()
    assert give(w, frame(1, b"a"), 5.0) == [] and w.ack_due == 5.0
    assert give(w, frame(3, b"c"), 5.0) == []
    assert w.stats.duplicates_received == 2
    w.ack_sent()
    assert give(w, frame(2 + MAX_WINDOW_SEGMENTS, b"z"), 6.0) == [] and w.ack_due == 6.0
    assert w.stats.dropped[StreamDropReason.BEYOND_WINDOW] == 1
    assert give(w, frame(0, b"zero")) == []
    assert w.stats.dropped[StreamDropReason.BAD_SEQ] == 1


def test_the_reorder_buffer_is_bounded_in_bytes() -> None:
    w = window()
    give(w, frame(2, b"x" * 15))
    give(w, frame(3, b"y" * 6))  # 21 > 20 bytes
    assert w.reorder_segments == 1
    assert w.stats.dropped[StreamDropReason.REORDER_BUFFER_FULL] == 1


def test_a_full_receive_buffer_drops_unacknowledged_and_remembers_it() -> None:
    w = window()
    assert give(w, frame(1, b"a"), full=True) == []
    assert w.starved and w.ack_due is None and w.rcv_nxt == 1
    assert w.stats.dropped[StreamDropReason.RECEIVE_BUFFER_FULL] == 1


def test_segmented_messages_are_reassembled_with_the_first_segments_trace() -> None:
    w = window()
    first = frame(1, b"he", 0, 3, traceparent="tp", tracestate="ts")
    assert give(w, first) == []
    assert w.reassembly_bytes == 2
    give(w, frame(3, b"o!", 2, 3))
    out: list[Delivered] = []
    second = frame(2, b"ll", 1, 3)
    assert isinstance(second.body, DataBody)
    w.on_data(second, second.body, 0.0, out)
    assert out == [Delivered(b"hello!", "tp", "ts")]
    assert w.reassembly_bytes == 0


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([frame(1, b"x", 1, 2)], "segment_out_of_order"),
        ([frame(1, b"x", 0, 3), frame(2, b"y", 1, 2)], "segment_mismatch"),
        ([frame(1, b"x", 0, 3), frame(2, b"y", 2, 3)], "segment_mismatch"),
        ([frame(1, b"x" * 60, 0, 2), frame(2, b"y" * 41, 1, 2)], "message_too_large"),
    ],
)
def test_reassembly_violations_are_protocol_errors(frames: list[RelayFrame], reason: str) -> None:
    w = window(ReliableStreamConfig(max_message_bytes=100))
    with pytest.raises(PeerProtocolViolation, match=reason):
        for f in frames:
            give(w, f)


def test_messages_completed_before_a_violation_are_still_handed_out() -> None:
    w = window()
    give(w, frame(2, b"bad", 1, 2))  # held out of order
    out: list[Delivered] = []
    first = frame(1, b"ok")
    assert isinstance(first.body, DataBody)
    with pytest.raises(PeerProtocolViolation):
        w.on_data(first, first.body, 0.0, out)
    assert [m.payload for m in out] == [b"ok"]


def test_unseal_runs_once_per_segment_in_seq_order() -> None:
    calls: list[tuple[bytes, int, int]] = []

    def unseal(sealed: bytes, index: int, count: int) -> bytes:
        calls.append((sealed, index, count))
        return sealed.upper()

    w = window(unseal=unseal)
    give(w, frame(3, b"c"))
    give(w, frame(2, b"b", 1, 2))
    assert calls == []  # held out of order: not opened yet
    assert give(w, frame(1, b"a", 0, 2)) == [b"AB", b"C"]
    assert calls == [(b"a", 0, 2), (b"b", 1, 2), (b"c", 0, 1)]


def test_an_unseal_failure_is_a_protocol_error() -> None:
    def unseal(sealed: bytes, index: int, count: int) -> bytes:
        raise PeerProtocolViolation("noise_decrypt_failed")

    w = window(unseal=unseal)
    with pytest.raises(PeerProtocolViolation, match="noise_decrypt_failed"):
        give(w, frame(1, b"a"))


def test_wire_seqs_wrap_past_u32() -> None:
    w = window(ReliableStreamConfig(initial_seq=SEQ_SPACE))
    assert give(w, frame(SEQ_SPACE, b"last")) == [b"last"]
    assert give(w, frame(1, b"wrapped")) == [b"wrapped"]
    assert w.ack_fields() == (1, FLAG)


def test_clear_drops_everything() -> None:
    w = window()
    give(w, frame(2, b"b"))
    give(w, frame(3, b"c", 0, 2))
    w.clear()
    assert (w.reorder_segments, w.reorder_bytes, w.reassembly_bytes, w.ack_due) == (0, 0, 0, None)
