"""Codex 0.171's file streaming: ``fs/open``, ``fs/readBlock``, ``fs/writeBlock``, ``fs/close``.

A harness streams a file of any size in blocks instead of one whole-file message:
it opens a handle (``mode: "read"``, or ``"replace"`` to write a new content),
reads or writes blocks of at most 1 MiB at explicit offsets, and closes it.
Handles belong to one connection (a :class:`FileHandleTable` per connection
processor); at most :data:`MAX_OPEN_HANDLES` are open at once, and every handle
is closed when the connection ends. Ids are the client's strings (at most 32 bytes).

Wire behaviour, as the 0.171 binary answered (``tests/interop/test_codex0171.py``):

* ``replace`` truncates the file in place at open (it is not written aside and
  renamed), creating it if needed; writes land at their offsets (a gap reads as
  zeros); a read on a replace handle, or a write on a read handle, fails with
  EBADF (-32603 ``Bad file descriptor (os error 9)``).
* ``readBlock`` answers ``eof: true`` exactly when fewer than ``len`` bytes were
  left, so a block that ends at the last byte is not yet ``eof``.
* an unknown handle is -32004 ``unknown file handle `x``` for reads and writes;
  closing one is a no-op (``{}``).
* opening a directory or another non-regular file to read is -32600 ``path `X` is
  not a file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from typing import TypeVar

from ..protocol.errors import InvalidRequest, NotFound
from ..protocol.messages import (
    Empty,
    FsCloseParams,
    FsOpenParams,
    FsOpenResult,
    FsReadBlockParams,
    FsReadBlockResult,
    FsWriteBlockParams,
)
from ..protocol.path_uri import parse_wire_path
from .fs_handler import FileSystemHandler, map_os_error
from .fs_ops import not_a_file
from .sandbox import parse_sandbox

T = TypeVar("T")

#: Handles one connection may hold open at once (Codex 0.171: 128).
MAX_OPEN_HANDLES = 128
#: Longest handle id, in UTF-8 bytes (Codex 0.171: 32).
MAX_HANDLE_ID_BYTES = 32
#: Largest block one ``readBlock``/``writeBlock`` moves (Codex 0.171: 1 MiB).
MAX_BLOCK_BYTES = 1024 * 1024


class _Handle:
    __slots__ = ("fd", "path", "writable")

    def __init__(self, fd: int, path: str, writable: bool) -> None:
        self.fd = fd
        self.path = path
        self.writable = writable


class FileHandleTable:
    """The open file handles of one connection."""

    def __init__(self, fs: FileSystemHandler, *, max_handles: int = MAX_OPEN_HANDLES) -> None:
        self._fs = fs
        self._max_handles = max_handles
        self._handles: dict[str, _Handle] = {}

    def __len__(self) -> int:
        return len(self._handles)

    async def open(self, p: FsOpenParams) -> FsOpenResult:
        if len(p.handle_id.encode("utf-8", "surrogatepass")) > MAX_HANDLE_ID_BYTES:
            raise InvalidRequest(f"file handle ID must not exceed {MAX_HANDLE_ID_BYTES} bytes")
        path = parse_wire_path(p.path).native
        spec = parse_sandbox(p.sandbox)
        if p.handle_id in self._handles:
            raise InvalidRequest(f"file handle `{p.handle_id}` already exists")
        if len(self._handles) >= self._max_handles:
            raise InvalidRequest(
                f"at most {self._max_handles} file handles may be open per connection"
            )
        writable = p.mode == "replace"

        def open_file() -> int:
            sandbox = self._fs.resolve_sandbox(spec)
            if writable:
                sandbox.check_write(path)
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            sandbox.check_read(path)
            # O_NONBLOCK: opening a FIFO must not hang; it is refused just below.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise not_a_file(path)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd

        fd = await _run(open_file)
        if p.handle_id in self._handles or len(self._handles) >= self._max_handles:
            os.close(fd)  # only reachable if opens ever ran concurrently
            raise InvalidRequest(f"file handle `{p.handle_id}` already exists")
        self._handles[p.handle_id] = _Handle(fd, path, writable)
        return FsOpenResult(handle_id=p.handle_id)

    async def read_block(self, p: FsReadBlockParams) -> FsReadBlockResult:
        if not 1 <= p.len <= MAX_BLOCK_BYTES:
            raise InvalidRequest(f"file read block length must be between 1 and {MAX_BLOCK_BYTES}")
        handle = self._get(p.handle_id)
        data = await _run(lambda: _pread_full(handle.fd, p.len, p.offset))
        return FsReadBlockResult(chunk=data, eof=len(data) < p.len)

    async def write_block(self, p: FsWriteBlockParams) -> Empty:
        if not 1 <= len(p.chunk) <= MAX_BLOCK_BYTES:
            raise InvalidRequest(f"file write block length must be between 1 and {MAX_BLOCK_BYTES}")
        handle = self._get(p.handle_id)
        await _run(lambda: _pwrite_all(handle.fd, p.chunk, p.offset))
        return Empty()

    async def close(self, p: FsCloseParams) -> Empty:
        handle = self._handles.pop(p.handle_id, None)
        if handle is not None:
            await _run(lambda: os.close(handle.fd))
        return Empty()

    async def close_all(self) -> None:
        """Close every handle (the connection ended)."""
        handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            with contextlib.suppress(OSError):
                os.close(handle.fd)

    def _get(self, handle_id: str) -> _Handle:
        handle = self._handles.get(handle_id)
        if handle is None:
            raise NotFound(f"unknown file handle `{handle_id}`")
        return handle


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset``; short only at the end of the file."""
    first = os.pread(fd, length, offset)
    if len(first) == length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        piece = os.pread(fd, length - got, offset + got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


async def _run(work: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(work)
    except OSError as err:
        raise map_os_error(err) from err
