"""The hand-written frame codec against the official protobuf runtime, used as the oracle.

* Encoding: for any field values, ``encode_frame`` is byte-identical to
  ``SerializeToString()`` of the same protobuf message.
* Decoding: for our encodings, random bytes, and mutations of valid encodings (truncation,
  bit flips, reordered / repeated / dropped / unknown fields, groups, over-long varints,
  wrong wire types, concatenated frames, inside the body too), ``decode_frame`` gives
  exactly what protobuf-parse + conversion + ``validate_frame`` gives, or the same
  ``InvalidFrameReason``; it never raises anything but ``InvalidFrame``.
* Canonical encodings take the fast path (the protobuf parser is never called for them).

The conversion from protobuf messages below is written independently of the module's own
fallback, so a mistake in either shows up as a difference.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exec_server.relay import frame_codec
from exec_server.relay.errors import InvalidFrame, InvalidFrameReason
from exec_server.relay.frame_codec import (
    INBOUND_LIMITS,
    OUTBOUND_LIMITS,
    U32_MAX,
    AckBody,
    DataBody,
    FrameBody,
    FrameLimits,
    HandshakeBody,
    HeartbeatBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    data_frame,
    decode_frame,
    decode_route,
    encode_frame,
    peek_route,
    resume_frame,
    validate_frame,
)
from exec_server.relay.proto import relay_v1_pb2 as pb

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TIGHT_LIMITS = FrameLimits(
    max_frame_bytes=96,
    max_stream_id_bytes=8,
    max_segment_count=3,
    max_reset_reason_bytes=5,
    max_trace_field_bytes=4,
)
LIMITS = st.sampled_from([INBOUND_LIMITS, OUTBOUND_LIMITS, TIGHT_LIMITS])
BODY_TAGS = {0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x52}

# --------------------------------------------------------------------------- the oracle


def to_protobuf(frame: RelayFrame) -> pb.RelayMessageFrame:
    fields: dict[str, Any] = {
        "version": frame.version,
        "stream_id": frame.stream_id,
        "ack": frame.ack,
        "ack_bits": frame.ack_bits,
    }
    body = frame.body
    if isinstance(body, DataBody):
        fields["data"] = pb.RelayData(
            seq=body.seq,
            segment_index=body.segment_index,
            segment_count=body.segment_count,
            payload=body.payload,
        )
    elif isinstance(body, AckBody):
        fields["ack_frame"] = pb.RelayAck()
    elif isinstance(body, ResumeBody):
        fields["resume"] = pb.RelayResume(next_seq=body.next_seq)
    elif isinstance(body, ResetBody):
        fields["reset"] = pb.RelayReset(reason=body.reason)
    elif isinstance(body, HeartbeatBody):
        fields["heartbeat"] = pb.RelayHeartbeat()
    elif isinstance(body, HandshakeBody):
        fields["handshake"] = pb.RelayHandshake(payload=body.payload)
    if frame.traceparent is not None:
        fields["traceparent"] = frame.traceparent
    if frame.tracestate is not None:
        fields["tracestate"] = frame.tracestate
    return pb.RelayMessageFrame(**fields)


def from_protobuf(message: pb.RelayMessageFrame) -> RelayFrame:
    body: FrameBody | None = {
        None: lambda: None,
        "data": lambda: DataBody(
            seq=message.data.seq,
            segment_index=message.data.segment_index,
            segment_count=message.data.segment_count,
            payload=message.data.payload,
        ),
        "ack_frame": AckBody,
        "resume": lambda: ResumeBody(next_seq=message.resume.next_seq),
        "reset": lambda: ResetBody(reason=message.reset.reason),
        "heartbeat": HeartbeatBody,
        "handshake": lambda: HandshakeBody(payload=message.handshake.payload),
    }[message.WhichOneof("body")]()
    return RelayFrame(
        version=message.version,
        stream_id=message.stream_id,
        ack=message.ack,
        ack_bits=message.ack_bits,
        body=body,
        traceparent=message.traceparent if message.HasField("traceparent") else None,
        tracestate=message.tracestate if message.HasField("tracestate") else None,
    )


Outcome = RelayFrame | InvalidFrameReason


def oracle(data: bytes, limits: FrameLimits) -> Outcome:
    if len(data) > limits.max_frame_bytes:
        return InvalidFrameReason.OVERSIZE
    message = pb.RelayMessageFrame()
    try:
        message.ParseFromString(data)
    except Exception:
        return InvalidFrameReason.UNDECODABLE
    frame = from_protobuf(message)
    try:
        validate_frame(frame, limits)
    except InvalidFrame as invalid:
        return invalid.reason
    return frame


def ours(data: bytes, limits: FrameLimits) -> Outcome:
    try:  # anything but InvalidFrame escaping fails the test
        frame = decode_frame(data, limits)
    except InvalidFrame as invalid:
        return invalid.reason
    return frame


def assert_same_as_protobuf(data: bytes, limits: FrameLimits) -> Outcome:
    expected = oracle(data, limits)
    assert ours(data, limits) == expected, data.hex()
    try:
        route: tuple[str, str, bool] | InvalidFrameReason = decode_route(data, limits)
    except InvalidFrame as invalid:
        route = invalid.reason
    if isinstance(expected, RelayFrame):
        assert route == (expected.stream_id, expected.kind, bool(expected.ack_bits & 1))
    else:
        assert route == expected
    try:
        peeked: tuple[str, str, bool] | InvalidFrameReason = peek_route(data, limits)
    except InvalidFrame as invalid:
        peeked = invalid.reason
    assert peeked == route, data.hex()
    try:  # a view of a read buffer, as the rendezvous passes it
        peeked = peek_route(memoryview(bytearray(data)), limits)
    except InvalidFrame as invalid:
        peeked = invalid.reason
    assert peeked == route, data.hex()
    return expected


# --------------------------------------------------------------------------- strategies

u32 = st.one_of(
    st.integers(0, 3),
    st.integers(0, 0x7F),
    st.integers(0x80, 0x3FFF),
    st.integers(0, U32_MAX),
    st.sampled_from([U32_MAX, U32_MAX - 1, 0x4000, 0x20_0000, 0x1000_0000]),
)
texts = st.one_of(st.text(max_size=12), st.text(st.characters(codec="utf-8"), max_size=300))
small_binary = st.binary(max_size=40)

bodies: st.SearchStrategy[FrameBody | None] = st.one_of(
    st.none(),
    st.builds(
        DataBody,
        seq=u32,
        segment_index=st.one_of(st.integers(0, 4), u32),
        segment_count=st.one_of(st.integers(0, 5), u32),
        payload=st.one_of(small_binary, st.binary(min_size=120, max_size=20_000)),
    ),
    st.just(AckBody()),
    st.builds(ResumeBody, next_seq=u32),
    st.builds(ResetBody, reason=texts),
    st.just(HeartbeatBody()),
    st.builds(HandshakeBody, payload=small_binary),
)

frames = st.builds(
    RelayFrame,
    version=st.one_of(st.just(1), u32),
    stream_id=st.one_of(
        st.just("3f1c2a9e-5b7d-4c1e-9f00-0123456789ab"), st.just(" padded "), texts
    ),
    ack=u32,
    ack_bits=u32,
    body=bodies,
    traceparent=st.one_of(st.none(), texts),
    tracestate=st.one_of(st.none(), texts),
)


@st.composite
def valid_data_bodies(draw: st.DrawFn) -> DataBody:
    count = draw(st.one_of(st.just(1), st.integers(1, 4096)))
    return DataBody(
        seq=draw(u32),
        segment_index=draw(st.integers(0, count - 1)),
        segment_count=count,
        payload=draw(st.binary(min_size=1, max_size=300)),
    )


short_texts = st.text(st.characters(codec="utf-8"), max_size=40)
valid_frames = st.builds(
    RelayFrame,
    version=st.just(1),
    stream_id=st.one_of(
        st.just("3f1c2a9e-5b7d-4c1e-9f00-0123456789ab"),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
            lambda s: s == s.strip() and s
        ),
    ),
    ack=u32,
    ack_bits=u32,
    body=st.one_of(
        valid_data_bodies(),
        st.just(AckBody()),
        st.builds(ResumeBody, next_seq=u32),
        st.builds(ResetBody, reason=st.text(min_size=1, max_size=60)),
        st.just(HeartbeatBody()),
        st.builds(HandshakeBody, payload=st.binary(min_size=1, max_size=40)),
    ),
    traceparent=st.one_of(st.none(), short_texts),
    tracestate=st.one_of(st.none(), short_texts),
)


def valid(frame: RelayFrame) -> bool:
    try:
        validate_frame(frame)
    except InvalidFrame:
        return False
    return True


# --------------------------------------------------------------------------- encoding


@SETTINGS
@given(frames, LIMITS)
def test_encoding_is_protobufs_and_decodes_back(frame: RelayFrame, limits: FrameLimits) -> None:
    encoded = encode_frame(frame)
    assert encoded == to_protobuf(frame).SerializeToString()
    outcome = assert_same_as_protobuf(encoded, limits)
    if limits is INBOUND_LIMITS and valid(frame):
        assert outcome == frame


@SETTINGS
@given(valid_frames)
def test_valid_frames_round_trip_exactly(frame: RelayFrame) -> None:
    assert valid(frame)
    assert decode_frame(encode_frame(frame)) == frame


@SETTINGS
@given(frames)
def test_our_encodings_take_the_fast_path(frame: RelayFrame) -> None:
    with mock.patch.object(
        frame_codec, "_decode_with_protobuf", side_effect=AssertionError("slow path")
    ):
        try:
            decoded = decode_frame(encode_frame(frame))
        except InvalidFrame:
            assert not valid(frame)
            return
    assert decoded == frame


@pytest.mark.parametrize("ack_bits", [0, 1, 0x8000_0001])
def test_peek_route_reads_canonical_data_frames_itself(ack_bits: int) -> None:
    """The frames a forwarder sees most never reach the full decoder."""
    frame = data_frame("3f1c2a9e", 7, b"x" * 300, ack=12, ack_bits=ack_bits)
    data = encode_frame(frame)
    with mock.patch.object(frame_codec, "decode_route", side_effect=AssertionError("slow")):
        assert peek_route(data) == ("3f1c2a9e", "data", bool(ack_bits & 1))
    segmented = data_frame("s", 0, b"y", segment_index=1, segment_count=2)
    with mock.patch.object(frame_codec, "decode_route", side_effect=AssertionError("slow")):
        assert peek_route(encode_frame(segmented)) == ("s", "data", False)


@pytest.mark.parametrize("ack_bits", [0, 1, 0x7F, 0x81, 0x8000_0001, U32_MAX])
@pytest.mark.parametrize("ack", [0, 0x7F, 50_000, U32_MAX])
@pytest.mark.parametrize("payload_size", [1, 0x7F, 11_000, 175_000])
def test_peek_route_reads_the_routed_shapes_itself(
    ack_bits: int, ack: int, payload_size: int
) -> None:
    """The rendezvous' frames per routed byte (data frames of every varint length, and
    bare acks) are read off the bytes, with the answer the full decoder gives."""
    stream_id = "3f1c2a9e-5b7d-4c1e-9f00-0123456789ab"
    shapes = [
        data_frame(stream_id, ack, b"p" * payload_size, ack=ack, ack_bits=ack_bits),
        data_frame(stream_id, 0, b"p" * payload_size, segment_index=2, segment_count=300),
        ack_frame(stream_id, ack=ack, ack_bits=ack_bits),
    ]
    for frame in shapes:
        data = encode_frame(frame)
        expected = decode_route(data)
        assert expected == (stream_id, frame.kind, bool(frame.ack_bits & 1))
        with mock.patch.object(frame_codec, "decode_route", side_effect=AssertionError("slow")):
            assert peek_route(data) == expected
            assert peek_route(memoryview(bytearray(data))) == expected


def test_peek_route_applies_every_limit_on_its_own_path() -> None:
    """Limits the fast path checks itself (not only the ones the test strategies draw)
    give the full decoder's answer."""
    data = encode_frame(data_frame("s", 5, b"x"))
    for limits in (
        FrameLimits(max_segment_count=0),
        FrameLimits(max_stream_id_bytes=0),
        FrameLimits(max_frame_bytes=len(data) - 1),
    ):
        with pytest.raises(InvalidFrame) as full:
            decode_route(data, limits)
        with pytest.raises(InvalidFrame) as peeked:
            peek_route(memoryview(bytearray(data)), limits)
        assert peeked.value.reason is full.value.reason
    # An ack frame followed by anything is not the bare shape: the full decoder judges.
    for tail in (b"\x5a\x00", b"\x32\x00", b"\x00"):
        data = encode_frame(ack_frame("s", ack=1, ack_bits=1)) + tail
        assert_same_as_protobuf(data, INBOUND_LIMITS)


