"""Frame validation: every way a frame can be invalid, and that decoding never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.relay.errors import InvalidFrame, InvalidFrameReason
from exec_server.relay.frame_codec import (
    DEFAULT_MAX_SEGMENT_COUNT,
    INBOUND_LIMITS,
    OUTBOUND_LIMITS,
    FrameLimits,
    HandshakeBody,
    RelayFrame,
    ack_frame,
    data_frame,
    decode_frame,
    encode_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
    truncate_reason,
    validate_frame,
)
from exec_server.relay.proto import relay_v1_pb2 as pb

R = InvalidFrameReason


def raw(**fields: object) -> bytes:
    return pb.RelayMessageFrame(**fields).SerializeToString()  # type: ignore[arg-type]


def reason_of(data: bytes, limits: FrameLimits = INBOUND_LIMITS) -> InvalidFrameReason:
    with pytest.raises(InvalidFrame) as info:
        decode_frame(data, limits)
    return info.value.reason


def data_body(**fields: object) -> pb.RelayData:
    base: dict[str, object] = {"seq": 0, "segment_index": 0, "segment_count": 1, "payload": b"x"}
    base.update(fields)
    return pb.RelayData(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        data_frame("s", 0, b"{}"),
        data_frame("s", 7, b"p", ack=3, ack_bits=5, segment_index=2, segment_count=3),
        ack_frame("s", ack=1, ack_bits=1),
        resume_frame("s", 0),
        reset_frame("s", "test_reset"),
        heartbeat_frame("s"),
        RelayFrame(version=1, stream_id="s", body=HandshakeBody(payload=b"h")),
        data_frame("s", 1, b"p", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
    ],
)
def test_valid_frames_round_trip(frame: RelayFrame) -> None:
    decoded = decode_frame(encode_frame(frame))
    assert decoded == frame
    assert decoded.kind == frame.kind


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", R.UNDECODABLE),
        (b"\x12\x05ab", R.UNDECODABLE),  # truncated length-delimited field
        (b"\x12\x02\xff\xfe" + b"\x4a\x00", R.UNDECODABLE),  # invalid UTF-8 in stream_id
        (raw(version=0, stream_id="s", heartbeat=pb.RelayHeartbeat()), R.BAD_VERSION),
        (raw(version=2, stream_id="s", heartbeat=pb.RelayHeartbeat()), R.BAD_VERSION),
        (raw(stream_id="s", data=data_body()), R.BAD_VERSION),
        (raw(version=1, heartbeat=pb.RelayHeartbeat()), R.MISSING_STREAM_ID),
        (raw(version=1, stream_id="  \t", heartbeat=pb.RelayHeartbeat()), R.MISSING_STREAM_ID),
        (raw(version=1, stream_id=" s", heartbeat=pb.RelayHeartbeat()), R.NON_CANONICAL_STREAM_ID),
        (raw(version=1, stream_id="s\n", heartbeat=pb.RelayHeartbeat()), R.NON_CANONICAL_STREAM_ID),
        (raw(version=1, stream_id="x" * 257, heartbeat=pb.RelayHeartbeat()), R.STREAM_ID_TOO_LONG),
        (raw(version=1, stream_id="é" * 129, heartbeat=pb.RelayHeartbeat()), R.STREAM_ID_TOO_LONG),
        (raw(version=1, stream_id="s"), R.MISSING_BODY),
        (raw(version=1, stream_id="s", ack=3, ack_bits=1), R.MISSING_BODY),
        (raw(version=1, stream_id="s", data=data_body(payload=b"")), R.EMPTY_PAYLOAD),
        (raw(version=1, stream_id="s", data=data_body(segment_count=0)), R.BAD_SEGMENT),
        (raw(version=1, stream_id="s", data=data_body(segment_index=1)), R.BAD_SEGMENT),
        (
            raw(version=1, stream_id="s", data=data_body(segment_index=3, segment_count=3)),
            R.BAD_SEGMENT,
        ),
        (
            raw(
                version=1,
                stream_id="s",
                data=data_body(segment_count=DEFAULT_MAX_SEGMENT_COUNT + 1),
            ),
            R.BAD_SEGMENT,
        ),
        (raw(version=1, stream_id="s", reset=pb.RelayReset()), R.EMPTY_RESET_REASON),
        (
            raw(version=1, stream_id="s", reset=pb.RelayReset(reason="r" * 257)),
            R.RESET_REASON_TOO_LONG,
        ),
        (raw(version=1, stream_id="s", handshake=pb.RelayHandshake()), R.EMPTY_HANDSHAKE),
        (
            raw(version=1, stream_id="s", heartbeat=pb.RelayHeartbeat(), tracestate="t" * 513),
            R.TRACE_CONTEXT_TOO_LONG,
        ),
    ],
)
def test_invalid_frames_are_rejected_with_a_reason(data: bytes, reason: InvalidFrameReason) -> None:
    assert reason_of(data) is reason


def test_empty_bytes_are_a_frame_without_version() -> None:
    # proto3 decodes b"" as all defaults: version 0 is the first rule it breaks.
    assert reason_of(b"") is R.BAD_VERSION


def test_oversize_is_checked_before_decoding() -> None:
    frame = encode_frame(data_frame("s", 0, b"x" * 100))
    limits = FrameLimits(max_frame_bytes=len(frame) - 1)
    assert reason_of(frame, limits) is R.OVERSIZE
    assert decode_frame(frame, FrameLimits(max_frame_bytes=len(frame))).data.payload == b"x" * 100


def test_stream_id_limits_differ_inbound_and_outbound() -> None:
    frame = heartbeat_frame("x" * 200)  # the 0.133 executor accepts 200-byte ids
    validate_frame(frame, INBOUND_LIMITS)
    with pytest.raises(InvalidFrame) as info:
        validate_frame(frame, OUTBOUND_LIMITS)
    assert info.value.reason is R.STREAM_ID_TOO_LONG
    validate_frame(heartbeat_frame("x" * 128), OUTBOUND_LIMITS)


def test_invalid_frame_message_names_the_reason() -> None:
    with pytest.raises(InvalidFrame, match=r"bad_version.*version 7"):
        decode_frame(raw(version=7, stream_id="s", heartbeat=pb.RelayHeartbeat()))


def test_reset_reason_is_truncated_on_a_character_boundary() -> None:
    reason = "é" * 200  # 400 bytes
    frame = reset_frame("s", reason)
    assert len(frame.reset.reason.encode()) <= 256
    validate_frame(frame)
    assert truncate_reason("") == "reset"


def test_codex_shaped_builders_emit_codex_bytes() -> None:
    assert encode_frame(resume_frame("a", 0)) == b"\x08\x01\x12\x01a\x3a\x00"
    assert encode_frame(data_frame("a", 0, b"x")) == b"\x08\x01\x12\x01a\x2a\x05\x18\x01\x22\x01x"
    assert encode_frame(heartbeat_frame("a")) == b"\x08\x01\x12\x01a\x4a\x00"
    assert encode_frame(ack_frame("a", ack=0, ack_bits=0)) == b"\x08\x01\x12\x01a\x32\x00"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_raises_only_invalid_frame(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except InvalidFrame:
        return
    validate_frame(frame)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2**32 - 1), st.data())
def test_truncated_frames_never_decode_to_a_different_valid_frame(
    payload: bytes, seq: int, data: st.DataObject
) -> None:
    encoded = encode_frame(data_frame("stream", seq, payload, ack=seq, ack_bits=1))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(InvalidFrame):
        decode_frame(encoded[:cut])
