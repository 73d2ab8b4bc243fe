"""The rendezvous' frame writer on a real socket pair: order, framing, and that a
payload passed as a view is never read after the call (what the kernel does not take
at once is copied)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from exec_server.rendezvous.frame_writer import (
    BINARY_OPCODE,
    FLUSH_BYTES,
    TEXT_OPCODE,
    WRITEV_MIN_BYTES,
    FrameWriter,
    frame_header,
)

WAIT_S = 10.0


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(first byte, payload)`` of each unmasked frame in ``data``."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        first, length = data[pos], data[pos + 1]
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        frames.append((first, data[pos : pos + length]))
        pos += length
    return frames


class Pair:
    def __init__(self, transport: asyncio.Transport, reader: socket.socket) -> None:
        self.transport = transport
        self.reader = reader
        sock = transport.get_extra_info("socket")
        self.writer = FrameWriter(transport, sock.fileno())

    async def read_exactly(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        chunks = bytearray()
        async with asyncio.timeout(WAIT_S):
            while len(chunks) < size:
                chunks += await loop.sock_recv(self.reader, size - len(chunks))
        return bytes(chunks)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    assert isinstance(transport, asyncio.Transport)
    yield Pair(transport, theirs)
    transport.close()
    theirs.close()


def test_headers_follow_rfc_6455_lengths() -> None:
    assert frame_header(BINARY_OPCODE, 125) == b"\x82\x7d"
    assert frame_header(TEXT_OPCODE, 126) == b"\x81\x7e\x00\x7e"
    assert frame_header(BINARY_OPCODE, 0x10000) == b"\x82\x7f" + (0x10000).to_bytes(8, "big")


async def test_frames_keep_their_order_whatever_their_size(pair: Pair) -> None:
    small = [bytes([i]) * (100 + i) for i in range(5)]
    large = b"L" * (WRITEV_MIN_BYTES + 1)
    pair.writer.write(BINARY_OPCODE, small[0])
    pair.writer.write(TEXT_OPCODE, small[1])
    pair.writer.write(BINARY_OPCODE, large)  # flushes what was gathered first
    for payload in small[2:]:
        pair.writer.write(BINARY_OPCODE, payload)
    await asyncio.sleep(0)  # the gathered frames leave after this callback
    expected = [
        (BINARY_OPCODE, small[0]),
        (TEXT_OPCODE, small[1]),
        (BINARY_OPCODE, large),
        *((BINARY_OPCODE, p) for p in small[2:]),
    ]
    total = sum(len(frame_header(f, len(p))) + len(p) for f, p in expected)
    assert parse_frames(await pair.read_exactly(total)) == expected


async def test_a_view_is_not_read_after_the_call_even_when_the_kernel_is_full(
    pair: Pair,
) -> None:
    """A large view is more than the small socket buffers take: the rest is copied, so
    overwriting the source after the call changes nothing on the wire."""
    sources = [bytearray(b"a" * (512 * 1024)), bytearray(b"b" * 3000)]
    for source in sources:
        pair.writer.write(BINARY_OPCODE, memoryview(source))
        source[:] = b"x" * len(source)
    pair.writer.flush()
    expected = [(BINARY_OPCODE, b"a" * (512 * 1024)), (BINARY_OPCODE, b"b" * 3000)]
    total = sum(len(frame_header(f, len(p))) + len(p) for f, p in expected)
    assert parse_frames(await pair.read_exactly(total)) == expected


async def test_gathered_frames_are_written_once_they_reach_the_flush_size(pair: Pair) -> None:
    payload = b"s" * (WRITEV_MIN_BYTES - 1)
    count = FLUSH_BYTES // len(payload) + 1
    for _ in range(count):
        pair.writer.write(BINARY_OPCODE, payload)
    # The frame that reached the flush size wrote the batch without a loop iteration.
    assert pair.writer.gathered_bytes < 2 * len(payload)  # at most the last one
    await asyncio.sleep(0)
    total = count * (len(frame_header(BINARY_OPCODE, len(payload))) + len(payload))
    assert parse_frames(await pair.read_exactly(total)) == [(BINARY_OPCODE, payload)] * count


async def test_gathered_frames_survive_partial_writes_and_the_buffer_reused(pair: Pair) -> None:
    """Small frames are gathered into one buffer that is reused after every write: what
    the kernel does not take of it is copied, so batches written while the socket is
    full arrive whole and in order."""
    expected: list[tuple[int, bytes]] = []
    for batch in range(6):
        for index in range(40):
            size = (batch * 997 + index * 131) % WRITEV_MIN_BYTES
            payload = bytes([(batch * 40 + index) % 251]) * size
            source = bytearray(payload)
            pair.writer.write(BINARY_OPCODE, memoryview(source))
            source[:] = b"x" * size
            expected.append((BINARY_OPCODE, payload))
        pair.writer.flush()
    total = sum(len(frame_header(f, len(p))) + len(p) for f, p in expected)
    assert total > 4 * FLUSH_BYTES // 2, "more than the socket buffers take at once"
    assert parse_frames(await pair.read_exactly(total)) == expected