def routed_shape_variants() -> list[bytes]:
    """The shapes peek_route reads itself, with every varint it reads or skips in one
    to ten bytes (a ten-byte varint is a 64-bit value protobuf truncates), fields
    repeated, and trailing bytes."""
    sid = b"\x12\x08" + b"3f1c2a9e"
    payload = b"\x22\x02pp"
    shapes = []
    for pad in range(0, 10):
        long = varint(0x7F, pad)  # the same value in 1 + pad bytes
        body = b"\x08" + long + b"\x18\x01" + payload
        shapes.append(
            b"\x08\x01" + sid + b"\x18" + long + b"\x20" + long + b"\x2a" + varint(len(body)) + body
        )
        body = (
            b"\x10" + varint(0, pad) + b"\x18" + varint(2, pad) + b"\x22" + varint(2, pad) + b"pp"
        )
        shapes.append(b"\x08\x01" + sid + b"\x2a" + varint(len(body), pad) + body)
        shapes.append(b"\x08\x01" + sid + b"\x18" + long + b"\x20" + varint(1, pad) + b"\x32\x00")
    body = b"\x08\x05\x08\x06\x18\x01" + payload  # seq twice
    shapes.append(b"\x08\x01" + sid + b"\x2a" + varint(len(body)) + body)
    body = b"\x18\x01\x08\x05" + payload  # count before seq
    shapes.append(b"\x08\x01" + sid + b"\x2a" + varint(len(body)) + body)
    body = b"\x08\x05\x18\x01" + payload + b"\x28\x01"  # an unknown field after the payload
    shapes.append(b"\x08\x01" + sid + b"\x2a" + varint(len(body)) + body)
    shapes.append(b"\x08\x01" + sid + b"\x20\x01\x18\x05\x32\x00")  # ack after ack_bits
    shapes.append(b"\x08\x01" + sid + b"\x18\x05\x18\x06\x32\x00")  # ack twice
    shapes.append(b"\x08\x01" + sid + b"\x32\x00\x32\x00")  # the body twice
    shapes.append(b"\x08\x01" + sid + b"\x32\x01\x00")  # a body of one unknown byte
    return shapes


