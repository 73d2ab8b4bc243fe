"""The relay sockets' websocket frame reader (sans-IO): messages and control frames
come out as they went in whatever the reads' sizes, every framing error closes with its
code, and no input makes it raise."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rendezvous_support import client_frame

from exec_server.rendezvous.errors import SocketProtocolError
from exec_server.rendezvous.ws_reader import PART_BYTES, SMALL_FRAME_BYTES, STAGE_BYTES, FrameReader
from exec_server.transport import ws_mask

LIMIT = 300_000
SIZES = st.one_of(
    st.integers(0, 200),
    st.sampled_from([125, 126, 127, 65_535, 65_536, SMALL_FRAME_BYTES, STAGE_BYTES]),
    st.integers(0, LIMIT),
)


@dataclass
class Sink:
    events: list[tuple[str, object]] = field(default_factory=list)
    errors: list[SocketProtocolError] = field(default_factory=list)

    def on_message(self, payload: bytearray) -> None:
        assert type(payload) is bytearray
        self.events.append(("message", bytes(payload)))

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_pong(self) -> None:
        self.events.append(("pong", None))

    def on_close(self, code: int | None, reason: bytes) -> None:
        self.events.append(("close", (code, reason)))

    def on_error(self, error: SocketProtocolError) -> None:
        self.errors.append(error)


def read(data: bytes, steps: list[int] | None = None, limit: int = LIMIT) -> Sink:
    """Feed ``data`` to a reader in reads of the sizes ``steps`` (cycled; at most what
    the reader offers)."""
    sink = Sink()
    reader = FrameReader(limit, sink)
    view = memoryview(data)
    i = 0
    while view:
        buffer = reader.get_buffer()
        assert len(buffer) > 0
        step = steps[i % len(steps)] if steps else len(view)
        i += 1
        size = min(len(buffer), len(view), max(step, 1))
        buffer[:size] = view[:size]
        reader.buffer_updated(size)
        view = view[size:]
    return sink


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, object]]]:
    """Valid client input and the events it must give: messages (some fragmented),
    pings and pongs between them and between fragments, optionally a close at the end."""
    wire: list[bytes] = []
    expected: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            ping = draw(st.binary(max_size=125))
            wire.append(client_frame(ping, 0x89, os.urandom(4)))
            expected.append(("ping", ping))
        payload = os.urandom(draw(SIZES))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for index, piece in enumerate(pieces):
            opcode = 0x2 if index == 0 else 0x0
            fin = 0x80 if index == len(pieces) - 1 else 0
            wire.append(client_frame(piece, fin | opcode, os.urandom(4)))
            if fin == 0 and draw(st.booleans()):
                wire.append(client_frame(b"", 0x8A, os.urandom(4)))
                expected.append(("pong", None))
        expected.append(("message", payload))
    if draw(st.booleans()):
        reason = draw(st.text(max_size=40)).encode()[:123]
        wire.append(client_frame((1000).to_bytes(2, "big") + reason, 0x88, os.urandom(4)))
        expected.append(("close", (1000, reason)))
    return b"".join(wire), expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.lists(st.integers(1, 200_000), min_size=1, max_size=5))
def test_messages_and_control_frames_come_out_as_they_went_in(
    conversation: tuple[bytes, list[tuple[str, object]]], steps: list[int]
) -> None:
    wire, expected = conversation
    sink = read(wire, steps)
    assert not sink.errors
    assert sink.events == expected


@settings(max_examples=30, deadline=None)
@given(conversations())
def test_one_byte_reads_give_the_same_events(
    conversation: tuple[bytes, list[tuple[str, object]]],
) -> None:
    wire, expected = conversation
    if len(wire) > 20_000:
        wire, expected = wire[:0], []
    assert read(wire, [1]).events == expected


def _close(code: int, reason: bytes = b"") -> bytes:
    return client_frame(code.to_bytes(2, "big") + reason, 0x88)


@pytest.mark.parametrize(
    ("wire", "code", "reason"),
    [
        (client_frame(b"x", 0xC2), 1002, "undecodable"),  # RSV1
        (client_frame(b"x", 0xA2), 1002, "undecodable"),  # RSV2
        (client_frame(b"x", 0x92), 1002, "undecodable"),  # RSV3
        (client_frame(b"x", 0x83), 1002, "undecodable"),  # reserved data opcode
        (client_frame(b"x", 0x8B), 1002, "undecodable"),  # reserved control opcode
        (bytes([0x82, 0x01]) + b"x", 1002, "undecodable"),  # unmasked
        (client_frame(b"x" * 10, long_form=True), 1002, "undecodable"),  # 8-byte length
        (bytes([0x82, 0xFE, 0, 5, 1, 2, 3, 4]) + b"x" * 5, 1002, "undecodable"),  # 2-byte
        (bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]), 1002, "undecodable"),
        (client_frame(b"p", 0x09), 1002, "undecodable"),  # fragmented ping
        (client_frame(b"p" * 126, 0x89), 1002, "undecodable"),  # long ping
        (client_frame(b"c", 0x80), 1002, "undecodable"),  # lone continuation
        (client_frame(b"a", 0x02) + client_frame(b"b"), 1002, "undecodable"),
        (client_frame(b"a", 0x02) + client_frame(b"b", 0x81), 1002, "undecodable"),
        (client_frame(b"{}", 0x81), 1003, "text_frame"),
        (client_frame(b"{", 0x01), 1003, "text_frame"),
        (client_frame(b"x" * (LIMIT + 1))[:14], 1009, "oversize"),  # from the header
        (
            client_frame(b"x" * LIMIT, 0x02) + client_frame(b"y", 0x80)[:6],
            1009,
            "oversize",
        ),
        (client_frame(b"\x03", 0x88), 1002, "undecodable"),  # one-byte close payload
        (_close(1005), 1002, "undecodable"),
        (_close(999), 1002, "undecodable"),
        (_close(2999), 1002, "undecodable"),
        (_close(5000), 1002, "undecodable"),
        (_close(1000, b"\xff"), 1007, "undecodable"),
    ],
)
def test_every_framing_error_closes_with_its_code(wire: bytes, code: int, reason: str) -> None:
    after = client_frame(b"after")
    for steps in (None, [1], [7]):
        sink = read(wire + after, steps)
        assert [(e.close_code, e.reason) for e in sink.errors] == [(code, reason)]
        assert ("message", b"after") not in sink.events, "nothing is read after an error"


def test_a_close_without_a_code_and_valid_codes_are_accepted() -> None:
    assert read(client_frame(b"", 0x88)).events == [("close", (None, b""))]
    for code in (1000, 1001, 1011, 3000, 4999):
        assert read(_close(code, "é".encode())).events == [("close", (code, "é".encode()))]


def test_nothing_is_read_after_the_peers_close() -> None:
    sink = read(_close(1000) + client_frame(b"late") + b"\xff" * 100)
    assert sink.events == [("close", (1000, b""))]
    assert not sink.errors


def test_a_long_frame_is_read_into_its_own_buffer() -> None:
    """A frame too long for the staging buffer: its payload's reads go straight into
    its own bytearray (the buffers offered are views of it, sized to what is left)."""
    payload = os.urandom(200_000)
    wire = client_frame(payload)
    sink = Sink()
    reader = FrameReader(LIMIT, sink)
    reader.feed(wire[:1000])
    buffer = reader.get_buffer()
    assert len(buffer) == len(payload) - (1000 - 14)
    reader.feed(wire[1000:])
    assert sink.events == [("message", payload)]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=3000),
    st.lists(st.integers(1, 4000), min_size=1, max_size=4),
    st.sampled_from(
        [
            b"",
            client_frame(b"ok"),
            client_frame(b"z" * 70_000, 0x02),
            client_frame(b"p" * (3 * PART_BYTES))[:1000],  # inside a payload read in parts
        ]
    ),
    st.sampled_from([100_000, 4 * PART_BYTES]),
)
def test_no_input_makes_the_reader_raise(
    junk: bytes, steps: list[int], prefix: bytes, limit: int
) -> None:
    """Arbitrary bytes (after a valid prefix) give events and at most one error, with a
    close code of the protocol's, and nothing after it."""
    sink = read(prefix + junk, steps, limit=limit)
    assert len(sink.errors) <= 1
    for error in sink.errors:
        assert error.close_code in (1002, 1003, 1007, 1009)
    closes = [i for i, (kind, _) in enumerate(sink.events) if kind == "close"]
    assert not closes or closes == [len(sink.events) - 1]
    assert not (closes and sink.errors)


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=300))
def test_mask_in_place_is_the_rfc_xor(key: bytes, data: bytes) -> None:
    """aiohttp's compiled helper (private API, pinned in uv.lock) and the fallback both
    XOR with the key repeated from the payload's first byte."""
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    compiled = bytearray(data)
    ws_mask.mask_in_place(key, compiled)
    fallback = bytearray(data)
    ws_mask._mask_in_place_python(key, fallback)
    assert compiled == fallback == expected
    assert ws_mask.unchecked_mask is not ws_mask._mask_in_place_python, (
        "aiohttp's compiled mask is gone: the relay reads would run the Python XOR"
    )


