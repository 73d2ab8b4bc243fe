"""The blocking half of the ``fs/*`` methods: what runs in a worker thread.

Each function asks the request's sandbox (:class:`~.sandbox.FsSandbox`, or
:data:`~.sandbox.ALLOW_ALL` for ``sandbox: null``) before it touches a path, then
does the work with plain system calls. OS errors propagate as ``OSError`` (the
handler maps them to wire errors); refusals that are not OS errors raise
:class:`~exec_server.protocol.errors.RpcError` directly.

Deliberate differences from Codex 0.133 (supersets or safety fixes): reading a FIFO
is refused instead of blocking a worker forever; directory entries are sorted by
name; copying a file onto itself leaves it alone (``std::fs::copy`` truncates it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import stat

from ..protocol.errors import InvalidRequest
from ..protocol.messages import (
    FsChecksumResult,
    FsDirectoryEntry,
    FsMetadata,
    FsReadDirectoryResult,
)
from .rust_compat import decode_base64
from .sandbox import FileSandbox

KIB = 1024
MIB = 1024 * KIB

#: Read size when hashing a file for ``fs/checksum``.
CHECKSUM_READ_BYTES = 1 * MIB
#: Read size once the file's announced size is consumed (or it announces none,
#: like /proc files): bounds the transient buffer of an EOF probe.
READ_CHUNK_BYTES = 1 * MIB


def file_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"file is too large to read: limit is {limit} bytes")


def not_a_file(path: str) -> InvalidRequest:
    """Codex 0.171's answer to reading a directory or another non-regular file."""
    return InvalidRequest(f"path `{path}` is not a file")


# --- reads -----------------------------------------------------------------------------


def open_regular(
    path: str, sandbox: FileSandbox, *, regular_only: bool = False
) -> tuple[int, os.stat_result]:
    """Open a file to read it (a blocking fd) and its ``fstat``.

    ``regular_only`` (0.171 requests): anything but a regular file is 0.171's
    -32600 ``path `X` is not a file``. Otherwise a directory is EISDIR and a FIFO is
    refused (opened non-blocking, so it cannot hang).
    """
    sandbox.check_read(path)
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
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_file(path: str, sandbox: FileSandbox, limit: int, *, regular_only: bool) -> bytes:
    """The whole file, at most ``limit`` bytes (else -32600 naming the limit)."""
    fd, info = open_regular(path, sandbox, regular_only=regular_only)
    try:
        if info.st_size > limit:
            raise file_too_large(limit)
        return _read_limited(fd, info.st_size, limit)
    finally:
        os.close(fd)


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


def read_range(
    path: str, sandbox: FileSandbox, offset: int, length: int, *, regular_only: bool
) -> bytes:
    """At most ``length`` bytes from ``offset`` (our extension of ``fs/readFile``)."""
    fd, _ = open_regular(path, sandbox, regular_only=regular_only)
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


def checksum(path: str, sandbox: FileSandbox) -> FsChecksumResult:
    """The file's SHA-256, read in 1 MiB reads (our extension)."""
    fd, _ = open_regular(path, sandbox)
    try:
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, CHECKSUM_READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
        return FsChecksumResult(algorithm="sha256", digest=digest.hexdigest(), size=size)
    finally:
        os.close(fd)


def canonicalize(path: str, sandbox: FileSandbox) -> str:
    """Every symlink resolved; the path must exist (ENOENT otherwise)."""
    sandbox.check_visible(path)
    return os.path.realpath(path, strict=True)


def _birth_ns(info: os.stat_result) -> int | None:
    # Python on Linux has no st_birthtime; Codex's musl build reports 0 there too.
    birth_ns: int | None = getattr(info, "st_birthtime_ns", None)
    if birth_ns is None:
        birth = getattr(info, "st_birthtime", None)
        birth_ns = None if birth is None else int(birth * 1e9)
    return birth_ns


_HAS_BIRTH_TIME = hasattr(os.stat_result, "st_birthtime")


def _unix_ms(ns: int) -> int:
    # Rust's duration_since(UNIX_EPOCH) fails before 1970; Codex reports 0 then.
    return ns // 1_000_000 if ns >= 0 else 0


def metadata(path: str) -> FsMetadata:
    """``fs/getMetadata`` of ``path`` (following a final symlink, as Codex does)."""
    info = os.stat(path)
    link_info = os.lstat(path)
    birth_ns = _birth_ns(info) if _HAS_BIRTH_TIME else None
    return FsMetadata(
        is_directory=stat.S_ISDIR(info.st_mode),
        is_file=stat.S_ISREG(info.st_mode),
        is_symlink=stat.S_ISLNK(link_info.st_mode),
        created_at_ms=0 if birth_ns is None else _unix_ms(birth_ns),
        modified_at_ms=_unix_ms(info.st_mtime_ns),
        size=info.st_size,
    )


