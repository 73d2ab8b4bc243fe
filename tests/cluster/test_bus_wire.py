"""The frame bus's wire format without NATS: headers, split frames, credit messages."""

from __future__ import annotations

import os

import pytest

from exec_server.rendezvous.cluster.bus_wire import (
    PART_LOST,
    ChannelReset,
    FrameHeader,
    Grant,
    Reassembler,
    credit_subject,
    frame_header,
    frames_subject,
    grant_text,
    parse_credit,
    parse_frame_header,
    reset_text,
    sender_of,
    split_frame,
)


def test_subjects_name_the_receiver_then_the_sender() -> None:
    assert frames_subject("exs", "b", "a") == "exs.frames.b.a"
    assert credit_subject("exs", "a", "b") == "exs.credit.a.b"
    assert sender_of("exs.frames.b.a") == "a"


def test_a_frame_header_round_trips() -> None:
    text = frame_header("env-1", "h", "a-inc", 3, 17)
    assert parse_frame_header("a", "b", text) == FrameHeader("env-1", "h", "a-inc", 3, 17)
    assert parse_frame_header("a", "b", f"{text} 2/5") == FrameHeader(
        "env-1", "h", "a-inc", 3, 17, (2, 5)
    )


@pytest.mark.parametrize(
    ("sender", "text"),
    [
        ("a", None),
        ("a", ""),
        ("a", "env h inc 1"),  # too few fields
        ("a", "env h inc 1 2 1/2 extra"),
        ("a", "env x inc 1 2"),  # unknown kind
        ("a", "env h inc one 2"),
        ("a", "env h inc 1 2 1-2"),  # bad part
        ("b", "env h inc 1 2"),  # claims to come from the receiver itself
        ("not a node!", "env h inc 1 2"),
    ],
)
def test_malformed_frame_headers_are_refused(sender: str, text: str | None) -> None:
    assert parse_frame_header(sender, "b", text) is None


def test_a_large_frame_is_split_in_order_and_joined() -> None:
    data = os.urandom(10_000)
    header = frame_header("env", "e", "inc", 1, 9)
    parts = list(split_frame(data, header, 4096))
    assert [h for _, h in parts] == [f"{header} 1/3", f"{header} 2/3", f"{header} 3/3"]
    joiner = Reassembler()
    results = [joiner.add("a", _parsed(h), chunk) for chunk, h in parts]
    assert results[:2] == [None, None] and results[2] == data
    assert list(split_frame(b"small", header, 4096)) == [(b"small", header)]


def test_a_missing_part_loses_only_that_frame() -> None:
    data = os.urandom(9000)
    joiner = Reassembler()
    first, _, third = split_frame(data, frame_header("env", "e", "inc", 1, 9), 4096)
    assert joiner.add("a", _parsed(first[1]), first[0]) is None
    assert joiner.add("a", _parsed(third[1]), third[0]) is PART_LOST
    again = list(split_frame(data, frame_header("env", "e", "inc", 1, 10), 4096))
    assert [joiner.add("a", _parsed(h), chunk) for chunk, h in again][-1] == data


def test_credit_messages_round_trip_and_garbage_is_refused() -> None:
    assert parse_credit(grant_text("env", "inc", 2, 4096).encode()) == Grant("env", "inc", 2, 4096)
    assert parse_credit(reset_text("env", "inc", 3).encode()) == ChannelReset("env", "inc", 3)
    for garbage in (
        b"",
        b"grant env",
        b"grant env inc 1",
        b"reset env inc x",
        b"\xff",
        b"ok a b 1",
    ):
        assert parse_credit(garbage) is None


def _parsed(text: str) -> FrameHeader:
    header = parse_frame_header("a", "b", text)
    assert header is not None
    return header