def test_peek_route_on_every_truncation_and_variant_of_the_routed_shapes() -> None:
    """peek_route reads these shapes off the bytes; every prefix of every variant gets
    protobuf's answer (never an IndexError), for bytes and for a view."""
    for data in routed_shape_variants():
        for end in range(len(data) + 1):
            for limits in (INBOUND_LIMITS, TIGHT_LIMITS):
                assert_same_as_protobuf(data[:end], limits)


def test_selected_empty_members_and_empty_trace_fields_are_emitted() -> None:
    assert encode_frame(resume_frame("a", 0)) == b"\x08\x01\x12\x01a\x3a\x00"
    frame = RelayFrame(stream_id="s", body=DataBody(), traceparent="", tracestate="")
    assert encode_frame(frame) == b"\x08\x01\x12\x01s\x2a\x00\x5a\x00\x62\x00"
    assert encode_frame(frame) == to_protobuf(frame).SerializeToString()
    assert encode_frame(RelayFrame(version=0)) == b""


def test_the_payload_is_copied_once_at_most() -> None:
    payload = bytes(range(256)) * 700
    encoded = encode_frame(data_frame("s", 1, payload))
    assert encoded.endswith(payload)
    decoded = decode_frame(encoded)
    assert decoded.data.payload == payload


@pytest.mark.parametrize("value", [-1, U32_MAX + 1, 2**64])
def test_out_of_range_integers_are_refused_like_protobuf(value: int) -> None:
    with pytest.raises(ValueError):
        encode_frame(data_frame("s", value, b"x"))
    with pytest.raises(ValueError):
        pb.RelayData(seq=value)


