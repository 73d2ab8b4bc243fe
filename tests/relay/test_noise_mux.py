"""The Noise multiplexer (relay/noise/noise_mux.py), driven without sockets: a harness-side
and an environment-side :class:`NoiseStreamMux` exchange encoded frames through a link
that can drop, duplicate or alter them, on a simulated clock.

What must hold: the handshake negotiates our reliable relay between our endpoints and
Codex's records with a Codex peer (a mux with ``allow_reliable=False`` behaves as 0.171:
it never sets the flag), message 1 never reaches a possible Codex peer twice, lost
handshake frames are recovered between our endpoints, Codex 0.171's admission bounds
hold, every payload on the wire is ciphertext, a retransmission is the same ciphertext,
and tampering resets only the stream it touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from exec_server.relay.events import MessageReceived, PeerMode, StreamOpened, StreamReset
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.relay.noise import NoiseIdentity
from exec_server.relay.noise.codex_stream import CodexNoiseStream
from exec_server.relay.noise.noise_mux import (
    HandshakeFailed,
    HandshakeOutcome,
    NoiseBundle,
    NoiseMuxConfig,
    NoiseStreamMux,
    ValidationRequested,
)
from exec_server.relay.noise.records import RECORD_PLAINTEXT_BYTES
from exec_server.relay.noise.stream import NOISE_RELAY_RESET_REASON
from exec_server.relay.reliable_stream import ReliableStream
from exec_server.relay.stream_mux import MuxRole

ENV, REG = "env-1", "reg-1"
EXECUTOR = NoiseIdentity.generate()
Filter = Callable[[str, RelayFrame], list[RelayFrame]]


def keep(direction: str, frame: RelayFrame) -> list[RelayFrame]:
    return [frame]


@dataclass
class Pair:
    """A harness mux and an environment mux joined by a link; ``registry`` answers
    validations (``None``: leave them pending)."""

    harness_noise: NoiseMuxConfig = field(default_factory=NoiseMuxConfig)
    env_noise: NoiseMuxConfig = field(default_factory=NoiseMuxConfig)
    registry: Callable[[ValidationRequested], bool | None] = lambda request: True
    link: Filter = keep
    now: float = 0.0
    connected: bool = True

    def __post_init__(self) -> None:
        self.harness = NoiseStreamMux(MuxRole.HARNESS, noise=self.harness_noise)
        self.env = NoiseStreamMux(
            MuxRole.ENVIRONMENT,
            noise=self.env_noise,
            identity=EXECUTOR,
            environment_id=ENV,
            executor_registration_id=REG,
        )
        self.wire: list[tuple[str, RelayFrame]] = []
        self.events: dict[str, list[object]] = {"harness": [], "env": []}
        self.requests: list[ValidationRequested] = []

    def open(self, stream_id: str = "s-1", authorization: str = "auth") -> None:
        bundle = NoiseBundle(ENV, REG, EXECUTOR.public_key, authorization)
        self.harness.open_noise_stream(stream_id, bundle, NoiseIdentity.generate(), self.now)

    def pump(self, rounds: int = 50) -> None:
        """Move frames and events until nothing moves."""
        for _ in range(rounds):
            moved = False
            for name, src, dst in (
                ("up", self.harness, self.env),
                ("down", self.env, self.harness),
            ):
                for data in src.data_to_send(self.now):
                    frame = decode_frame(data)
                    self.wire.append((name, frame))
                    if not self.connected:
                        continue
                    for out in self.link(name, frame):
                        dst.receive_bytes(encode_frame(out), self.now)
                    moved = True
            for name, mux in (("harness", self.harness), ("env", self.env)):
                for event in mux.events():
                    moved = True
                    self.events[name].append(event)
                    if isinstance(event, ValidationRequested):
                        self.requests.append(event)
                        answer = self.registry(event)
                        if answer is not None:
                            self.env.validation_result(
                                event.stream_id, event.validation_id, answer, self.now
                            )
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass, running timers as they come due."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for mux in (self.harness, self.env):
                deadline = mux.get_timer()
                if deadline is not None and deadline <= self.now:
                    mux.handle_timer(self.now)
            self.pump()

    def received(self, side: str) -> list[bytes]:
        return [e.payload for e in self.events[side] if isinstance(e, MessageReceived)]

    def sent(self, direction: str, kind: str) -> list[RelayFrame]:
        return [f for d, f in self.wire if d == direction and f.kind == kind]


def opened(pair: Pair, side: str) -> list[str]:
    return [e.stream_id for e in pair.events[side] if isinstance(e, StreamOpened)]


# --------------------------------------------------------------------------- negotiation


def test_our_endpoints_negotiate_the_reliable_relay_over_encrypted_segments() -> None:
    pair = Pair()
    pair.open()
    pair.pump()
    assert opened(pair, "harness") == opened(pair, "env") == ["s-1"]
    for mux in (pair.harness, pair.env):
        stream = mux.streams["s-1"]
        assert isinstance(stream, ReliableStream) and stream.mode is PeerMode.RELIABLE
    # The claim and message 1 carry the capability flag; so does message 2.
    assert all(f.ack_bits & RELIABLE_CAPABILITY_BIT for _, f in pair.wire)

    message = b'{"id":1,"method":"fs/writeFile","params":{"data":"' + b"A" * 700_000 + b'"}}'
    pair.harness.send_message("s-1", message, pair.now)
    pair.env.send_message("s-1", b'{"id":1,"result":{}}', pair.now)
    pair.pump()
    assert pair.received("env") == [message]
    assert pair.received("harness") == [b'{"id":1,"result":{}}']
    data = [f.data for f in pair.sent("up", "data")]
    assert [(d.segment_index, d.segment_count) for d in data] == [(0, 3), (1, 3), (2, 3)]
    for d in data:  # ciphertext: no run of the plaintext survives
        assert b"AAAAAAAA" not in d.payload and b"fs/writeFile" not in d.payload
    assert pair.env.handshakes == {HandshakeOutcome.OPENED_RELIABLE: 1}


def test_a_codex_harness_gets_exactly_codex_records() -> None:
    """An initiator that never flags (as 0.171's harness) gets an unflagged message 2 and
    Codex's records: seq from 0, one record of at most 60 KiB per frame, no acks."""
    pair = Pair(harness_noise=NoiseMuxConfig(allow_reliable=False))
    pair.open()
    pair.pump()
    assert isinstance(pair.env.streams["s-1"], CodexNoiseStream)
    big = b'{"id":2,"result":"' + b"x" * 200_000 + b'"}'
    pair.env.send_message("s-1", big, pair.now)
    pair.env.send_message("s-1", b'{"method":"note"}', pair.now)
    pair.pump()
    assert pair.received("harness") == [big, b'{"method":"note"}']
    down = [f for d, f in pair.wire if d == "down"]
    assert [f.kind for f in down] == ["handshake"] + ["data"] * 5
    assert all(f.ack == 0 and f.ack_bits == 0 for f in down)
    records = [f.data for f in down[1:]]
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert all((r.segment_index, r.segment_count) == (0, 1) for r in records)
    assert max(len(r.payload) for r in records) == RECORD_PLAINTEXT_BYTES + 16


def test_a_codex_executor_never_sees_message_1_twice() -> None:
    """Against a responder that never flags (as 0.171's executor), validating slowly,
    the initiator repeats only its (ignored) flagged claim, never message 1."""
    pending: list[ValidationRequested] = []
    pair = Pair(env_noise=NoiseMuxConfig(allow_reliable=False), registry=lambda r: None)
    pair.registry = lambda request: pending.append(request) or None  # type: ignore[func-returns-value]
    pair.open()
    pair.advance(8.0)
    assert len(pair.sent("up", "handshake")) == 1
    assert len(pair.sent("up", "resume")) > 3  # the probes
    assert pair.sent("down", "ack_frame") == []  # our responder would have answered them
    (request,) = pending
    pair.env.validation_result(request.stream_id, request.validation_id, True, pair.now)
    pair.pump()
    stream = pair.harness.streams["s-1"]
    assert isinstance(stream, CodexNoiseStream)
    pair.harness.send_message("s-1", b'{"id":1}', pair.now)
    pair.pump()
    assert pair.received("env") == [b'{"id":1}']
    assert [f.data.seq for f in pair.sent("up", "data")] == [0]


def test_a_probe_is_not_answered_when_its_message_1_came_with_it() -> None:
    """The claim and message 1 arrive together: the responder holds message 1, so it
    does not answer the claim (the initiator would wake up for nothing); message 2 is the
    only frame down."""
    pair = Pair()
    pair.open()
    pair.pump()
    assert [f.kind for d, f in pair.wire if d == "down"] == ["handshake"]
    assert opened(pair, "harness") == ["s-1"]


def test_message_2_is_prepared_while_validating_and_sent_only_on_a_yes() -> None:
    held: list[ValidationRequested] = []
    pair = Pair(registry=lambda request: held.append(request) or None)  # type: ignore[func-returns-value]
    pair.open("yes")
    pair.open("no")
    pair.pump()
    yes, no = held
    for request in (yes, no):
        pair.env.prepare_answer(request.stream_id, request.validation_id)
        pair.env.prepare_answer(request.stream_id, request.validation_id)  # no-op
    pair.env.prepare_answer("yes", yes.validation_id + 100)  # stale: ignored
    pair.advance(3.0)  # probes come and go: still nothing but "no message 2 yet"
    assert pair.sent("down", "handshake") == [] and pair.env.streams == {}
    assert {f.stream_id for f in pair.sent("down", "ack_frame")} == {"yes", "no"}

    pair.env.validation_result("no", no.validation_id, False, pair.now)
    pair.env.validation_result("yes", yes.validation_id, True, pair.now)
    pair.pump()
    assert [f.stream_id for f in pair.sent("down", "handshake")] == ["yes"]
    assert [f.stream_id for f in pair.sent("down", "reset")] == ["no"]
    assert opened(pair, "harness") == opened(pair, "env") == ["yes"]
    assert pair.env.handshakes[HandshakeOutcome.REFUSED] == 1
    pair.harness.send_message("yes", b'{"id":1}', pair.now)
    pair.pump()
    assert pair.received("env") == [b'{"id":1}']


# --------------------------------------------------------------------------- lost handshake frames


def drop_first(kind: str, direction: str) -> Filter:
    dropped: list[RelayFrame] = []

    def link(d: str, frame: RelayFrame) -> list[RelayFrame]:
        if d == direction and frame.kind == kind and not dropped:
            dropped.append(frame)
            return []
        return [frame]

    return link


@pytest.mark.parametrize(
    ("kind", "direction"),
    [("handshake", "up"), ("handshake", "down"), ("resume", "up")],
    ids=["message-1-lost", "message-2-lost", "claim-lost"],
)
def test_lost_handshake_frames_are_recovered_between_our_endpoints(
    kind: str, direction: str
) -> None:
    pair = Pair(link=drop_first(kind, direction))
    pair.open()
    pair.advance(6.0)
    assert opened(pair, "harness") == opened(pair, "env") == ["s-1"]
    assert len(pair.requests) == 1  # the registry was asked once: authorizations are single use
    pair.harness.send_message("s-1", b'{"id":1}', pair.now)
    pair.pump()
    assert pair.received("env") == [b'{"id":1}']


def test_copies_of_message_1_are_ignored_from_our_initiator_and_reset_from_codex() -> None:
    def twice(direction: str, frame: RelayFrame) -> list[RelayFrame]:
        return [frame, frame] if frame.kind == "handshake" and direction == "up" else [frame]

    ours = Pair(link=twice)
    ours.open()
    ours.pump()
    assert isinstance(ours.env.streams["s-1"], ReliableStream)
    assert len(ours.requests) == 1 and HandshakeOutcome.DUPLICATE not in ours.env.handshakes

    codex = Pair(link=twice, harness_noise=NoiseMuxConfig(allow_reliable=False))
    codex.open()
    codex.pump()
    # 0.171's rule: a second handshake for a stream being validated resets it.
    assert "s-1" not in codex.env.streams
    assert codex.env.handshakes[HandshakeOutcome.DUPLICATE] == 1
    resets = codex.sent("down", "reset")
    assert [r.reset.reason for r in resets] == [NOISE_RELAY_RESET_REASON]


# --------------------------------------------------------------------------- admission


def test_refusals_spend_the_budget_then_handshakes_cool_down_without_touching_streams() -> None:
    pair = Pair(registry=lambda request: request.authorization == "good")
    pair.open("live", "good")
    pair.pump()
    for i in range(8):
        pair.open(f"bad-{i}", "forged")
    pair.pump()
    refused = [e for e in pair.events["harness"] if isinstance(e, HandshakeFailed)]
    assert len(refused) == 8 and all(e.remote for e in refused)
    assert pair.env.handshakes[HandshakeOutcome.REFUSED] == 8
    # The budget is spent: even a good handshake is refused now, without asking the registry.
    asked = len(pair.requests)
    pair.open("during-cooldown", "good")
    pair.pump()
    assert len(pair.requests) == asked
    assert pair.env.handshakes[HandshakeOutcome.COOLING_DOWN] == 1
    # The established stream never noticed.
    pair.harness.send_message("live", b'{"id":7}', pair.now)
    pair.pump()
    assert pair.received("env") == [b'{"id":7}']
    # After the cooldown, handshakes are admitted again.
    pair.advance(11.0, step=1.0)
    pair.open("after-cooldown", "good")
    pair.pump()
    assert "after-cooldown" in pair.env.streams


def test_pending_validations_are_bounded_and_time_out() -> None:
    pair = Pair(
        registry=lambda request: None,  # the registry never answers
        env_noise=NoiseMuxConfig(max_waiting_handshakes=1),
    )
    for i in range(34):
        pair.open(f"s-{i}")
    pair.pump()
    assert (pair.env.pending_validations, pair.env.waiting_handshakes) == (32, 1)
    assert pair.env.handshakes[HandshakeOutcome.TOO_MANY_PENDING] == 1
    pair.advance(10.5, step=0.5)
    # 32 timed out (refused); the one that waited got a slot then, and its own timeout.
    assert pair.env.handshakes[HandshakeOutcome.REFUSED] == 32
    assert (pair.env.pending_validations, pair.env.waiting_handshakes) == (1, 0)
    pair.advance(10.5, step=0.5)
    assert pair.env.handshakes[HandshakeOutcome.REFUSED] == 33
    assert pair.env.pending_validations == 0 and pair.env.streams == {}


def test_a_burst_waits_for_validation_slots_instead_of_being_reset() -> None:
    """More harnesses at once than validation slots: the surplus waits, unread, and
    every one gets its stream as slots free; the registry never sees more than 32."""
    held: list[ValidationRequested] = []
    pair = Pair(registry=lambda request: held.append(request) or None)  # type: ignore[func-returns-value]
    for i in range(100):
        pair.open(f"s-{i}")
    pair.pump()
    assert (pair.env.pending_validations, pair.env.waiting_handshakes) == (32, 68)
    while held:
        request = held.pop(0)
        pair.env.validation_result(request.stream_id, request.validation_id, True, pair.now)
        assert pair.env.pending_validations <= 32
        pair.pump()
    assert len(pair.env.streams) == 100 and len(opened(pair, "harness")) == 100
    assert set(pair.env.handshakes) == {HandshakeOutcome.OPENED_RELIABLE}


def test_garbage_and_data_before_the_handshake_get_resets() -> None:
    pair = Pair()
    pair.open("live")
    pair.pump()
    garbage = RelayFrame(
        1, "junk", 0, 0, decode_frame(encode_frame(pair.sent("up", "handshake")[0])).body
    )
    pair.env.receive_bytes(encode_frame(garbage), pair.now)  # message 1 of another stream id
    pair.env.receive_bytes(encode_frame(data_frame("nohs", 0, os.urandom(64))), pair.now)
    pair.pump()
    resets = {f.stream_id: f.reset.reason for f in pair.sent("down", "reset")}
    assert resets == {"junk": NOISE_RELAY_RESET_REASON, "nohs": NOISE_RELAY_RESET_REASON}
    assert pair.env.handshakes[HandshakeOutcome.BAD_MESSAGE] == 1  # the prologue differs
    assert list(pair.env.streams) == ["live"]


# --------------------------------------------------------------------------- reliability


def test_a_retransmission_resends_the_same_ciphertext() -> None:
    lost: list[RelayFrame] = []

    def lose_first_data(direction: str, frame: RelayFrame) -> list[RelayFrame]:
        if direction == "up" and frame.kind == "data" and not lost:
            lost.append(frame)
            return []
        return [frame]

    pair = Pair(link=lose_first_data)
    pair.open()
    pair.pump()
    pair.harness.send_message("s-1", b'{"id":1,"method":"x"}', pair.now)
    pair.pump()
    assert pair.received("env") == []
    pair.advance(2.0, step=0.1)
    assert pair.received("env") == [b'{"id":1,"method":"x"}']
    copies = [f.data for f in pair.sent("up", "data") if f.data.seq == lost[0].data.seq]
    assert len(copies) >= 2 and {c.payload for c in copies} == {lost[0].data.payload}


def test_regrouping_segments_or_altering_a_record_resets_only_that_stream() -> None:
    def tamper(direction: str, frame: RelayFrame) -> list[RelayFrame]:
        if direction == "up" and frame.kind == "data" and frame.stream_id == "victim":
            d = frame.data
            # Claim the 2-segment message is two whole messages (the header is not
            # encrypted; the record's associated data says otherwise).
            return [
                data_frame(
                    frame.stream_id, d.seq, d.payload, ack=frame.ack, ack_bits=frame.ack_bits
                )
            ]
        return [frame]

    pair = Pair(link=tamper)
    pair.open("victim")
    pair.open("bystander")
    pair.pump()
    pair.harness.send_message("victim", b"v" * 300_000, pair.now)
    pair.harness.send_message("bystander", b'{"id":1}', pair.now)
    pair.pump()
    assert pair.received("env") == [b'{"id":1}']
    resets = [e for e in pair.events["env"] if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.reason) for r in resets] == [
        ("victim", "protocol_error:noise_record_rejected")
    ]
    assert list(pair.env.streams) == ["bystander"]


