"""Who may open a stream, decided without a mux (``relay/mux_admission.py``)."""

from __future__ import annotations

from exec_server.relay.frames import (
    RELIABLE_CAPABILITY_BIT,
    ack_frame,
    data_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.mux_admission import Refusal, admit
from exec_server.relay.mux_config import MuxConfig, MuxDropReason, MuxRole
from exec_server.relay.stream_config import ReliableStreamConfig

ENV = MuxRole.ENVIRONMENT
FLAG = RELIABLE_CAPABILITY_BIT
CONFIG = MuxConfig(max_streams=2)


def test_a_legacy_data_frame_opens_a_stream_on_the_environment() -> None:
    assert admit(data_frame("s", 0, b"{}"), ENV, CONFIG, set(), 0) is None


def test_a_flagged_data_or_resume_frame_opens_a_stream() -> None:
    assert admit(data_frame("s", 1, b"{}", ack_bits=FLAG), ENV, CONFIG, set(), 0) is None
    assert admit(resume_frame("s", 1, ack_bits=FLAG), ENV, CONFIG, set(), 0) is None


def test_control_frames_never_open_a_stream() -> None:
    unknown = Refusal(MuxDropReason.UNKNOWN_STREAM_CONTROL)
    for frame in (
        resume_frame("s", 0),  # Codex's unflagged claim
        ack_frame("s", ack=0, ack_bits=FLAG),
        heartbeat_frame("s", ack_bits=FLAG),
        reset_frame("s", "bye", ack_bits=FLAG),
    ):
        assert admit(frame, ENV, CONFIG, set(), 0) == unknown


def test_a_reliable_peer_may_not_reopen_a_retired_id() -> None:
    frame = data_frame("s", 1, b"{}", ack_bits=FLAG)
    assert admit(frame, ENV, CONFIG, {"s"}, 0) == Refusal(
        MuxDropReason.RETIRED_STREAM, "stream_closed", True
    )
    # A legacy peer reuses ids, as Codex does.
    assert admit(data_frame("s", 0, b"{}"), ENV, CONFIG, {"s"}, 0) is None


def test_a_reliable_frame_acknowledging_data_is_a_lost_stream() -> None:
    frame = data_frame("s", 5, b"{}", ack=4, ack_bits=FLAG)
    assert admit(frame, ENV, CONFIG, set(), 0) == Refusal(
        MuxDropReason.LOST_STREAM, "unknown_stream", True
    )


def test_the_first_ack_follows_the_configured_initial_seq() -> None:
    config = MuxConfig(stream=ReliableStreamConfig(initial_seq=10))
    assert admit(data_frame("s", 10, b"{}", ack=9, ack_bits=FLAG), ENV, config, set(), 0) is None


def test_the_harness_never_accepts_a_stream() -> None:
    refusal = admit(data_frame("s", 0, b"{}"), MuxRole.HARNESS, CONFIG, set(), 0)
    assert refusal == Refusal(MuxDropReason.UNKNOWN_STREAM)


def test_too_many_streams_is_answered_with_a_reset() -> None:
    assert admit(data_frame("s", 0, b"{}"), ENV, CONFIG, set(), 2) == Refusal(
        MuxDropReason.TOO_MANY_STREAMS, "too_many_streams", False
    )
    flagged = data_frame("s", 1, b"{}", ack_bits=FLAG)
    assert admit(flagged, ENV, CONFIG, set(), 2) == Refusal(
        MuxDropReason.TOO_MANY_STREAMS, "too_many_streams", True
    )


def test_without_reliable_support_a_flag_counts_for_nothing() -> None:
    config = MuxConfig(stream=ReliableStreamConfig(allow_reliable=False))
    assert admit(resume_frame("s", 1, ack_bits=FLAG), ENV, config, set(), 0) == Refusal(
        MuxDropReason.UNKNOWN_STREAM_CONTROL
    )
    # Data with a stale flag is taken as legacy data, whatever it acknowledges.
    frame = data_frame("s", 5, b"{}", ack=4, ack_bits=FLAG)
    assert admit(frame, ENV, config, {"s"}, 0) is None
