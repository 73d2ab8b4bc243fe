"""The ``fs/*`` methods: read, write, create, stat, list, remove, copy and canonicalize.

This module owns the filesystem half of the exec-server API and the one mapping
from OS errors to JSON-RPC errors (:func:`map_os_error`). The wire reference is the
Codex 0.133 binary; what it answered, request by request, is recorded in
``tests/environment/test_fs_handler.py`` and mirrored here:

* OS errors carry Rust's ``io::Error`` text with musl's strerror wording, e.g.
  ``"No such file or directory (os error 2)"``; ENOENT is -32004, EACCES/EPERM/
  EINVAL are -32600, everything else is -32603.
* Invalid ``dataBase64`` is -32600 ``"fs/writeFile requires valid base64
  dataBase64: <base64 crate error>"``; the crate's wording is reproduced.
* Paths are lexically normalised before use (see :mod:`.sandbox`).

Both eras are served: a native path gets 0.133's answers, a ``file://`` URI
(Codex 0.171's form) gets 0.171's texts, and paths in a result come back in the
request's form (:mod:`exec_server.protocol.path_uri`).

Deliberate differences from 0.133 and 0.171 (all supersets or safety fixes):

* both path forms are accepted (0.133 rejects URIs, 0.171 native paths).
* ``readFile`` honours ``maxBytes`` (0.133 and 0.171 ignore it) and a
  configured ceiling, :attr:`FsLimits.max_read_bytes`; it refuses FIFOs instead of
  blocking a worker thread forever.
* ``readDirectory`` entries are sorted by ``fileName`` (0.133 returns readdir order).
* ``copy`` of a file onto itself is a no-op (0.133's ``std::fs::copy`` truncates it
  to zero bytes).
* Sandbox denials are decided by path checks, not by a mount namespace; see
  :mod:`.sandbox` for where the outcome differs.

Blocking work runs in worker threads (``asyncio.to_thread``) so a large file never
stalls the event loop. Reads allocate the file's bytes once; msgspec base64-encodes
that ``bytes`` object straight into the response.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from msgspec import UnsetType

from ..protocol.errors import InternalError, InvalidParams, InvalidRequest, NotFound, RpcError
from ..protocol.messages import (
    Empty,
    FsCanonicalizeParams,
    FsCanonicalizeResult,
    FsChecksumParams,
    FsChecksumResult,
    FsCopyParams,
    FsCreateDirectoryParams,
    FsDirectoryEntry,
    FsGetMetadataParams,
    FsMetadata,
    FsReadDirectoryParams,
    FsReadDirectoryResult,
    FsReadFileParams,
    FsReadFileResult,
    FsRemoveParams,
    FsWriteFileParams,
)
from ..protocol.path_uri import parse_wire_path
from .rust_compat import decode_base64, os_error_text
from .sandbox import (
    FsSandbox,
    SandboxDenied,
    SandboxSpec,
    parse_absolute_path,
    parse_sandbox,
    resolve_location,
    resolve_sandbox,
)

T = TypeVar("T")

#: Read size when hashing a file for ``fs/checksum``.
CHECKSUM_READ_BYTES = 1024 * 1024

KIB = 1024
MIB = 1024 * KIB

#: Default ceiling for ``fs/readFile``. Base64 grows data by 4/3, so 384 MiB fills a
#: 512 MiB message exactly; 1 KiB less leaves room for the JSON-RPC envelope.
DEFAULT_MAX_READ_BYTES = 384 * MIB - 1 * KIB

#: Read size once the file's announced size is consumed (or it announces none,
#: like /proc files): bounds the transient buffer of an EOF probe.
READ_CHUNK_BYTES = 1 * MIB


@dataclass(frozen=True, slots=True)
class FsLimits:
    """Limits of the fs methods.

    ``max_read_bytes``: the largest file ``fs/readFile`` returns; larger files get
    -32600 "file is too large to read: limit is N bytes". A request's ``maxBytes``
    can only lower it.
    """

    max_read_bytes: int = DEFAULT_MAX_READ_BYTES

    def __post_init__(self) -> None:
        if self.max_read_bytes < 0:
            raise ValueError("max_read_bytes must be >= 0")


DEFAULT_FS_LIMITS = FsLimits()


# --- error mapping -------------------------------------------------------------------

#: Rust's io::ErrorKind::PermissionDenied and InvalidInput, answered with -32600.
_INVALID_REQUEST_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EINVAL})


def map_os_error(err: OSError) -> RpcError:
    """The JSON-RPC error for a failed filesystem operation (Codex's ``map_fs_error``).

    The one place errno becomes a wire error: NotFound (-32004) for ENOENT,
    InvalidRequest (-32600) for EACCES/EPERM/EINVAL, InternalError (-32603) for
    the rest. Sandbox denials arrive here as :class:`SandboxDenied` with the errno
    Codex's sandbox produces.
    """
    code = err.errno
    if code is None:
        # Raised by Python itself (e.g. shutil's "is a named pipe"): no OS text.
        return InternalError(str(err))
    message = os_error_text(code)
    if code == errno.ENOENT:
        return NotFound(message)
    if code in _INVALID_REQUEST_ERRNOS:
        return InvalidRequest(message)
    return InternalError(message)


def file_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"file is too large to read: limit is {limit} bytes")


def not_a_file(path: str) -> InvalidRequest:
    """Codex 0.171's answer to reading a directory or another non-regular file."""
    return InvalidRequest(f"path `{path}` is not a file")


# --- helpers -------------------------------------------------------------------------


def _lossy_name(name: str) -> str:
    """A file name as Rust's ``to_string_lossy`` shows it (invalid UTF-8 -> U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


def _unix_ms(ns: int) -> int:
    # Rust's duration_since(UNIX_EPOCH) fails before 1970; Codex reports 0 then.
    return ns // 1_000_000 if ns >= 0 else 0


def _read_limited(fd: int, size_hint: int, limit: int) -> bytes:
    """Read ``fd`` to EOF, failing once more than ``limit`` bytes arrive.

    The first read asks for the announced size, so a regular file lands in one
    ``bytes`` object with no copy; only files that lie about their size (growing,
    /proc) are assembled from chunks.
    """
    chunks: list[bytes] = []
    total = 0
    want = size_hint if size_hint > 0 else READ_CHUNK_BYTES
    while True:
        chunk = os.read(fd, min(want, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise file_too_large(limit)
        want = READ_CHUNK_BYTES
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _missing_chain(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    chain: list[str] = []
    current = path
    while current != "/" and not os.path.lexists(current):
        chain.append(current)
        current = posixpath.dirname(current)
    chain.reverse()
    return chain


def _is_same_or_descendant(source: str, destination: str) -> bool:
    source = os.path.realpath(source)
    destination = os.path.realpath(destination)
    return source == "/" or destination == source or destination.startswith(source + "/")


# --- handler -------------------------------------------------------------------------


class FileSystemHandler:
    """Implements the ``fs/*`` methods for one server (shared by all sessions).

    Every method validates its params on the event loop (path syntax, sandbox
    shape), then does the filesystem work in a worker thread. Errors are raised as
    :class:`~exec_server.protocol.errors.RpcError` subclasses.
    """

    def __init__(
        self,
        limits: FsLimits = DEFAULT_FS_LIMITS,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.limits = limits
        # Source of TMPDIR for the sandbox's `tmpdir` entries (default: os.environ).
        self._environ = environ

    async def read_file(self, p: FsReadFileParams) -> FsReadFileResult:
        """Whole-file (or, our extension, ranged) read.

        A ``file://`` request for a directory or another non-regular file gets
        0.171's -32600 ``path `X` is not a file``; a native-path one gets 0.133's
        answers (EISDIR -32603; a FIFO is refused instead of blocking).
        """
        wire = parse_wire_path(p.path)
        path = wire.native
        regular_only = wire.is_uri
        spec = parse_sandbox(p.sandbox)
        limit = self.limits.max_read_bytes
        if p.max_bytes is not None:
            if p.max_bytes < 0:
                raise InvalidParams(f"invalid value: integer `{p.max_bytes}`, expected usize")
            limit = min(limit, p.max_bytes)
        if not isinstance(p.offset, UnsetType) or not isinstance(p.length, UnsetType):
            offset = 0 if isinstance(p.offset, UnsetType) else p.offset
            length = limit if isinstance(p.length, UnsetType) else p.length
            if offset < 0 or length < 0:
                raise InvalidParams("fs/readFile offset and length must be >= 0")
            if length > limit:
                raise file_too_large(limit)
            data = await self.run_blocking(
                lambda: self._read_range(path, spec, offset, length, regular_only)
            )
            return FsReadFileResult(data_base64=data)
        data = await self.run_blocking(lambda: self._read_file(path, spec, limit, regular_only))
        return FsReadFileResult(data_base64=data)

    async def checksum(self, p: FsChecksumParams) -> FsChecksumResult:
        """Our extension: the file's SHA-256, computed here in 1 MiB reads."""
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        return await self.run_blocking(lambda: self._checksum(path, spec))

    async def write_file(self, p: FsWriteFileParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        offset = None if isinstance(p.offset, UnsetType) else p.offset
        if offset is not None and offset < 0:
            raise InvalidParams("fs/writeFile offset must be >= 0")
        await self.run_blocking(lambda: self._write_file(path, p.data_base64, spec, offset))
        return Empty()

    async def create_directory(self, p: FsCreateDirectoryParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(lambda: self._create_directory(path, p.recursive, spec))
        return Empty()

    async def get_metadata(self, p: FsGetMetadataParams) -> FsMetadata:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        if spec is None:
            # One or two stat calls: cheaper inline than the ~60 us thread hop, and the
            # Codex harness issues dozens of these on its startup path.
            try:
                return self._get_metadata(path, spec)
            except OSError as err:
                raise map_os_error(err) from err
        return await self.run_blocking(lambda: self._get_metadata(path, spec))

    async def read_directory(self, p: FsReadDirectoryParams) -> FsReadDirectoryResult:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        return await self.run_blocking(lambda: self._read_directory(path, spec))

    async def canonicalize(self, p: FsCanonicalizeParams) -> FsCanonicalizeResult:
        """Codex 0.171: the path with every symlink resolved (it must exist: -32004),
        in the request's form (a ``file://`` URI for a URI)."""
        wire = parse_wire_path(p.path)
        spec = parse_sandbox(p.sandbox)
        resolved = await self.run_blocking(lambda: self._canonicalize(wire.native, spec))
        return FsCanonicalizeResult(path=wire.render(resolved))

    async def remove(self, p: FsRemoveParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(lambda: self._remove(path, p.recursive, p.force, spec))
        return Empty()

    async def copy(self, p: FsCopyParams) -> Empty:
        source = parse_absolute_path(p.source_path)
        destination = parse_absolute_path(p.destination_path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(lambda: self._copy(source, destination, p.recursive, spec))
        return Empty()

    # -- plumbing ----------------------------------------------------------------------

    async def run_blocking(self, work: Callable[[], T]) -> T:
        """Run blocking fs work in a worker thread; OS errors become wire errors."""
        try:
            return await asyncio.to_thread(work)
        except OSError as err:
            raise map_os_error(err) from err

    def resolve_sandbox(self, spec: SandboxSpec | None) -> FsSandbox | None:
        """Bind a parsed ``sandbox`` to real paths (blocking: call from a worker thread)."""
        return resolve_sandbox(spec, environ=self._environ)

    _sandbox = resolve_sandbox

    # -- blocking implementations (worker threads) -------------------------------------

    def _read_file(
        self, path: str, spec: SandboxSpec | None, limit: int, regular_only: bool = False
    ) -> bytes:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            sandbox.check_read(path)
        # O_NONBLOCK so opening a FIFO cannot hang; cleared again for the read.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if regular_only and not stat.S_ISREG(info.st_mode):
                raise not_a_file(path)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if stat.S_ISFIFO(info.st_mode):
                raise InvalidRequest("fs/readFile cannot read from a FIFO")
            os.set_blocking(fd, True)
            if info.st_size > limit:
                raise file_too_large(limit)
            return _read_limited(fd, info.st_size, limit)
        finally:
            os.close(fd)

    def _write_file(
        self, path: str, data_base64: str, spec: SandboxSpec | None, offset: int | None = None
    ) -> None:
        data = decode_base64(data_base64)
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            sandbox.check_write(path)
        # In place (not write-and-rename) like Rust's fs::write: a hard link keeps
        # sharing the inode, and the file keeps its mode and owner.
        if offset is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
        else:
            flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, 0o666)
        try:
            os.set_blocking(fd, True)
            if offset is not None:
                os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        finally:
            os.close(fd)

    def _open_regular(self, path: str, spec: SandboxSpec | None, regular_only: bool = False) -> int:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            sandbox.check_read(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        info = os.fstat(fd)
        if regular_only and not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise not_a_file(path)
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if stat.S_ISFIFO(info.st_mode):
            os.close(fd)
            raise InvalidRequest("fs/readFile cannot read from a FIFO")
        os.set_blocking(fd, True)
        return fd

    def _read_range(
        self,
        path: str,
        spec: SandboxSpec | None,
        offset: int,
        length: int,
        regular_only: bool = False,
    ) -> bytes:
        fd = self._open_regular(path, spec, regular_only)
        try:
            parts: list[bytes] = []
            got = 0
            while got < length:
                piece = os.pread(fd, length - got, offset + got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def _checksum(self, path: str, spec: SandboxSpec | None) -> FsChecksumResult:
        fd = self._open_regular(path, spec)
        try:
            digest = hashlib.sha256()
            size = 0
            while chunk := os.read(fd, CHECKSUM_READ_BYTES):
                digest.update(chunk)
                size += len(chunk)
            return FsChecksumResult(algorithm="sha256", digest=digest.hexdigest(), size=size)
        finally:
            os.close(fd)

    def _canonicalize(self, path: str, spec: SandboxSpec | None) -> str:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            sandbox.check_visible(path)
        return os.path.realpath(path, strict=True)

    def _create_directory(self, path: str, recursive: bool, spec: SandboxSpec | None) -> None:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            missing = _missing_chain(path) if recursive else [path]
            for created in missing:
                sandbox.check_write(created)
            if not missing:
                sandbox.check_visible(path)
        if recursive:
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)

    def _get_metadata(self, path: str, spec: SandboxSpec | None) -> FsMetadata:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            sandbox.check_visible(path)
        info = os.stat(path)
        link_info = os.lstat(path)
        # Python on Linux has no st_birthtime; Codex's musl build reports 0 there too.
        birth_ns = getattr(info, "st_birthtime_ns", None)
        if birth_ns is None:
            birth = getattr(info, "st_birthtime", None)
            birth_ns = None if birth is None else int(birth * 1e9)
        return FsMetadata(
            is_directory=stat.S_ISDIR(info.st_mode),
            is_file=stat.S_ISREG(info.st_mode),
            is_symlink=stat.S_ISLNK(link_info.st_mode),
            created_at_ms=0 if birth_ns is None else _unix_ms(birth_ns),
            modified_at_ms=_unix_ms(info.st_mtime_ns),
            size=info.st_size,
        )

    def _read_directory(self, path: str, spec: SandboxSpec | None) -> FsReadDirectoryResult:
        sandbox = self._sandbox(spec)
        location = path if sandbox is None else sandbox.check_list(path)
        entries: list[FsDirectoryEntry] = []
        with os.scandir(path) as listing:
            for entry in listing:
                try:
                    info = entry.stat()
                except OSError:
                    # Broken or looping symlinks and vanished entries are omitted.
                    continue
                if sandbox is not None and not (
                    # Both the entry itself and what it points to must be visible.
                    sandbox.is_visible(posixpath.join(location, entry.name))
                    and sandbox.is_visible(os.path.realpath(entry.path))
                ):
                    continue
                entries.append(
                    FsDirectoryEntry(
                        file_name=_lossy_name(entry.name),
                        is_directory=stat.S_ISDIR(info.st_mode),
                        is_file=stat.S_ISREG(info.st_mode),
                    )
                )
        entries.sort(key=lambda item: item.file_name)
        return FsReadDirectoryResult(entries=entries)

    def _remove(self, path: str, recursive: bool, force: bool, spec: SandboxSpec | None) -> None:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            try:
                sandbox.check_remove(path, recursive=recursive)
            except SandboxDenied as denied:
                # A path hidden from the sandbox, or not there at all, is "missing"
                # (which `force` forgives), not "read-only".
                if sandbox.is_visible(resolve_location(path, follow_final=False)):
                    try:
                        os.lstat(path)
                    except FileNotFoundError:
                        pass
                    else:
                        raise
                if force:
                    return
                raise SandboxDenied(errno.ENOENT, denied.strerror or path) from None
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if force:
                return
            raise
        if not stat.S_ISDIR(info.st_mode):
            # Files and symlinks (even to directories): the entry itself goes.
            os.unlink(path)
        elif recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)

    def _copy(
        self, source: str, destination: str, recursive: bool, spec: SandboxSpec | None
    ) -> None:
        sandbox = self._sandbox(spec)
        if sandbox is not None:
            # The source's own entry: a symlink is copied, not followed.
            sandbox.check_read(source, follow_final=False)
        info = os.lstat(source)
        if stat.S_ISDIR(info.st_mode):
            if not recursive:
                raise InvalidRequest(
                    "fs/copy requires recursive: true when sourcePath is a directory"
                )
            if _is_same_or_descendant(source, destination):
                raise InvalidRequest(
                    "fs/copy cannot copy a directory to itself or one of its descendants"
                )
            self._copy_tree(source, destination, sandbox)
        elif stat.S_ISLNK(info.st_mode):
            if sandbox is not None:
                sandbox.check_write(destination, follow_final=False)
            os.symlink(os.readlink(source), destination)
        elif stat.S_ISREG(info.st_mode):
            if sandbox is not None:
                sandbox.check_write(destination)
            _copy_file(source, destination)
        else:
            raise InvalidRequest("fs/copy only supports regular files, directories, and symlinks")

    def _copy_tree(self, source: str, destination: str, sandbox: FsSandbox | None) -> None:
        # Iterative, so deep trees cannot hit the recursion limit. Like Codex:
        # directories are merged into existing ones, files overwrite, symlinks are
        # recreated (an existing one is an error), other file types are skipped.
        pending = [(source, destination)]
        while pending:
            src_dir, dst_dir = pending.pop()
            if sandbox is not None:
                sandbox.check_write(dst_dir)
            os.makedirs(dst_dir, exist_ok=True)
            with os.scandir(src_dir) as listing:
                for entry in listing:
                    target = posixpath.join(dst_dir, entry.name)
                    if sandbox is not None:
                        location = resolve_location(entry.path, follow_final=False)
                        if not sandbox.can_read(location):
                            # Hidden from the sandbox, so not part of the copy.
                            continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, target))
                    elif entry.is_file(follow_symlinks=False):
                        if sandbox is not None:
                            sandbox.check_write(target)
                        _copy_file(entry.path, target)
                    elif entry.is_symlink():
                        if sandbox is not None:
                            sandbox.check_write(target, follow_final=False)
                        os.symlink(os.readlink(entry.path), target)


def _copy_file(source: str, destination: str) -> None:
    """Copy contents and permission bits, overwriting ``destination`` in place."""
    try:
        if os.path.samefile(source, destination):
            # std::fs::copy would truncate the file to nothing; keep it instead.
            return
    except FileNotFoundError:
        pass
    shutil.copyfile(source, destination)
    shutil.copymode(source, destination)