def test_an_encrypted_stream_resumes_across_a_socket_loss() -> None:
    pair = Pair()
    pair.open()
    pair.pump()
    pair.harness.send_message("s-1", b'{"id":1}', pair.now)
    pair.connected = False  # the frames written now are lost with the socket
    pair.pump()
    for mux in (pair.harness, pair.env):
        mux.connection_lost(pair.now)
    pair.connected = True
    for mux in (pair.harness, pair.env):
        mux.on_reconnect(pair.now)
    pair.pump()
    pair.advance(1.0)
    assert pair.received("env") == [b'{"id":1}']
    assert isinstance(pair.env.streams["s-1"], ReliableStream)


def test_a_pending_handshake_survives_the_responders_reconnect() -> None:
    """The registry consumed the authorization: the responder must not validate twice."""
    held: list[ValidationRequested] = []
    pair = Pair(registry=lambda request: held.append(request) or None)  # type: ignore[func-returns-value]
    pair.open()
    pair.advance(1.0)
    pair.env.connection_lost(pair.now)
    pair.env.on_reconnect(pair.now)
    (request,) = held
    pair.env.validation_result(request.stream_id, request.validation_id, True, pair.now)
    pair.advance(3.0)
    assert opened(pair, "harness") == ["s-1"] and len(held) == 1
