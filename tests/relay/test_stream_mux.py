"""The per-socket multiplexer: validation and drop counters, routing, limits, fairness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.relay.errors import InvalidFrameReason
from exec_server.relay.events import MessageReceived, PeerMode, StreamOpened, StreamReset
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    HandshakeBody,
    RelayFrame,
    ack_frame,
    data_frame,
    decode_frame,
    encode_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.proto import relay_v1_pb2 as pb
from exec_server.relay.reliable_stream import ReliableStreamConfig
from exec_server.relay.stream_mux import MuxConfig, MuxDropReason, MuxRole, StreamMux

FLAG = RELIABLE_CAPABILITY_BIT


def flagged_data(stream_id: str, seq: int, payload: bytes) -> bytes:
    return encode_frame(data_frame(stream_id, seq, payload, ack_bits=FLAG))


def messages_by_stream(mux: StreamMux) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for event in mux.events():
        if isinstance(event, MessageReceived):
            out.setdefault(event.stream_id, []).append(event.payload)
    return out


class Link:
    """A harness mux and an environment mux on a perfect path."""

    def __init__(self, config: MuxConfig | None = None) -> None:
        self.now = 0.0
        self.harness = StreamMux(MuxRole.HARNESS, config)
        self.env = StreamMux(MuxRole.ENVIRONMENT, config)

    def flush(self) -> None:
        for _ in range(1000):
            h, e = self.harness.data_to_send(self.now), self.env.data_to_send(self.now)
            if not h and not e:
                return
            for data in h:
                self.env.receive_bytes(data, self.now)
            for data in e:
                self.harness.receive_bytes(data, self.now)
        raise AssertionError("never quiet")

    def settle(self, horizon_s: float = 2.0) -> None:
        end = self.now + horizon_s
        while True:
            self.flush()
            timers = [t for t in (self.harness.get_timer(), self.env.get_timer()) if t is not None]
            if not timers or min(timers) > end:
                return
            self.now = max(self.now, min(timers))
            self.harness.handle_timer(self.now)
            self.env.handle_timer(self.now)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff", InvalidFrameReason.UNDECODABLE),
        (
            pb.RelayMessageFrame(version=3, stream_id="s", heartbeat={}).SerializeToString(),
            "bad_version",
        ),
        (pb.RelayMessageFrame(version=1, stream_id="s").SerializeToString(), "missing_body"),
        (encode_frame(data_frame("", 0, b"x")), "missing_stream_id"),
        (
            pb.RelayMessageFrame(version=1, stream_id="s", reset={}).SerializeToString(),
            "empty_reset_reason",
        ),
    ],
)
def test_invalid_frames_are_counted_by_reason(data: bytes, reason: str) -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT)
    mux.receive_bytes(data, 0.0)
    assert mux.dropped == {reason: 1}
    assert mux.streams == {}
    assert mux.next_event() is None


def test_oversize_frames_are_counted() -> None:
    mux = StreamMux(
        MuxRole.ENVIRONMENT,
        MuxConfig(frame_limits=MuxConfig().frame_limits.__class__(max_frame_bytes=64)),
    )
    mux.receive_bytes(encode_frame(data_frame("s", 0, b"x" * 100)), 0.0)
    assert mux.dropped == {"oversize": 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_arbitrary_input_never_raises(chunks: list[bytes]) -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT)
    for chunk in chunks:
        mux.receive_bytes(chunk, 0.0)
    list(mux.events())
    mux.data_to_send(0.0)


def test_control_frames_for_unknown_streams_are_ignored_and_counted() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT)
    for frame in (
        ack_frame("s", ack=1, ack_bits=FLAG),
        heartbeat_frame("s", ack_bits=FLAG),
        reset_frame("s", "bye"),
        resume_frame("s", 0),  # Codex's unflagged claim
        RelayFrame(stream_id="s", body=HandshakeBody(b"h")),
    ):
        mux.receive_bytes(encode_frame(frame), 0.0)
    assert mux.dropped == {MuxDropReason.UNKNOWN_STREAM_CONTROL: 5}
    assert mux.streams == {}
    assert mux.data_to_send(0.0) == []


def test_flagged_resume_creates_the_stream_and_is_acked() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT)
    mux.receive_bytes(encode_frame(resume_frame("s", 1, ack_bits=FLAG)), 0.0)
    assert mux.next_event() == StreamOpened("s")
    assert mux.streams["s"].mode is PeerMode.RELIABLE
    (reply,) = [decode_frame(b) for b in mux.data_to_send(0.0)]
    assert reply.kind == "ack_frame"
    assert reply.ack_bits & FLAG


def test_harness_side_never_creates_streams() -> None:
    mux = StreamMux(MuxRole.HARNESS)
    mux.receive_bytes(flagged_data("s", 1, b"x"), 0.0)
    mux.receive_bytes(encode_frame(data_frame("t", 0, b"x")), 0.0)
    assert mux.dropped == {MuxDropReason.UNKNOWN_STREAM: 2}
    assert mux.streams == {}


def test_stream_limit_drops_and_answers_with_reset() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT, MuxConfig(max_streams=2))
    for sid in ("a", "b"):
        mux.receive_bytes(flagged_data(sid, 1, b"x"), 0.0)
    mux.receive_bytes(flagged_data("c", 1, b"x"), 0.0)
    mux.receive_bytes(encode_frame(data_frame("d", 0, b"x")), 0.0)  # legacy peer
    assert mux.dropped[MuxDropReason.TOO_MANY_STREAMS] == 2
    assert set(mux.streams) == {"a", "b"}
    resets = {f.stream_id: f for f in map(decode_frame, mux.data_to_send(0.0)) if f.kind == "reset"}
    assert resets["c"].reset.reason == resets["d"].reset.reason == "too_many_streams"
    assert resets["c"].ack_bits == FLAG and resets["d"].ack_bits == 0


def test_reset_ends_one_stream_and_reliable_stragglers_are_refused() -> None:
    link = Link()
    link.harness.open_stream(link.now, "a")
    link.harness.open_stream(link.now, "b")
    link.harness.send_message("a", b"hello-a", link.now)
    link.harness.send_message("b", b"hello-b", link.now)
    link.settle()
    assert messages_by_stream(link.env) == {"a": [b"hello-a"], "b": [b"hello-b"]}
    stale = flagged_data("a", 1, b"hello-a")
    link.harness.reset_stream("a", "done")
    link.flush()
    assert StreamReset("a", "done", remote=True) in list(link.env.events())
    list(link.harness.events())  # a stream is forgotten once its events are taken
    assert "a" not in link.env.streams and "a" not in link.harness.streams
    link.env.receive_bytes(stale, link.now)  # a late retransmission of the old stream
    assert link.env.dropped[MuxDropReason.RETIRED_STREAM] == 1
    assert "a" not in link.env.streams
    (refusal,) = map(decode_frame, link.env.data_to_send(link.now))
    assert (refusal.stream_id, refusal.reset.reason) == ("a", "stream_closed")
    link.harness.send_message("b", b"still-fine", link.now)
    link.settle()
    assert messages_by_stream(link.env) == {"b": [b"still-fine"]}
    # a legacy data frame on the retired id starts a new stream, as in Codex
    link.env.receive_bytes(encode_frame(data_frame("a", 0, b"new")), link.now)
    assert link.env.next_event() == StreamOpened("a")


def test_output_is_fair_across_streams() -> None:
    link = Link()
    streams = [link.harness.open_stream(link.now, sid) for sid in ("a", "b", "c")]
    link.settle()
    for stream in streams:
        for i in range(6):
            link.harness.send_message(stream.stream_id, f"{stream.stream_id}{i}".encode(), link.now)
    order = [decode_frame(b).stream_id for b in link.harness.data_to_send(link.now)]
    assert len(order) == 18
    assert all(set(order[i : i + 3]) == {"a", "b", "c"} for i in range(0, 18, 3))


def test_output_budget_in_bytes() -> None:
    link = Link()
    stream = link.harness.open_stream(link.now, "a")
    link.settle()
    for _ in range(10):
        link.harness.send_message(stream.stream_id, b"x" * 100, link.now)
    first = link.harness.data_to_send(link.now, max_bytes=250)
    assert 250 <= sum(map(len, first)) < 250 + 200
    rest = link.harness.data_to_send(link.now)
    assert len(first) + len(rest) == 10


def test_events_take_turns_and_opened_comes_first() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT)
    for seq in (1, 2, 3):
        for sid in ("a", "b"):
            mux.receive_bytes(flagged_data(sid, seq, f"{sid}{seq}".encode()), 0.0)
    events = list(mux.events())
    assert events[:2] == [StreamOpened("a"), StreamOpened("b")]
    received = [e.payload for e in events if isinstance(e, MessageReceived)]
    assert received == [b"a1", b"b1", b"a2", b"b2", b"a3", b"b3"]


def test_many_streams_exchange_both_ways() -> None:
    link = Link(MuxConfig(stream=ReliableStreamConfig(max_segment_payload_bytes=64)))
    streams = [link.harness.open_stream(link.now) for _ in range(8)]
    link.settle()  # negotiate first: multi-segment messages wait for it
    for stream in streams:
        link.harness.send_message(stream.stream_id, stream.stream_id.encode() * 10, link.now)
    link.settle()
    got = messages_by_stream(link.env)
    assert got == {s.stream_id: [s.stream_id.encode() * 10] for s in streams}
    for sid in list(link.env.streams):
        link.env.send_message(sid, b"reply-" + sid.encode() * 5, link.now)
    link.settle()
    assert messages_by_stream(link.harness) == {
        s.stream_id: [b"reply-" + s.stream_id.encode() * 5] for s in streams
    }


def test_reconnect_resumes_every_reliable_stream() -> None:
    link = Link()
    streams = [link.harness.open_stream(link.now, sid) for sid in ("a", "b")]
    link.settle()
    for stream in streams:
        link.harness.send_message(stream.stream_id, b"lost-in-flight", link.now)
    link.harness.data_to_send(link.now)  # dropped with the socket
    link.harness.connection_lost(link.now)
    assert link.harness.data_to_send(link.now) == []
    link.harness.on_reconnect(link.now)
    out = [decode_frame(b) for b in link.harness.data_to_send(link.now)]
    assert sorted((f.stream_id, f.kind) for f in out) == [
        ("a", "data"),
        ("a", "resume"),
        ("b", "data"),
        ("b", "resume"),
    ]
    for frame in out:
        link.env.receive_frame(frame, link.now)
    link.settle()
    got = messages_by_stream(link.env)
    assert got == {"a": [b"lost-in-flight"], "b": [b"lost-in-flight"]}


def test_retired_ids_are_bounded() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT, MuxConfig(max_retired_stream_ids=3))
    for i in range(10):
        sid = f"s{i}"
        mux.receive_bytes(flagged_data(sid, 1, b"x"), 0.0)
        mux.receive_bytes(encode_frame(reset_frame(sid, "bye", ack_bits=FLAG)), 0.0)
        list(mux.events())
    assert mux.streams == {}
    assert len(mux._retired) == 3


def test_open_stream_validates_ids_and_limits() -> None:
    mux = StreamMux(MuxRole.HARNESS, MuxConfig(max_streams=1))
    with pytest.raises(ValueError):
        mux.open_stream(0.0, " padded")
    with pytest.raises(ValueError):
        mux.open_stream(0.0, "x" * 129)
    stream = mux.open_stream(0.0)
    assert len(stream.stream_id) == 36
    with pytest.raises(ValueError):
        mux.open_stream(0.0, stream.stream_id)
    with pytest.raises(RuntimeError):
        mux.open_stream(0.0, "another")


def test_an_id_is_reusable_by_a_legacy_peer_before_the_reset_is_read() -> None:
    mux = StreamMux(MuxRole.ENVIRONMENT, MuxConfig(max_streams=2))
    mux.receive_bytes(encode_frame(data_frame("a", 0, b"one")), 0.0)
    mux.receive_bytes(encode_frame(reset_frame("a", "test_reset")), 0.0)
    mux.receive_bytes(encode_frame(data_frame("a", 1, b"two")), 0.0)  # a NEW stream
    assert set(mux.streams) == {"a"}
    # the ended stream still holds its events, and counts towards max_streams until read
    mux.receive_bytes(encode_frame(data_frame("b", 0, b"x")), 0.0)
    assert mux.dropped[MuxDropReason.TOO_MANY_STREAMS] == 1
    events = list(mux.events())
    assert events[:2] == [StreamOpened("a"), StreamOpened("a")]
    payloads = [e.payload for e in events if isinstance(e, MessageReceived)]
    assert payloads == [b"one", b"two"]
    assert StreamReset("a", "test_reset", remote=True) in events
    mux.receive_bytes(encode_frame(data_frame("b", 0, b"x")), 0.0)
    assert set(mux.streams) == {"a", "b"}


def test_pause_output_holds_one_stream_while_the_others_flow() -> None:
    link = Link()
    link.harness.open_stream(0.0, "a")
    link.harness.open_stream(0.0, "b")
    link.harness.send_message("a", b"1", 0.0)
    link.harness.send_message("b", b"1", 0.0)
    link.flush()
    assert set(link.env.streams) == {"a", "b"}
    link.env.pause_output("a")
    assert link.env.paused_streams == 1
    link.env.send_message("a", b"held", 0.0)
    link.env.send_message("b", b"flows", 0.0)
    sent = [decode_frame(f) for f in link.env.data_to_send(0.0)]
    assert [(f.stream_id, f.data.payload) for f in sent if f.kind == "data"] == [("b", b"flows")]
    link.env.resume_output("a")
    sent = [decode_frame(f) for f in link.env.data_to_send(0.0)]
    assert [(f.stream_id, f.data.payload) for f in sent if f.kind == "data"] == [("a", b"held")]
    link.env.pause_output("a")
    link.env.reset_stream("a", "bye")  # a reset still goes out of a paused stream
    assert [decode_frame(f).kind for f in link.env.data_to_send(0.0)] == ["reset"]
    link.env.connection_lost(0.0)
    assert link.env.paused_streams == 0


def test_a_reliable_frame_acknowledging_data_on_an_unknown_stream_is_refused() -> None:
    """A restarted environment gets frames of a stream its previous incarnation had:
    accepting them as a new stream would leave the seqs unable to line up."""
    env = StreamMux(MuxRole.ENVIRONMENT)
    env.receive_bytes(encode_frame(resume_frame("old", 9, ack=4, ack_bits=FLAG)), 0.0)
    env.receive_bytes(
        encode_frame(data_frame("old2", 9, b"x", ack=4, ack_bits=FLAG)),
        0.0,
    )
    assert not env.streams
    replies = [decode_frame(f) for f in env.data_to_send(0.0)]
    assert [(f.stream_id, f.reset.reason, f.ack_bits) for f in replies] == [
        ("old", "unknown_stream", FLAG),
        ("old2", "unknown_stream", FLAG),
    ]
    assert env.dropped[MuxDropReason.LOST_STREAM] == 2
    # An unflagged (Codex) frame is a new stream whatever its ack field.
    env.receive_bytes(encode_frame(data_frame("codex", 0, b"{}", ack=4)), 0.0)
    assert set(env.streams) == {"codex"}


def test_held_events_stay_in_the_stream_until_released() -> None:
    link = Link()
    link.harness.open_stream(0.0, "a")
    link.harness.open_stream(0.0, "b")
    link.harness.send_message("a", b"a1", 0.0)
    link.harness.send_message("b", b"b1", 0.0)
    link.flush()
    assert messages_by_stream(link.env) == {"a": [b"a1"], "b": [b"b1"]}
    link.env.hold_events("a")
    link.harness.send_message("a", b"a2", 0.0)
    link.harness.send_message("b", b"b2", 0.0)
    link.flush()
    assert messages_by_stream(link.env) == {"b": [b"b2"]}
    assert link.env.streams["a"].undelivered_bytes == 2
    link.env.release_events("a")
    assert messages_by_stream(link.env) == {"a": [b"a2"]}
