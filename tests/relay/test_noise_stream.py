"""The Codex-compatible Noise stream layer (relay/noise/records.py, relay/noise/stream.py),
driven without sockets. Phase 1's :class:`NoiseInitiatorStream` plays the 0.171 harness
(it never sets the reliable capability flag); the environment side is the production
responder, :class:`~exec_server.relay.noise.noise_mux.NoiseStreamMux`, which must then
behave exactly as the 0.171 executor does. Frames go through the real codec, so every
frame is also wire-valid."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.relay.events import MessageReceived as MuxMessage
from exec_server.relay.events import StreamReset
from exec_server.relay.frame_codec import (
    RelayFrame,
    ack_frame,
    data_frame,
    decode_frame,
    encode_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.noise import NoiseIdentity, NoiseProtocolError
from exec_server.relay.noise.noise_mux import (
    HandshakeOutcome,
    NoiseMuxConfig,
    NoiseStreamMux,
    ValidationRequested,
)
from exec_server.relay.noise.records import (
    MAX_MESSAGE_BYTES,
    RECORD_PLAINTEXT_BYTES,
    MessageDecoder,
    OrderedRecords,
    frame_message,
    split_records,
)
from exec_server.relay.noise.stream import (
    NOISE_RELAY_RESET_REASON,
    HandshakeCompleted,
    MessageReceived,
    NoiseEvent,
    NoiseInitiatorStream,
    SendFrame,
    StreamClosed,
    handshake_frame,
)
from exec_server.relay.stream_mux import MuxConfig, MuxRole

ENV, REG = "env-1", "registration-1"
RESPONDER = NoiseIdentity.generate()


def wire(frame: RelayFrame) -> RelayFrame:
    """Through the real codec and back."""
    return decode_frame(encode_frame(frame))


def frames(events: list[NoiseEvent]) -> list[RelayFrame]:
    return [wire(e.frame) for e in events if isinstance(e, SendFrame)]


def of_type(events: list[Any], cls: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def initiator(stream_id: str = "s-1", authorization: str = "auth-1") -> NoiseInitiatorStream:
    return NoiseInitiatorStream(
        stream_id=stream_id,
        environment_id=ENV,
        executor_registration_id=REG,
        executor_public_key=RESPONDER.public_key,
        authorization=authorization,
        identity=NoiseIdentity.generate(),
    )


class Responder:
    """The environment side: a Noise multiplexer, fed one frame at a time; every call
    returns ``(frames written, events)``."""

    def __init__(self, max_streams: int = 4096, **noise: Any) -> None:
        self.mux = NoiseStreamMux(
            MuxRole.ENVIRONMENT,
            MuxConfig(max_streams=max_streams),
            noise=NoiseMuxConfig(**noise),
            identity=RESPONDER,
            environment_id=ENV,
            executor_registration_id=REG,
        )

    def flush(self, now: float = 0.0) -> tuple[list[RelayFrame], list[Any]]:
        out = [decode_frame(data) for data in self.mux.data_to_send(now)]
        return out, list(self.mux.events())

    def receive(self, frame: RelayFrame, now: float = 0.0) -> tuple[list[RelayFrame], list[Any]]:
        self.mux.receive_bytes(encode_frame(frame), now)
        return self.flush(now)

    def deliver(self, sent: list[RelayFrame]) -> list[bytes]:
        received: list[bytes] = []
        for frame in sent:
            _, events = self.receive(frame)
            received += [e.payload for e in events if isinstance(e, MuxMessage)]
        return received

    def validate(
        self, request: ValidationRequested, valid: bool, now: float = 0.0
    ) -> tuple[list[RelayFrame], list[Any]]:
        self.mux.validation_result(request.stream_id, request.validation_id, valid, now)
        return self.flush(now)

    def send(self, stream_id: str, *messages: bytes) -> list[RelayFrame]:
        for message in messages:
            self.mux.send_message(stream_id, message, 0.0)
        return self.flush()[0]


def request_of(events: list[Any]) -> ValidationRequested:
    (request,) = of_type(events, ValidationRequested)
    assert isinstance(request, ValidationRequested)
    return request


def open_stream(conn: Responder, stream_id: str = "s-1", now: float = 0.0) -> NoiseInitiatorStream:
    """Run the handshake to completion (the registry says yes)."""
    harness = initiator(stream_id)
    resume, hello = (wire(f) for f in harness.start())
    assert conn.receive(resume, now) == ([], [])  # Codex's claim: nothing to answer
    _, events = conn.receive(hello, now)
    request = request_of(events)
    assert request.harness_public_key == harness._identity.public_key
    assert request.authorization == "auth-1"
    (reply,), _ = conn.validate(request, True, now)
    assert reply.kind == "handshake" and (reply.ack, reply.ack_bits) == (0, 0)
    assert harness.receive_frame(reply) == [HandshakeCompleted(stream_id)]
    assert harness.state == "open"
    return harness


def messages(events: list[NoiseEvent]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, MessageReceived)]


# --------------------------------------------------------------------------- records


def test_framing_packs_messages_and_cuts_60k_records() -> None:
    assert frame_message(b"{}") == b"\x00\x00\x00\x02{}"
    with pytest.raises(NoiseProtocolError):
        frame_message(b"")
    assert split_records([b"{}", b"[1]"]) == [b"\x00\x00\x00\x02{}\x00\x00\x00\x03[1]"]
    big = b"x" * 200_000
    records = split_records([big])
    assert [len(r) for r in records] == [61440, 61440, 61440, 200_004 - 3 * 61440]
    decoder = MessageDecoder()
    out: list[bytes] = []
    for record in records:
        out += decoder.push(record)
    assert out == [big] and decoder.buffered_bytes == 0


def test_decoder_handles_byte_by_byte_input_and_refuses_bad_lengths() -> None:
    stream = b"".join(frame_message(m) for m in (b"a", b"bb", b"c" * 300))
    decoder = MessageDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.push(stream[i : i + 1])
    assert out == [b"a", b"bb", b"c" * 300]
    with pytest.raises(NoiseProtocolError, match="invalid length"):
        MessageDecoder().push(b"\x00\x00\x00\x00")
    with pytest.raises(NoiseProtocolError, match="invalid length"):
        MessageDecoder().push((MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(NoiseProtocolError, match="plaintext record exceeds"):
        MessageDecoder().push(b"\x00" * (RECORD_PLAINTEXT_BYTES + 1))


def test_ordered_records_reorder_drop_duplicates_and_bound_the_window() -> None:
    ordered = OrderedRecords()
    assert ordered.push(1, b"r1") == []
    assert ordered.push(1, b"copy") == []  # duplicate of a pending record: first wins
    assert ordered.push(2, b"r2") == []
    assert ordered.push(0, b"r0") == [b"r0", b"r1", b"r2"]
    assert ordered.push(0, b"r0") == []  # already released
    assert ordered.next_seq == 3 and ordered.pending_bytes == 0
    assert ordered.push(3 + 64, b"far") == []  # exactly the window edge
    with pytest.raises(NoiseProtocolError, match="reorder window"):
        ordered.push(3 + 65, b"too far")
    small = OrderedRecords(max_pending_bytes=10)
    small.push(1, b"12345")
    with pytest.raises(NoiseProtocolError, match="buffer is full"):
        small.push(2, b"123456")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_permutation_with_duplicates_inside_the_window_delivers_in_order(
    data: st.DataObject,
) -> None:
    count = data.draw(st.integers(1, 40))
    order = data.draw(st.permutations(list(range(count))))
    dupes = data.draw(st.lists(st.integers(0, count - 1), max_size=10))
    ordered = OrderedRecords()
    released: list[bytes] = []
    for seq in list(order) + dupes:
        released += ordered.push(seq, seq.to_bytes(2, "big"))
    assert released == [i.to_bytes(2, "big") for i in range(count)]


# --------------------------------------------------------------------------- handshake


def test_initiator_sends_resume_then_handshake_like_codex() -> None:
    harness = initiator()
    resume, hello = harness.start()
    assert encode_frame(resume) == encode_frame(resume_frame("s-1", 0))
    assert hello.kind == "handshake" and (hello.ack, hello.ack_bits) == (0, 0)
    assert len(hello.handshake.payload) == 3568 + len("auth-1")
    with pytest.raises(NoiseProtocolError, match="already started"):
        harness.start()


def test_full_stream_messages_both_ways_with_codex_frame_shape() -> None:
    conn = Responder()
    harness = open_stream(conn)
    big = json.dumps({"id": 3, "result": {"data": "Z" * 200_000}}).encode()
    sent = harness.send_messages([b'{"id":1,"method":"initialize"}', big])
    assert [f.data.seq for f in sent] == list(range(len(sent)))
    assert all(
        (f.data.segment_index, f.data.segment_count, f.ack, f.ack_bits) == (0, 1, 0, 0)
        for f in sent
    )
    assert conn.deliver(sent) == [b'{"id":1,"method":"initialize"}', big]
    (reply,) = conn.send("s-1", b'{"id":1,"result":{}}')
    assert (reply.data.seq, reply.ack, reply.ack_bits) == (0, 0, 0)
    assert messages(harness.receive_frame(wire(reply))) == [b'{"id":1,"result":{}}']
    # Sequence numbers continue per direction; the responder's records are Codex's too.
    more = harness.send_messages([b"[]"])
    assert more[0].data.seq == len(sent)
    replies = conn.send("s-1", big)
    assert [f.data.seq for f in replies] == [1, 2, 3, 4]
    assert max(len(f.data.payload) for f in replies) == RECORD_PLAINTEXT_BYTES + 16


def test_reordered_and_duplicated_records_are_decrypted_in_order() -> None:
    conn = Responder()
    harness = open_stream(conn)
    batch = [json.dumps({"n": i, "pad": "p" * 70_000}).encode() for i in range(3)]
    sent: list[RelayFrame] = []
    for message in batch:
        sent += harness.send_messages([message])
    shuffled = sent[:]
    random.Random(7).shuffle(shuffled)
    shuffled += shuffled[:3]  # exact duplicates: dropped
    assert conn.deliver(shuffled) == batch


def test_ack_heartbeat_and_late_resume_are_ignored() -> None:
    conn = Responder()
    harness = open_stream(conn)
    for frame in (
        ack_frame("s-1", ack=3, ack_bits=5),
        heartbeat_frame("s-1"),
        resume_frame("s-1", 9),
    ):
        assert conn.receive(wire(frame)) == ([], [])
        assert harness.receive_frame(wire(frame)) == []
    assert conn.deliver(harness.send_messages([b"{}"])) == [b"{}"]


def test_validation_refused_resets_and_never_sends_message2() -> None:
    conn = Responder()
    harness = initiator()
    _, hello = harness.start()
    request = request_of(conn.receive(wire(hello))[1])
    (reset,), _ = conn.validate(request, False)
    assert reset.kind == "reset" and reset.reset.reason == NOISE_RELAY_RESET_REASON
    assert conn.mux.failed_handshakes == 1 and not conn.mux.streams
    assert harness.receive_frame(reset) == [StreamClosed("s-1", NOISE_RELAY_RESET_REASON, True)]


def test_data_before_the_handshake_completes_is_a_protocol_error() -> None:
    conn = Responder()
    harness = initiator()
    _, hello = harness.start()
    conn.receive(wire(hello))
    out, _ = conn.receive(wire(data_frame("s-1", 0, b"x" * 32)))
    assert [(f.kind, f.reset.reason) for f in out] == [("reset", NOISE_RELAY_RESET_REASON)]
    assert conn.mux.pending_validations == 0 and conn.mux.failed_handshakes == 1
    # The initiator refuses data before message 2 as well.
    other = initiator("s-2")
    other.start()
    events = other.receive_frame(wire(data_frame("s-2", 0, b"x" * 32)))
    assert [f.kind for f in frames(events)] == ["reset"]
    assert of_type(events, StreamClosed)[0].reason.endswith("before handshake completion")
    assert other.state == "closed"


def test_data_for_an_unknown_stream_is_reset_without_charging_the_budget() -> None:
    conn = Responder()
    out, _ = conn.receive(wire(data_frame("nope", 0, b"x" * 32)))
    assert [(f.stream_id, f.kind) for f in out] == [("nope", "reset")]
    assert conn.mux.failed_handshakes == 0


def test_duplicate_handshake_on_live_or_pending_stream_is_reset() -> None:
    conn = Responder()
    harness = open_stream(conn)
    again = initiator("s-1")
    out, _ = conn.receive(wire(again.start()[1]))
    assert [(f.kind, f.reset.reason) for f in out] == [("reset", NOISE_RELAY_RESET_REASON)]
    assert not conn.mux.streams
    del harness
    # On a pending stream: both attempts fail and the budget is charged.
    first, second = initiator("s-9"), initiator("s-9")
    conn.receive(wire(first.start()[1]))
    out, _ = conn.receive(wire(second.start()[1]))
    assert [f.kind for f in out] == ["reset"]
    assert conn.mux.pending_validations == 0 and conn.mux.failed_handshakes == 1


def test_garbage_handshakes_spend_the_budget_then_handshakes_pause() -> None:
    """0.171 closes the socket after 8; we refuse new handshakes for the cooldown, and
    the streams already open carry on."""
    conn = Responder()
    good = open_stream(conn, "good")
    for i in range(8):
        out, _ = conn.receive(wire(handshake_frame(f"bad-{i}", b"\x01" * 4000)))
        assert [f.kind for f in out] == ["reset"]
    assert conn.mux.failed_handshakes == 8
    out, events = conn.receive(wire(initiator("late").start()[1]), 1.0)
    assert [f.kind for f in out] == ["reset"] and not of_type(events, ValidationRequested)
    assert conn.mux.handshakes[HandshakeOutcome.COOLING_DOWN] == 1
    assert conn.deliver(good.send_messages([b'{"still":1}'])) == [b'{"still":1}']
    # After the cooldown a handshake goes to the registry again.
    _, events = conn.receive(wire(initiator("later").start()[1]), 20.0)
    assert of_type(events, ValidationRequested)


def test_pending_validation_and_active_stream_bounds() -> None:
    """Pending handshakes count against the stream limit: a harness is not validated
    (its single-use authorization spent) for a stream there is no room for."""
    conn = Responder(max_streams=2, max_pending_validations=2, max_waiting_handshakes=0)
    harnesses = [initiator(f"p-{i}") for i in range(4)]
    results = [conn.receive(wire(h.start()[1])) for h in harnesses[:3]]
    first, second = request_of(results[0][1]), request_of(results[1][1])
    assert [f.kind for f in results[2][0]] == ["reset"]  # third: too many pending
    out, _ = conn.validate(first, True)
    assert [f.kind for f in out] == ["handshake"]
    out, events = conn.receive(wire(harnesses[3].start()[1]))  # 1 open + 1 pending: full
    assert [f.kind for f in out] == ["reset"] and not of_type(events, ValidationRequested)
    out, _ = conn.validate(second, True)
    assert [f.kind for f in out] == ["handshake"]
    assert sorted(conn.mux.streams) == ["p-0", "p-1"]
    assert conn.mux.handshakes[HandshakeOutcome.TOO_MANY_PENDING] == 1
    assert conn.mux.handshakes[HandshakeOutcome.TOO_MANY_STREAMS] == 1
    assert conn.mux.failed_handshakes == 0


def test_validation_timeout_and_stale_results() -> None:
    conn = Responder(validation_timeout_s=10.0)
    harness = initiator()
    request = request_of(conn.receive(wire(harness.start()[1]), 100.0)[1])
    assert conn.mux.get_timer() == 110.0
    conn.mux.handle_timer(109.9)
    assert conn.flush(109.9) == ([], [])
    conn.mux.handle_timer(110.0)
    out, _ = conn.flush(110.0)
    assert [f.kind for f in out] == ["reset"] and conn.mux.failed_handshakes == 1
    assert conn.mux.get_timer() is None
    # The registry's late "yes" is stale now, and stays stale if the id is reused.
    retry = initiator()
    request2 = request_of(conn.receive(wire(retry.start()[1]), 120.0)[1])
    assert conn.validate(request, True) == ([], [])
    assert conn.mux.pending_validations == 1
    out, _ = conn.validate(request2, True)
    assert [f.kind for f in out] == ["handshake"]


def test_a_tampered_record_resets_only_its_stream() -> None:
    conn = Responder()
    a, b = open_stream(conn, "a"), open_stream(conn, "b")
    (record,) = a.send_messages([b'{"x":1}'])
    payload = bytearray(record.data.payload)
    payload[-1] ^= 1
    out, events = conn.receive(wire(data_frame("a", 0, bytes(payload))))
    assert [(f.kind, f.reset.reason) for f in out] == [("reset", NOISE_RELAY_RESET_REASON)]
    assert of_type(events, StreamReset)[0].reason == "Noise message failed authentication"
    assert conn.deliver(b.send_messages([b"[2]"])) == [b"[2]"]
    assert conn.mux.failed_handshakes == 0 and list(conn.mux.streams) == ["b"]


def test_segmented_data_resets_the_stream_instead_of_hanging() -> None:
    conn = Responder()
    harness = open_stream(conn)
    (record,) = harness.send_messages([b"{}"])
    segmented = data_frame("s-1", 0, record.data.payload, segment_index=0, segment_count=2)
    out, _ = conn.receive(wire(segmented))
    assert [f.kind for f in out] == ["reset"]


def test_peer_reset_and_local_close() -> None:
    conn = Responder()
    harness = open_stream(conn)
    _, events = conn.receive(wire(reset_frame("s-1", "bye")))
    assert events == [StreamReset("s-1", "bye", remote=True)]
    assert not conn.mux.streams
    (reset,) = harness.close()
    assert reset.reset.reason == NOISE_RELAY_RESET_REASON and harness.state == "closed"
    assert harness.close() == []
    with pytest.raises(NoiseProtocolError, match="closed"):
        harness.send_messages([b"{}"])
    other = open_stream(conn, "o")
    conn.mux.reset_stream("o", "session ended")
    (reset,), _ = conn.flush()
    assert reset.reset.reason == NOISE_RELAY_RESET_REASON  # the only reason 0.171 sends
    assert other.receive_frame(wire(reset)) == [StreamClosed("o", NOISE_RELAY_RESET_REASON, True)]


def test_an_unexpected_second_message2_is_a_protocol_error_at_the_initiator() -> None:
    conn = Responder()
    harness = open_stream(conn)
    events = harness.receive_frame(wire(handshake_frame("s-1", b"\x00" * 3424)))
    assert [f.kind for f in frames(events)] == ["reset"]
    assert harness.state == "closed"


def test_sequence_numbers_never_wrap() -> None:
    conn = Responder()
    harness = open_stream(conn)
    channel = harness.channel
    assert channel is not None
    channel._next_seq = 0xFFFF_FFFF
    assert harness.send_messages([b"{}"])[0].data.seq == 0xFFFF_FFFF
    with pytest.raises(NoiseProtocolError, match="exhausted"):
        harness.send_messages([b"{}"])