def sandboxed_metadata(path: str, sandbox: FileSandbox) -> FsMetadata:
    sandbox.check_visible(path)
    return metadata(path)


def _lossy_name(name: str) -> str:
    """A file name as Rust's ``to_string_lossy`` shows it (invalid UTF-8 -> U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


def read_directory(path: str, sandbox: FileSandbox) -> FsReadDirectoryResult:
    """The entries of a directory, sorted by name; broken or looping symlinks,
    vanished entries and entries the sandbox hides are left out."""
    shows = sandbox.check_list(path)
    entries: list[FsDirectoryEntry] = []
    with os.scandir(path) as listing:
        for entry in listing:
            try:
                info = entry.stat()
            except OSError:
                continue
            if not shows(entry.name, entry.path):
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


# --- writes ----------------------------------------------------------------------------


def write_file(path: str, data_base64: str, sandbox: FileSandbox, offset: int | None) -> None:
    """Write the decoded data, in place (not write-and-rename, like Rust's
    ``fs::write``: a hard link keeps sharing the inode, and the file keeps its mode
    and owner); at ``offset`` without truncating when given (our extension)."""
    data = decode_base64(data_base64)
    sandbox.check_write(path)
    if offset is None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
    else:
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o666)
    try:
        os.set_blocking(fd, True)
        if offset is not None:
            os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def create_directory(path: str, recursive: bool, sandbox: FileSandbox) -> None:
    sandbox.check_create_directory(path, recursive=recursive)
    if recursive:
        os.makedirs(path, exist_ok=True)
    else:
        os.mkdir(path)


def remove(path: str, recursive: bool, force: bool, sandbox: FileSandbox) -> None:
    """Remove a file, a symlink (never its target) or a directory (``recursive``
    for a non-empty one); ``force`` forgives a missing path."""
    if not sandbox.check_remove(path, recursive=recursive, force=force):
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if force:
            return
        raise
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
    elif recursive:
        shutil.rmtree(path)
    else:
        os.rmdir(path)


def copy(source: str, destination: str, recursive: bool, sandbox: FileSandbox) -> None:
    """Copy a file, a symlink (as a symlink) or, ``recursive``, a directory tree."""
    # The source's own entry: a symlink is copied, not followed.
    sandbox.check_read(source, follow_final=False)
    info = os.lstat(source)
    if stat.S_ISDIR(info.st_mode):
        if not recursive:
            raise InvalidRequest("fs/copy requires recursive: true when sourcePath is a directory")
        if _is_same_or_descendant(source, destination):
            raise InvalidRequest(
                "fs/copy cannot copy a directory to itself or one of its descendants"
            )
        _copy_tree(source, destination, sandbox)
    elif stat.S_ISLNK(info.st_mode):
        sandbox.check_write(destination, follow_final=False)
        os.symlink(os.readlink(source), destination)
    elif stat.S_ISREG(info.st_mode):
        sandbox.check_write(destination)
        _copy_file(source, destination)
    else:
        raise InvalidRequest("fs/copy only supports regular files, directories, and symlinks")


def _copy_tree(source: str, destination: str, sandbox: FileSandbox) -> None:
    # Iterative, so deep trees cannot hit the recursion limit. Like Codex:
    # directories are merged into existing ones, files overwrite, symlinks are
    # recreated (an existing one is an error), other file types are skipped.
    pending = [(source, destination)]
    while pending:
        src_dir, dst_dir = pending.pop()
        sandbox.check_write(dst_dir)
        os.makedirs(dst_dir, exist_ok=True)
        with os.scandir(src_dir) as listing:
            for entry in listing:
                if not sandbox.may_copy(entry.path):
                    continue  # hidden from the sandbox, so not part of the copy
                target = posixpath.join(dst_dir, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, target))
                elif entry.is_file(follow_symlinks=False):
                    sandbox.check_write(target)
                    _copy_file(entry.path, target)
                elif entry.is_symlink():
                    sandbox.check_write(target, follow_final=False)
                    os.symlink(os.readlink(entry.path), target)


def _is_same_or_descendant(source: str, destination: str) -> bool:
    source = os.path.realpath(source)
    destination = os.path.realpath(destination)
    return source == "/" or destination == source or destination.startswith(source + "/")


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
