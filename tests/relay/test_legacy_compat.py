"""Our endpoints against simulated Codex 0.133/0.137 peers: never a retransmission, never a
segment, Codex's exact bytes, arrival-order delivery."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from relay_sim import LegacyCodexExecutor, kinds, messages, take_events

from exec_server.relay.errors import MessageTooLarge, SendBlocked
from exec_server.relay.events import (
    MessageReceived,
    PeerMode,
    PeerModeResolved,
    StreamOpened,
    StreamReset,
)
from exec_server.relay.frame_codec import (
    data_frame,
    decode_frame,
    encode_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig, StreamDropReason
from exec_server.relay.stream_config import (
    DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES,
    LEGACY_MAX_MESSAGE_BYTES,
)
from exec_server.relay.stream_mux import MuxConfig, MuxDropReason, MuxRole, StreamMux

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


class HarnessVsLegacyExecutor:
    """Our harness-side mux on one socket, a simulated Codex executor on the other end."""

    def __init__(self, config: ReliableStreamConfig | None = None) -> None:
        self.now = 0.0
        self.mux = StreamMux(MuxRole.HARNESS, MuxConfig(stream=config or ReliableStreamConfig()))
        self.executor = LegacyCodexExecutor()
        self.received: list[bytes] = []
        self.events: list[object] = []
        self.stream = self.mux.open_stream(self.now, UUID)

    def step(self, dt: float = 0.0) -> None:
        self.now += dt
        timer = self.mux.get_timer()
        if timer is not None and timer <= self.now:
            self.mux.handle_timer(self.now)
        for data in self.mux.data_to_send(self.now):
            self.executor.receive(data)
        for data in self.executor.outbox:
            self.mux.receive_bytes(data, self.now)
        self.executor.outbox.clear()
        for event in self.mux.events():
            self.events.append(event)
            if isinstance(event, MessageReceived):
                self.received.append(event.payload)

    def run(self, seconds: float, dt: float = 0.05) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)


def test_harness_resolves_legacy_on_the_executors_first_reply() -> None:
    sim = HarnessVsLegacyExecutor()
    sim.mux.send_message(UUID, b"req-initialize", sim.now)
    sim.step()
    assert sim.stream.mode is PeerMode.LEGACY
    assert PeerModeResolved(UUID, PeerMode.LEGACY) in sim.events
    assert sim.received == [b"resp:req-initialize"]
    assert sim.executor.executed[UUID] == [b"req-initialize"]


def test_never_retransmits_or_segments_towards_a_legacy_executor() -> None:
    sim = HarnessVsLegacyExecutor()
    sim.mux.send_message(UUID, b"req-initialize", sim.now)
    sim.run(0.2)
    big = b"B" * (3 * DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES + 1)
    for i in range(40):
        sim.mux.send_message(UUID, f"req-{i}".encode(), sim.now)
        sim.mux.send_message(UUID, f"note-{i}".encode(), sim.now)  # notifications: no reply
    sim.mux.send_message(UUID, big, sim.now)
    sim.run(120.0, dt=0.5)  # far past every RTO, heartbeat and idle timeout
    executed = sim.executor.executed[UUID]
    assert len(executed) == len(set(executed)) == 82  # every message exactly once
    assert executed[-1] == big  # one unsegmented frame
    assert sim.stream.stats.retransmissions == 0
    assert sim.executor.silently_dropped == 0
    sent_kinds = {frame.kind for frame in sim.executor.frames_seen}
    assert sent_kinds == {"resume", "data"}  # no ack_frame, heartbeat or reset, ever
    data = [f.data for f in sim.executor.frames_seen if f.kind == "data"]
    assert all((d.segment_index, d.segment_count) == (0, 1) for d in data)
    after_resolution = [f for f in sim.executor.frames_seen if f.kind == "data"][1:]
    assert all(f.ack == 0 and f.ack_bits == 0 for f in after_resolution)
    assert sim.received == [b"resp:req-initialize"] + [f"resp:req-{i}".encode() for i in range(40)]
    assert not sim.stream.is_closed


def test_a_silent_executor_gets_no_retransmission_either() -> None:
    sim = HarnessVsLegacyExecutor()
    sim.mux.send_message(UUID, b"note-only", sim.now)  # no reply will ever come
    sim.run(30.0, dt=0.25)  # the negotiation times out: legacy
    assert sim.stream.mode is PeerMode.LEGACY
    assert sim.executor.executed[UUID] == [b"note-only"]
    assert sim.stream.stats.retransmissions == 0


def test_messages_over_the_legacy_limit_are_refused_not_sent() -> None:
    sim = HarnessVsLegacyExecutor(ReliableStreamConfig(legacy_max_message_bytes=1000))
    sim.mux.send_message(UUID, b"req-initialize", sim.now)
    sim.step()
    with pytest.raises(MessageTooLarge, match="legacy"):
        sim.mux.send_message(UUID, b"x" * 1001, sim.now)
    sim.mux.send_message(UUID, b"x" * 1000, sim.now)
    sim.step()
    assert sim.executor.executed[UUID][-1] == b"x" * 1000


def test_default_legacy_limit_stays_under_codex_16_mib_frame_limit() -> None:
    frame = encode_frame(
        data_frame("x" * 256, 0xFFFF_FFFF, b"x" * LEGACY_MAX_MESSAGE_BYTES, traceparent="t" * 512)
    )
    assert len(frame) <= 16 * 1024 * 1024


def test_legacy_replies_are_delivered_in_arrival_order_with_duplicates() -> None:
    stream = ReliableStream(UUID, initiator=True, now=0.0)
    stream.frames_to_send(0.0)
    for seq in (5, 3, 3, 4_000_000_000):
        stream.receive_frame(data_frame(UUID, seq, f"r{seq}".encode()), 0.0)
    assert messages(take_events(stream)) == [b"r5", b"r3", b"r3", b"r4000000000"]


def test_pinned_legacy_initiator_emits_codex_harness_bytes() -> None:
    stream = ReliableStream(
        UUID, initiator=True, now=0.0, config=ReliableStreamConfig(allow_reliable=False)
    )
    stream.send_message(b'{"id":1}', 0.0)
    stream.send_message(b'{"id":2}', 0.0)
    frames = [encode_frame(f) for f in stream.frames_to_send(0.0)]
    head = b"\x08\x01\x12\x24" + UUID.encode()
    assert frames[0] == head + b"\x3a\x00"
    assert frames[1] == head + b"\x2a\x0c\x18\x01\x22\x08" + b'{"id":1}'
    assert frames[2] == head + b"\x2a\x0e\x08\x01\x18\x01\x22\x08" + b'{"id":2}'


class LegacyHarnessVsEnvironment:
    """A simulated Codex 0.133 harness sending raw frames to our environment-side mux."""

    def __init__(self) -> None:
        self.now = 0.0
        self.mux = StreamMux(MuxRole.ENVIRONMENT)

    def send(self, *frames: bytes) -> list[object]:
        for data in frames:
            self.mux.receive_bytes(data, self.now)
        return list(self.mux.events())

    def output(self) -> list[bytes]:
        return self.mux.data_to_send(self.now)


def codex_data(stream_id: str, seq: int, payload: bytes) -> bytes:
    return encode_frame(data_frame(stream_id, seq, payload))


def test_environment_answers_a_legacy_harness_with_codex_bytes() -> None:
    sim = LegacyHarnessVsEnvironment()
    events = sim.send(
        encode_frame(resume_frame(UUID, 0)),  # Codex's claim: ignored on an unknown stream
        codex_data(UUID, 0, b'{"id":1,"method":"initialize"}'),
    )
    assert sim.mux.dropped[MuxDropReason.UNKNOWN_STREAM_CONTROL] == 1
    assert events == [
        StreamOpened(UUID),
        PeerModeResolved(UUID, PeerMode.LEGACY),
        MessageReceived(UUID, b'{"id":1,"method":"initialize"}'),
    ]
    sim.mux.send_message(UUID, b'{"id":1,"result":{}}', sim.now)
    sim.mux.send_message(UUID, b'{"method":"n"}', sim.now)
    out = sim.output()
    head = b"\x08\x01\x12\x24" + UUID.encode()
    # data seq 0: 2a LL 18 01 22 LL <json>; data seq 1: 2a LL 08 01 18 01 22 LL <json>
    assert out == [
        head + b"\x2a\x18\x18\x01\x22\x14" + b'{"id":1,"result":{}}',
        head + b"\x2a\x14\x08\x01\x18\x01\x22\x0e" + b'{"method":"n"}',
    ]
    for _ in range(100):  # nothing of our own: no acks, heartbeats or resends
        sim.now += 1.0
        sim.mux.handle_timer(sim.now)
        assert sim.output() == []
    assert sim.mux.get_timer() is None


def test_environment_delivers_legacy_duplicates_and_reorderings_as_codex_does() -> None:
    sim = LegacyHarnessVsEnvironment()
    events = sim.send(
        codex_data(UUID, 10, b"ten"),
        codex_data(UUID, 5, b"five"),
        codex_data(UUID, 5, b"five"),
    )
    assert [e.payload for e in events if isinstance(e, MessageReceived)] == [
        b"ten",
        b"five",
        b"five",
    ]


def test_environment_drops_what_codex_drops_without_harming_the_stream() -> None:
    sim = LegacyHarnessVsEnvironment()
    sim.send(codex_data(UUID, 0, b"first"))
    bad = [
        b"\xff\x00garbage",
        encode_frame(data_frame(UUID, 1, b"seg", segment_index=0, segment_count=2)),
        encode_frame(heartbeat_frame(UUID)),
        encode_frame(data_frame(" " + UUID, 1, b"x")),
    ]
    assert [e for e in sim.send(*bad) if isinstance(e, MessageReceived)] == []
    assert sim.mux.streams[UUID].stats.dropped[StreamDropReason.LEGACY_SEGMENTED] == 1
    events = sim.send(codex_data(UUID, 2, b"after"))
    assert [e.payload for e in events if isinstance(e, MessageReceived)] == [b"after"]


def test_e1_acceptance_two_streams_and_a_reset() -> None:
    """tests/relay.rs (E1): independent streams on one socket; reset ends only one."""
    sim = LegacyHarnessVsEnvironment()
    init = b'{"id":1,"method":"initialize","params":{"clientName":"relay-test-%s"}}'
    events = sim.send(
        codex_data("stream-a", 0, init % b"a"), codex_data("stream-b", 0, init % b"b")
    )
    assert [e for e in events if isinstance(e, StreamOpened)] == [
        StreamOpened("stream-a"),
        StreamOpened("stream-b"),
    ]
    for sid in ("stream-a", "stream-b"):
        sim.mux.send_message(sid, f'{{"id":1,"result":"{sid}"}}'.encode(), sim.now)
    replies = [decode_frame(b) for b in sim.output()]
    assert sorted(f.stream_id for f in replies) == ["stream-a", "stream-b"]
    events = sim.send(
        encode_frame(reset_frame("stream-a", "test_reset")),
        codex_data("stream-b", 3, b'{"id":3,"method":"test/unknown-b-after-reset"}'),
    )
    assert events == [
        StreamReset("stream-a", "test_reset", remote=True),
        MessageReceived("stream-b", b'{"id":3,"method":"test/unknown-b-after-reset"}'),
    ]
    assert sim.output() == []  # nothing is sent on the reset stream
    assert "stream-a" not in sim.mux.streams
    # later data on the reset id starts a NEW stream (which needs a fresh initialize)
    events = sim.send(codex_data("stream-a", 4, b'{"id":9}'))
    assert events[0] == StreamOpened("stream-a")
    assert kinds([decode_frame(b) for b in sim.output()]) == []


def test_legacy_streams_end_with_the_socket() -> None:
    sim = LegacyHarnessVsEnvironment()
    sim.send(codex_data(UUID, 0, b"x"))
    sim.mux.connection_lost(sim.now)
    assert list(sim.mux.events()) == [StreamReset(UUID, "connection_lost", remote=False)]
    assert sim.mux.streams == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 3000), st.booleans()),
            st.tuples(st.just("wait"), st.sampled_from([0.01, 0.5, 3.0, 20.0]), st.just(False)),
            st.tuples(st.just("pump"), st.just(0), st.just(False)),
        ),
        max_size=40,
    )
)
def test_any_schedule_against_a_legacy_executor_sends_each_message_once(
    steps: list[tuple[str, float, bool]],
) -> None:
    config = ReliableStreamConfig(
        max_segment_payload_bytes=100, legacy_max_message_bytes=2000, max_send_buffer_bytes=4000
    )
    sim = HarnessVsLegacyExecutor(config)
    sim.mux.send_message(UUID, b"req-initialize", sim.now)
    sent = [b"req-initialize"]
    for action, value, is_request in steps:
        if action == "send":
            payload = (b"req-" if is_request else b"note-") + b"%d-" % len(sent)
            payload = payload.ljust(int(value), b"x")
            try:
                sim.mux.send_message(UUID, payload, sim.now)
            except (SendBlocked, MessageTooLarge):
                continue
            sent.append(payload)
        elif action == "wait":
            sim.run(value, dt=min(value, 0.25))
        else:
            sim.step()
    sim.run(60.0, dt=1.0)
    assert sim.executor.executed.get(UUID, []) == sent
    assert sim.stream.stats.retransmissions == 0
    assert all(
        (f.data.segment_index, f.data.segment_count) == (0, 1)
        for f in sim.executor.frames_seen
        if f.kind == "data"
    )
    assert {f.kind for f in sim.executor.frames_seen} <= {"resume", "data"}
    replies = [b"resp:" + m for m in sent if m.startswith(b"req")]
    assert sim.received == replies
