"""Framing process output in place: a message built with ``message_with_headroom`` is sent
as its frame's head written in front of it, byte for byte the frame ``encode_frame`` makes,
and the stream keeps it unchanged for retransmission."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.relay.events import MessageReceived
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    U32_MAX,
    DataBody,
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.relay.frame_encoder import (
    FRAME_HEADROOM,
    HeadroomBuffer,
    encode_frame_for_socket,
    frame_message_in_place,
    is_whole_message,
    message_with_headroom,
)
from exec_server.relay.send_window import SendWindow
from exec_server.relay.stream_config import ReliableStreamConfig, StreamStats
from exec_server.relay.stream_mux import MuxRole, StreamMux

PICOWS_HEADROOM = 14
LONGEST_STREAM_ID = "s" * 128


def framed(
    stream_id: str, seq: int, message: memoryview, *, ack: int = 0, ack_bits: int = 0
) -> RelayFrame:
    """A data frame carrying ``message`` as a reliable stream builds it."""
    frame = data_frame(stream_id, seq, b"", ack=ack, ack_bits=ack_bits)
    assert isinstance(frame.body, DataBody)
    body = DataBody(frame.body.seq, 0, 1, message)  # type: ignore[arg-type]
    return RelayFrame(frame.version, stream_id, ack, ack_bits, body, None, None)


@settings(max_examples=200, deadline=None)
@given(
    stream_id=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128
    ),
    seq=st.integers(1, U32_MAX),
    ack=st.integers(0, U32_MAX),
    ack_bits=st.integers(0, U32_MAX),
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=4).filter(lambda p: any(p)),
)
def test_a_frame_in_place_is_the_bytes_encode_frame_makes(
    stream_id: str, seq: int, ack: int, ack_bits: int, parts: list[bytes]
) -> None:
    message = message_with_headroom(*parts)
    assert bytes(message) == b"".join(parts)
    frame = framed(stream_id, seq, message, ack=ack, ack_bits=ack_bits)
    out = encode_frame_for_socket(frame, PICOWS_HEADROOM, set())
    assert type(out) is memoryview  # the largest head fits the headroom: no copy
    expected = encode_frame(data_frame(stream_id, seq, b"".join(parts), ack=ack, ack_bits=ack_bits))
    assert bytes(out) == expected
    assert bytes(message) == b"".join(parts)  # the message itself is untouched


def test_the_largest_head_fits_the_headroom() -> None:
    message = message_with_headroom(b"x" * 300_000)
    frame = framed(LONGEST_STREAM_ID, U32_MAX, message, ack=U32_MAX, ack_bits=U32_MAX)
    out = encode_frame_for_socket(frame, PICOWS_HEADROOM, set())
    assert type(out) is memoryview
    assert len(message.obj) - len(out) >= 0  # type: ignore[arg-type]
    assert decode_frame(bytes(out)) == decode_frame(
        encode_frame(
            data_frame(LONGEST_STREAM_ID, U32_MAX, b"x" * 300_000, ack=U32_MAX, ack_bits=U32_MAX)
        )
    )


def test_a_message_met_twice_in_one_batch_is_copied_the_second_time() -> None:
    message = message_with_headroom(b'{"method":"x"}')
    seen: set[int] = set()
    first = encode_frame_for_socket(framed("s", 1, message, ack=1), PICOWS_HEADROOM, seen)
    first_bytes = bytes(first)
    # A longer head for the same message would overwrite the bytes in front of the first.
    second = encode_frame_for_socket(framed("s", 1, message, ack=U32_MAX), PICOWS_HEADROOM, seen)
    assert type(first) is memoryview
    assert type(second) is bytearray
    assert bytes(first) == first_bytes
    assert bytes(second[PICOWS_HEADROOM:]) == encode_frame(
        data_frame("s", 1, b'{"method":"x"}', ack=U32_MAX)
    )


def test_other_payloads_and_trace_context_are_copied_behind_the_headroom() -> None:
    plain = data_frame("s", 1, b"payload")
    out = encode_frame_for_socket(plain, PICOWS_HEADROOM, set())
    assert type(out) is bytearray and bytes(out[PICOWS_HEADROOM:]) == encode_frame(plain)

    message = message_with_headroom(b"payload")
    traced = framed("s", 1, message)
    traced = RelayFrame(
        traced.version, "s", 0, 0, traced.body, "00-" + "1" * 32 + "-" + "2" * 16 + "-01", None
    )
    out = encode_frame_for_socket(traced, PICOWS_HEADROOM, set())
    assert type(out) is bytearray
    assert decode_frame(bytes(out[PICOWS_HEADROOM:])) == decode_frame(
        encode_frame(data_frame("s", 1, b"payload", traceparent=traced.traceparent))
    )
    # A view of some other bytearray is not a message with headroom.
    foreign = memoryview(bytearray(FRAME_HEADROOM) + b"payload")[FRAME_HEADROOM:]
    out = encode_frame_for_socket(framed("s", 1, foreign), PICOWS_HEADROOM, set())
    assert type(out) is bytearray
    assert isinstance(message.obj, HeadroomBuffer)


def test_the_send_window_keeps_a_whole_message_and_copies_one_it_splits() -> None:
    config = ReliableStreamConfig(max_segment_payload_bytes=1024)
    window = SendWindow(config, StreamStats())
    whole = message_with_headroom(b"a" * 1000)
    window.queue(whole)
    split = message_with_headroom(b"b" * 1500)
    window.queue(split)
    first = window.next_segment(0.0, retransmit=True)
    assert first is not None and first.payload is whole
    pieces = [window.next_segment(0.0, retransmit=True) for _ in range(2)]
    assert [type(p.payload) for p in pieces if p is not None] == [bytes, bytes]
    assert b"".join(bytes(p.payload) for p in pieces if p is not None) == b"b" * 1500


def test_a_sealing_window_seals_bytes() -> None:
    sealed: list[object] = []

    def seal(payload: bytes, index: int, count: int) -> bytes:
        sealed.append(type(payload))
        return payload[::-1]

    window = SendWindow(ReliableStreamConfig(), StreamStats(), seal=seal)
    window.queue(message_with_headroom(b"abc"))
    segment = window.next_segment(0.0, retransmit=True)
    assert sealed == [bytes] and segment is not None and segment.payload == b"cba"


def _link_frames(mux: StreamMux, now: float) -> list[bytes]:
    return [
        bytes(f[PICOWS_HEADROOM:] if type(f) is bytearray else f)
        for f in mux.data_to_write(now, headroom=PICOWS_HEADROOM)
    ]


def test_output_framed_in_place_arrives_whole_and_is_retransmitted_intact() -> None:
    harness = StreamMux(MuxRole.HARNESS)
    env = StreamMux(MuxRole.ENVIRONMENT)
    stream = harness.open_stream(0.0, "stream-1")
    harness.send_message(stream.stream_id, b'{"id":1}', 0.0)
    for data in harness.data_to_send(0.0):
        env.receive_bytes(data, 0.0)
    assert [type(e) for e in env.events()]  # opened + the request
    messages = [message_with_headroom(b'{"n":', str(i).encode(), b"}") for i in range(3)]
    for message in messages:
        env.send_message("stream-1", message, 0.0)
    frames = env.data_to_write(0.0, headroom=PICOWS_HEADROOM)
    assert sum(type(f) is memoryview for f in frames) == 3
    wire = [bytes(f[PICOWS_HEADROOM:] if type(f) is bytearray else f) for f in frames]
    # The first copy is lost: nothing reaches the harness; the RTO resends the retained views.
    now = env.get_timer()
    assert now is not None
    env.handle_timer(now)
    resent = _link_frames(env, now)
    for data in resent:
        harness.receive_bytes(data, now)
    got = [e.payload for e in harness.events() if isinstance(e, MessageReceived)]
    assert got == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert [decode_frame(w).body for w in wire] == [decode_frame(r).body for r in resent[:3]]
    assert [bytes(m) for m in messages] == got


def test_data_to_send_never_frames_in_place() -> None:
    env = StreamMux(MuxRole.ENVIRONMENT)
    env.receive_bytes(
        encode_frame(data_frame("s", 1, b"hi", ack_bits=RELIABLE_CAPABILITY_BIT)), 0.0
    )
    list(env.events())
    env.send_message("s", message_with_headroom(b"out"), 0.0)
    frames = env.data_to_send(0.0, headroom=PICOWS_HEADROOM)
    assert frames and all(type(f) is bytearray for f in frames)


class _AddsFrames(StreamMux):
    def data_to_send(
        self, now: float, max_bytes: int | None = None, *, headroom: int = 0
    ) -> list[bytes | bytearray]:
        return [b"own", *super().data_to_send(now, max_bytes, headroom=headroom)]


def test_a_subclass_that_adds_frames_gets_them_written() -> None:
    mux = _AddsFrames(MuxRole.ENVIRONMENT)
    assert mux.data_to_write(0.0, headroom=PICOWS_HEADROOM) == [b"own"]


@settings(max_examples=200, deadline=None)
@given(
    stream_id=st.sampled_from(["s", "3f1c2a9e-5b7d-4c1e-9f00-0123456789ab", LONGEST_STREAM_ID]),
    frames=st.lists(
        st.tuples(
            st.integers(0, U32_MAX),  # seq
            st.sampled_from([0, 1, 7, U32_MAX]),  # ack: repeats exercise the head cache
            st.sampled_from([0, RELIABLE_CAPABILITY_BIT, 0x6, U32_MAX]),  # ack_bits
            st.binary(min_size=1, max_size=300),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_a_frame_built_from_its_fields_is_the_bytes_encode_frame_makes(
    stream_id: str, frames: list[tuple[int, int, int, bytes]]
) -> None:
    for seq, ack, ack_bits, payload in frames:
        message = message_with_headroom(payload)
        out = frame_message_in_place(message, stream_id, ack, ack_bits, seq)
        assert out is not None
        assert bytes(out) == encode_frame(
            data_frame(stream_id, seq, payload, ack=ack, ack_bits=ack_bits)
        )
        assert bytes(message) == payload


def test_only_whole_non_empty_messages_are_framed_from_their_fields() -> None:
    message = message_with_headroom(b"payload")
    assert frame_message_in_place(message[1:], "s", 0, 0, 1) is None  # a slice of it
    assert frame_message_in_place(message[::-1], "s", 0, 0, 1) is None
    assert frame_message_in_place(message_with_headroom(), "s", 0, 0, 1) is None  # empty
    foreign = memoryview(bytearray(FRAME_HEADROOM) + b"payload")[FRAME_HEADROOM:]
    assert frame_message_in_place(foreign, "s", 0, 0, 1) is None
    assert not is_whole_message(b"payload")


def _reliable_environment() -> StreamMux:
    env = StreamMux(MuxRole.ENVIRONMENT)
    env.receive_bytes(
        encode_frame(data_frame("s", 1, b"hi", ack_bits=RELIABLE_CAPABILITY_BIT)), 0.0
    )
    list(env.events())
    return env


def test_try_send_now_declines_while_anything_must_go_first() -> None:
    env = _reliable_environment()
    # The request is owed an acknowledgement (a due timer): the writer's pass comes first.
    assert env.has_output_now(0.0)
    assert env.try_send_now("s", message_with_headroom(b"out"), 0.0) is None
    env.data_to_write(0.0, headroom=PICOWS_HEADROOM)
    assert not env.has_output_now(0.0)
    first = env.try_send_now("s", message_with_headroom(b"one"), 0.0)
    assert first is not None
    # Queued behind a paused stream, bytes, or a message split in segments: declined.
    env.pause_output("s")
    assert env.try_send_now("s", message_with_headroom(b"two"), 0.0) is None
    env.resume_output("s")
    assert env.try_send_now("s", memoryview(b"two"), 0.0) is None
    big = message_with_headroom(b"x" * (ReliableStreamConfig().max_segment_payload_bytes + 1))
    assert env.try_send_now("s", big, 0.0) is None
    assert env.try_send_now("unknown", message_with_headroom(b"two"), 0.0) is None
    # Something unsent is queued: a new message waits its turn.
    env.send_message("s", message_with_headroom(b"queued"), 0.0)
    assert env.try_send_now("s", message_with_headroom(b"three"), 0.0) is None