def test_mask_in_place_refuses_a_key_that_is_not_4_bytes() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        ws_mask.mask_in_place(b"abc", bytearray(b"x"))


@pytest.mark.parametrize("steps", [None, [14, 200_000], [3, 70_000, 9], [1000]])
def test_long_messages_of_one_size_reuse_a_buffer_and_keep_their_contents(
    steps: list[int] | None,
) -> None:
    """Each long message read in place goes into the buffer of the one before it when
    their sizes match; what each hands over is its own payload, in order, also with a
    differently sized message, a fragmented one and control frames in between."""
    size = 3 * STAGE_BYTES
    payloads = [os.urandom(size) for _ in range(3)]
    odd = os.urandom(size + 1)
    wire = [client_frame(payloads[0], key=os.urandom(4)), client_frame(payloads[1])]
    wire += [client_frame(b"", 0x89), client_frame(odd), client_frame(payloads[2])]
    wire += [client_frame(odd[:size], 0x02), client_frame(odd[size:], 0x80)]
    wire += [client_frame(payloads[0], key=os.urandom(4))]
    sink = read(b"".join(wire), steps)
    assert not sink.errors
    expected = [payloads[0], payloads[1], b"", odd, payloads[2], odd, payloads[0]]
    assert [event for _, event in sink.events] == expected