# --------------------------------------------------------------------------- decoding


@SETTINGS
@given(st.binary(max_size=300), LIMITS)
def test_random_bytes_decode_as_protobuf_says(data: bytes, limits: FrameLimits) -> None:
    assert_same_as_protobuf(data, limits)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def varint(value: int, pad: int = 0) -> bytes:
    """``value`` as a varint, with ``pad`` redundant continuation bytes (non-minimal)."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value or pad:
            out.append(low | 0x80)
            if not value:
                pad -= 1
                while pad:
                    out.append(0x80)
                    pad -= 1
                out.append(0)
                return bytes(out)
        else:
            out.append(low)
            return bytes(out)


def skip_field(data: bytes, pos: int) -> tuple[int, int]:
    """``(tag, position after the field)`` of the field at ``pos``; ``IndexError`` or
    ``ValueError`` if it is malformed."""
    tag, pos = read_varint(data, pos)
    wire = tag & 7
    if wire == 0:
        _, pos = read_varint(data, pos)
    elif wire == 2:
        size, pos = read_varint(data, pos)
        pos += size
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 3:  # a group: fields up to the matching end tag
        while True:
            inner, after = skip_field(data, pos) if data[pos] & 7 != 4 else (-1, pos)
            if inner == -1:
                end, pos = read_varint(data, pos)
                if end != tag + 1:
                    raise ValueError("mismatched end group")
                break
            pos = after
    else:
        raise ValueError(f"unexpected wire type {wire}")
    if pos > len(data):
        raise IndexError("field past the end")
    return tag, pos


def split_fields(data: bytes) -> list[bytes] | None:
    """Top-level fields of an encoding, each with its tag; ``None`` if it is malformed."""
    chunks, pos = [], 0
    try:
        while pos < len(data):
            start = pos
            _, pos = skip_field(data, pos)
            chunks.append(data[start:pos])
    except (IndexError, ValueError):
        return None
    return chunks


def unknown_fields() -> st.SearchStrategy[bytes]:
    number = st.one_of(st.integers(11, 40), st.integers(1, 10), st.integers(0, 2**29 - 1))
    return st.one_of(
        st.builds(lambda n, v: varint(n << 3) + varint(v), number, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, b: varint(n << 3 | 2) + varint(len(b)) + b, number, small_binary),
        st.builds(lambda n, b: varint(n << 3 | 1) + b, number, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, b: varint(n << 3 | 5) + b, number, st.binary(min_size=4, max_size=4)),
        st.builds(  # a group
            lambda n, inner: varint(n << 3 | 3) + inner + varint(n << 3 | 4),
            number,
            st.sampled_from([b"", b"\x08\x01", b"\x12\x01a"]),
        ),
    )


def mutate_fields(chunks: list[bytes], draw: st.DrawFn, others: list[bytes]) -> list[bytes]:
    chunks = list(chunks)
    others = [c for c in others if c]
    op = draw(st.sampled_from(["shuffle", "duplicate", "drop", "unknown", "foreign", "overlong"]))
    at = draw(st.integers(0, len(chunks)))
    if op == "shuffle":
        chunks = draw(st.permutations(chunks))
    elif op == "duplicate" and chunks:
        chunks.insert(at, chunks[draw(st.integers(0, len(chunks) - 1))])
    elif op == "drop" and chunks:
        del chunks[min(at, len(chunks) - 1)]
    elif op == "unknown":
        chunks.insert(at, draw(unknown_fields()))
    elif op == "foreign" and others:  # a field of another frame: repeated fields, oneofs
        chunks.insert(at, draw(st.sampled_from(others)))
    elif op == "overlong" and chunks:
        i = min(at, len(chunks) - 1)
        tag, pos = read_varint(chunks[i], 0)
        pad = draw(st.integers(1, 5))
        if tag & 7 == 0:
            value, _ = read_varint(chunks[i], pos)
            chunks[i] = varint(tag) + varint(value, pad)
        elif tag & 7 == 2:
            size, pos = read_varint(chunks[i], pos)
            chunks[i] = varint(tag) + varint(size, pad) + chunks[i][pos:]
        else:
            chunks[i] = varint(tag, pad) + chunks[i][pos:]
    return chunks


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    frame = draw(valid_frames if draw(st.booleans()) else frames)
    other = encode_frame(draw(st.one_of(valid_frames, frames)))
    data = encode_frame(frame)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                ["fields", "fields", "body", "truncate", "flip", "concat", "retype", "insert"]
            )
        )
        chunks = split_fields(data)
        other_chunks = split_fields(other) or []
        if op == "fields" and chunks is not None:
            data = b"".join(mutate_fields(chunks, draw, other_chunks))
        elif op == "body" and chunks is not None:
            bodies = [i for i, c in enumerate(chunks) if c[0] in BODY_TAGS]
            if not bodies:
                continue
            i = bodies[0]
            tag, pos = read_varint(chunks[i], 0)
            _, pos = read_varint(chunks[i], pos)
            inner_chunks = split_fields(chunks[i][pos:])
            if inner_chunks is None:
                continue
            foreign: list[bytes] = []  # fields of the other frame's body of this kind
            for chunk in other_chunks:
                if chunk[0] == tag:
                    _, start = read_varint(chunk, 1)
                    foreign += split_fields(chunk[start:]) or []
            inner = b"".join(mutate_fields(inner_chunks, draw, foreign))
            chunks[i] = varint(tag) + varint(len(inner)) + inner
            data = b"".join(chunks)
        elif op == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
        elif op == "concat":  # protobuf merges concatenated messages
            data = data + other if draw(st.booleans()) else other + data
        elif op == "retype" and chunks:  # a known field with another wire type
            i = draw(st.integers(0, len(chunks) - 1))
            tag, pos = read_varint(chunks[i], 0)
            wire = draw(st.sampled_from([0, 1, 2, 5]))
            payload = {0: b"\x01", 1: b"\x00" * 8, 2: b"\x01x", 5: b"\x00" * 4}[wire]
            chunks[i] = varint(tag & ~7 | wire) + payload
            data = b"".join(chunks)
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=6)) + data[i:]
    return data


@settings(SETTINGS, max_examples=1500)
@given(mutated_encodings(), LIMITS)
def test_mutated_encodings_decode_as_protobuf_says(data: bytes, limits: FrameLimits) -> None:
    outcome = assert_same_as_protobuf(data, limits)
    # Coverage labels (--hypothesis-show-statistics): which path and outcome this was.
    try:
        frame_codec._decode_canonical(data, True)
        event("fast path")
    except Exception:
        event("protobuf fallback")
    event(f"outcome: {outcome if isinstance(outcome, InvalidFrameReason) else 'valid'}")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xc0\x80",  # overlong NUL
        b"\xe0\x80\xaf",  # overlong '/'
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\xf0\x9f\x98\x80",  # a valid 4-byte character
        b"a\x00b",  # NUL is valid UTF-8
        b"\xff",
        b"\xe2\x82",  # truncated sequence
    ],
)
@pytest.mark.parametrize("field", [0x12, 0x5A, 0x62])
def test_utf8_edge_cases_decode_as_protobuf_says(raw: bytes, field: int) -> None:
    if field == 0x12:
        data = b"\x08\x01\x12" + varint(len(raw)) + raw + b"\x4a\x00"
    else:
        data = b"\x08\x01\x12\x01s\x4a\x00" + bytes([field]) + varint(len(raw)) + raw
    reset = b"\x08\x01\x12\x01s\x42" + varint(len(raw) + 2) + b"\x0a" + varint(len(raw)) + raw
    for frame in (data, reset):
        assert_same_as_protobuf(frame, INBOUND_LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x00\x12\x01s\x4a\x00",  # explicit zero version
        b"\x08\x81\x00\x12\x01s\x4a\x00",  # non-minimal version varint
        b"\x08\x01\x12\x01s\x2a\x00",  # empty data body
        b"\x08\x01\x12\x01s\x2a\x02\x22\x00",  # explicit empty payload
        b"\x08\x01\x12\x01s\x3a\x02\x08\x00",  # explicit resume{0}
        b"\x08\x01\x12\x01s\x32\x02\x08\x01\x4a\x00",  # two body members: the last wins
        b"\x08\x01\x12\x01s\x4a\x00\x32\x00",  # two body members, reversed
        b"\x08\x01\x12\x01s\x2a\x03\x22\x01a\x2a\x03\x22\x01b",  # data twice: merged
        b"\x08\x01\x12\x01s\x2a\x03\x22\x01a\x2a\x02\x08\x05",  # merged keeps the payload
        b"\x12\x01s\x08\x01\x4a\x00",  # version after stream_id
        b"\x08\x01\x08\x02\x12\x01s\x4a\x00",  # version twice: the last wins
        b"\x08\x01\x12\x01s\x18\xff\xff\xff\xff\x1f\x4a\x00",  # ack over 32 bits: truncated
        b"\x08\x01\x12\x01s\x18\xff\xff\xff\xff\x0f\x4a\x00",  # ack = U32_MAX
        b"\x08\x01\x12\x01s\x4a\x00\x5a\x00",  # empty traceparent is present
        b"\x08\x01\x12\x01s\x4a\x00\x62\x01t\x5a\x01p",  # trace fields reversed
        b"\x08\x01\x12\x01s\x4a\x00\x68\x01",  # unknown field 13
        b"\x08\x01\x12\x01s\x4a\x00\x6b\x6c",  # empty group 13
        b"\x08\x01\x12\x01s\x4a\x00\x6b",  # unterminated group
        b"\x08\x01\x12\x01s\x4a\x00\x00",  # field number 0
        b"\x08\x01\x12\x01s\x4a\x00\x80\x00",  # non-minimal tag for field 0
        b"\x88\x00\x01\x12\x01s\x4a\x00",  # non-minimal tag for version
        b"\x08\x01\x12\x01s\x4d\x00\x00\x00\x00",  # heartbeat with wire type 5
        b"\x08\x01\x12\x01s\x2a\x04\x22\x05abc",  # payload longer than its body
        b"\x08\x01\x12\x01s\x2a\x01\x08",  # varint cut by the body's end
        b"\x08\x01\x12\x01s\x2a\x02\x08\x80\x01",  # varint crossing the body's end
    ],
)
def test_odd_encodings_decode_as_protobuf_says(data: bytes) -> None:
    for limits in (INBOUND_LIMITS, TIGHT_LIMITS):
        assert_same_as_protobuf(data, limits)
