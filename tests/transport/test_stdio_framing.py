"""Newline framing for the stdio transport."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exec_server.transport.channel import MalformedFrame
from exec_server.transport.stdio import LineFramer


def test_splits_lines_and_skips_blank_ones() -> None:
    framer = LineFramer(1024)
    assert framer.feed(b'{"a":1}\n\n  \n{"b"') == [b'{"a":1}']
    assert framer.feed(b":2}\n") == [b'{"b":2}']
    assert framer.feed(b'{"c":3}') == []
    assert framer.feed_eof() == [b'{"c":3}']


def test_oversized_line_is_discarded_and_reported_then_framing_recovers() -> None:
    framer = LineFramer(10)
    out = framer.feed(b"x" * 8)
    out += framer.feed(b"y" * 8)
    out += framer.feed(b"zz\n{}\n")
    assert len(out) == 2
    assert isinstance(out[0], MalformedFrame) and "10 bytes" in out[0].detail
    assert out[1] == b"{}"


@given(
    st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b), max_size=20),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
)
def test_any_split_of_the_stream_yields_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(1 << 20)
    out: list[bytes | MalformedFrame] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += framer.feed(stream[pos : pos + step])
        pos += step
        i += 1
    out += framer.feed_eof()
    assert out == [line for line in lines if line.strip()]
