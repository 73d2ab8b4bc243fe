"""Writing the rendezvous' outbound websocket frames straight to the TCP transport.

Server frames are not masked (RFC 6455), so a frame is its header followed by the
payload as it is. A :class:`FrameWriter` writes them without picows' copy of the payload
into its own buffer:

* a large frame (``WRITEV_MIN_BYTES`` and up) goes out at once with ``writev`` of the
  header and the payload where they are (a view of the socket's read buffer will do);
* smaller frames are gathered (copied, header and payload, into one buffer) and written
  together, with one system call, once the current event-loop callbacks are done (a
  burst of frames read from one socket leaves in one system call), or as soon as
  ``FLUSH_BYTES`` are gathered.

Whatever the kernel does not take goes to the transport's buffer (copied), as
``transport.write`` would have it, and the transport's flow control then pauses the
writer (the socket's ``pause_writing``). The owner calls :meth:`FrameWriter.flush` before
writing anything else to the transport (a ping, a close), so frames keep their order.
"""

from __future__ import annotations

import asyncio
import os
import struct

__all__ = ["BINARY_OPCODE", "FLUSH_BYTES", "TEXT_OPCODE", "WRITEV_MIN_BYTES", "FrameWriter"]

WRITEV_MIN_BYTES = 32 * 1024
"""Frames from this size are written at once, header and payload in one ``writev``.
Smaller ones are gathered (copied): Codex writes 8 KiB output chunks, and one system call
per frame cost more than the copy (``benchmarks/rendezvous_cpu_bench.py --chunks codex``)."""

FLUSH_BYTES = 256 * 1024
"""Gathered small frames are written once they reach this many bytes."""

_GATHER_CAPACITY = FLUSH_BYTES + 4 + WRITEV_MIN_BYTES
"""Room for gathered frames: under ``FLUSH_BYTES`` plus one more frame."""
assert WRITEV_MIN_BYTES <= 0x10000  # a gathered frame's length fits a 16-bit header

BINARY_OPCODE = 0x82
"""First header byte of a final binary frame."""
TEXT_OPCODE = 0x81
"""First header byte of a final text frame."""

Piece = bytes | memoryview


_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack
_HEADER_16_INTO = struct.Struct("!BBH").pack_into


def frame_header(first: int, size: int) -> bytes:
    """The header of an unmasked frame of ``size`` bytes (RFC 6455 5.2)."""
    if size < 126:
        return bytes((first, size))
    if size < 0x10000:
        return _HEADER_16(first, 126, size)
    return _HEADER_64(first, 127, size)


class FrameWriter:
    """Frames to one TCP transport (see the module docstring)."""

    def __init__(self, transport: asyncio.WriteTransport, fd: int) -> None:
        self._transport = transport
        self._fd = fd
        """The socket's descriptor, or -1 to always go through the transport."""
        self._loop = asyncio.get_running_loop()
        self._gather = bytearray(_GATHER_CAPACITY)
        self._gathered = memoryview(self._gather)
        self._bytes = 0
        """Bytes of gathered frames at the start of ``_gather``."""
        self._scheduled = False

    @property
    def gathered_bytes(self) -> int:
        """Bytes of small frames waiting to be written."""
        return self._bytes

    def write(self, first: int, payload: bytes | memoryview) -> None:
        """Write one frame (``first``: :data:`BINARY_OPCODE` or :data:`TEXT_OPCODE`);
        ``payload`` is not used after the call."""
        size = len(payload)
        if size >= WRITEV_MIN_BYTES:
            # A routed frame's path: one writev, nothing more when the kernel takes it all.
            big = size >= 0x10000
            header = _HEADER_64(first, 127, size) if big else _HEADER_16(first, 126, size)
            if self._bytes:
                self.flush()
            transport = self._transport
            if self._fd < 0 or transport.get_write_buffer_size() or transport.is_closing():
                self._write((header, payload))
                return
            try:
                sent = os.writev(self._fd, (header, payload))
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport's own write meets the error and reports it
            if sent != len(header) + size:
                self._write_rest((header, payload), sent)
            return
        gather = self._gather
        start = self._bytes
        if size < 126:
            gather[start] = first
            gather[start + 1] = size
            start += 2
        else:
            _HEADER_16_INTO(gather, start, first, 126, size)
            start += 4
        end = self._bytes = start + size
        gather[start:end] = payload
        if end >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def write_control(self, first: int, payload: bytes) -> None:
        """Write a control frame (``first``: its first header byte; ``payload`` up to 125
        bytes) after the frames gathered before it."""
        self.flush()
        self._write((bytes((first, len(payload))), payload))

    def flush(self) -> None:
        """Write the gathered frames now."""
        size = self._bytes
        if size:
            self._bytes = 0
            self._write((self._gathered[:size],))

    def discard(self) -> None:
        """The connection is gone: forget what was gathered."""
        self._bytes = 0

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def _write(self, pieces: tuple[Piece, ...]) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        sent = 0
        if self._fd >= 0 and not transport.get_write_buffer_size():
            try:
                sent = os.writev(self._fd, pieces)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport's own write meets the error and reports it
        self._write_rest(pieces, sent)

    def _write_rest(self, pieces: tuple[Piece, ...], sent: int) -> None:
        """Hand the transport what the kernel did not take of ``pieces`` (``sent``
        bytes were written)."""
        transport = self._transport
        for piece in pieces:
            size = len(piece)
            if sent >= size:
                sent -= size
                continue
            rest = memoryview(piece)[sent:] if sent else piece
            sent = 0
            # A view (of a read buffer, of the gathered frames) is copied; bytes stay
            # valid while referenced.
            transport.write(rest if type(piece) is bytes else bytes(rest))