def test_a_long_message_is_read_from_its_first_byte_in_place() -> None:
    """After a long message, the next read takes a header at most: the next payload
    is then read straight into its own buffer, none of it through the stage."""
    size = 3 * STAGE_BYTES
    sink = Sink()
    reader = FrameReader(LIMIT, sink)
    reader.feed(client_frame(os.urandom(size)))
    assert len(reader.get_buffer()) == 14
    reader.feed(client_frame(b"x" * size)[:14])
    assert len(reader.get_buffer()) == size


@pytest.mark.parametrize("steps", [None, [14, 1 << 22], [65_536], [333_333, 7]])
def test_a_payload_over_the_part_size_is_read_in_parts_as_it_arrives(
    steps: list[int] | None,
) -> None:
    """A header claiming a long frame allocates one part, not the whole claim; the
    parts come out joined, in order, with messages before and after intact."""
    size = 2 * PART_BYTES + 12_345
    payload = os.urandom(size)
    wire = client_frame(b"before") + client_frame(payload) + client_frame(b"after")
    sink = read(wire, steps, limit=8 * PART_BYTES)
    assert not sink.errors
    assert [event for _, event in sink.events] == [b"before", payload, b"after"]
    reader = FrameReader(8 * PART_BYTES, Sink())
    reader.feed(client_frame(b"x" * (8 * PART_BYTES))[:14])
    assert len(reader.get_buffer()) == PART_BYTES
