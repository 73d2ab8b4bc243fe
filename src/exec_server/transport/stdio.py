"""JSON-RPC over newline-delimited JSON on a pair of byte streams.

Used by the server (`--listen stdio`: our own stdin/stdout) and by the client (a
child exec-server's stdout/stdin). Blank lines are skipped. A line longer than the
message limit is discarded up to its newline and reported as a
:class:`~exec_server.transport.channel.MalformedFrame`, so the peer gets a clear
error and the connection survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections import deque
from typing import Protocol

from .channel import ChannelClosed, MalformedFrame
from .websocket import DEFAULT_MAX_MESSAGE_BYTES

READ_CHUNK_BYTES = 256 * 1024


class LineFramer:
    """Sans-IO splitter of a byte stream into newline-terminated messages."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | MalformedFrame]:
        out: list[bytes | MalformedFrame] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:], out)
                return out
            self._append(data[start:nl], out)
            self._finish_line(out)
            start = nl + 1

    def feed_eof(self) -> list[bytes | MalformedFrame]:
        out: list[bytes | MalformedFrame] = []
        if self._parts or self._discarding:
            self._finish_line(out)
        return out

    def _append(self, piece: bytes, out: list[bytes | MalformedFrame]) -> None:
        if not piece or self._discarding:
            return
        self._size += len(piece)
        if self._size > self._max:
            self._parts.clear()
            self._discarding = True
            return
        self._parts.append(piece)

    def _finish_line(self, out: list[bytes | MalformedFrame]) -> None:
        if self._discarding:
            out.append(
                MalformedFrame(f"message exceeds the limit of {self._max} bytes and was discarded")
            )
        else:
            line = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            if line.strip():
                out.append(line)
        self._parts.clear()
        self._size = 0
        self._discarding = False


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class _FileReader:
    """Reads a regular file (``serve --listen stdio < requests.jsonl``) off the loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self, n: int = -1) -> bytes:
        return await asyncio.to_thread(os.read, self._fd, n if n > 0 else READ_CHUNK_BYTES)


class _FileWriter:
    """Writes to a regular file (``serve --listen stdio > out``): never blocks for long."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    async def wait_closed(self) -> None:
        return None


class StdioChannel:
    """A message channel over an asyncio reader and a writer, one JSON per line."""

    transport_name = "stdio"
    parse_error_prefix = "failed to parse JSON-RPC message from exec-server stdio"

    def __init__(
        self,
        reader: _Reader,
        writer: _Writer,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = LineFramer(max_message_bytes)
        self._pending: deque[bytes | MalformedFrame] = deque()
        self._eof = False
        self._closed = False

    async def receive(self) -> bytes | MalformedFrame:
        while not self._pending:
            if self._eof or self._closed:
                raise ChannelClosed("stdio closed")
            try:
                data = await self._reader.read(READ_CHUNK_BYTES)
            except (ConnectionError, OSError) as exc:
                raise ChannelClosed(f"stdio read failed: {exc}") from None
            if not data:
                self._eof = True
                self._pending.extend(self._framer.feed_eof())
            else:
                self._pending.extend(self._framer.feed(data))
        return self._pending.popleft()

    async def send(self, message: bytes) -> None:
        if self._closed or self._writer.is_closing():
            raise ChannelClosed("stdio closed")
        try:
            self._writer.write(message + b"\n")
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"stdio write failed: {exc}") from None

    async def close(self, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self._writer.close()
            await self._writer.wait_closed()


async def open_process_stdio(*, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> StdioChannel:
    """Wrap this process's stdin/stdout (which must be pipes, sockets or ttys)."""
    loop = asyncio.get_running_loop()
    # Duplicate the descriptors so closing the transports never closes fds 0/1
    # under other code (logging, the interpreter's own shutdown).
    in_fd = os.dup(sys.stdin.fileno())
    out_fd = os.dup(sys.stdout.fileno())
    reader: _Reader
    writer: _Writer
    if stat.S_ISREG(os.fstat(in_fd).st_mode):
        reader = _FileReader(in_fd)
    else:
        stream = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(in_fd, "rb", buffering=0)
        )
        reader = stream
    if stat.S_ISREG(os.fstat(out_fd).st_mode):
        writer = _FileWriter(out_fd)
    else:
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
            os.fdopen(out_fd, "wb", buffering=0),
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return StdioChannel(reader, writer, max_message_bytes=max_message_bytes)


#: After asking a stdio child to stop, how long before it is killed.
CHILD_STOP_GRACE_S = 2.0


class ChildStdioChannel(StdioChannel):
    """A stdio channel to a child exec-server that it owns.

    The child runs in its own process group; closing the channel closes its stdin,
    signals the group with SIGTERM, and kills it after :data:`CHILD_STOP_GRACE_S`.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        assert process.stdout is not None and process.stdin is not None
        super().__init__(process.stdout, process.stdin, max_message_bytes=max_message_bytes)
        self.process = process

    async def close(self, reason: str | None = None) -> None:
        await super().close(reason)
        proc = self.process
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(CHILD_STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def spawn_stdio_server(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ChildStdioChannel:
    """Start ``argv`` (an exec-server speaking ``--listen stdio``) as a child."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        env=env,
        cwd=cwd,
        start_new_session=True,
        limit=READ_CHUNK_BYTES,
    )
    return ChildStdioChannel(process, max_message_bytes=max_message_bytes)
