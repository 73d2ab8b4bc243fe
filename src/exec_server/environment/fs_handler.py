"""The ``fs/*`` methods: read, write, create, stat, list, remove, copy and canonicalize.

This module owns the filesystem half of the exec-server API (validating params on
the event loop; the blocking work is :mod:`.fs_ops`, in worker threads) and the
one mapping from OS errors to JSON-RPC errors (:func:`map_os_error`). The wire reference is the
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
from . import fs_ops
from .fs_ops import KIB, MIB, file_too_large
from .rust_compat import os_error_text
from .sandbox import FileSandbox, SandboxSpec, parse_absolute_path, parse_sandbox, resolve_sandbox

T = TypeVar("T")

#: Default ceiling for ``fs/readFile``. Base64 grows data by 4/3, so 384 MiB fills a
#: 512 MiB message exactly; 1 KiB less leaves room for the JSON-RPC envelope.
DEFAULT_MAX_READ_BYTES = 384 * MIB - 1 * KIB

__all__ = ["DEFAULT_MAX_READ_BYTES", "MIB", "FileSystemHandler", "FsLimits", "map_os_error"]


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
                lambda: fs_ops.read_range(
                    path, self.resolve_sandbox(spec), offset, length, regular_only=regular_only
                )
            )
            return FsReadFileResult(data_base64=data)
        data = await self.run_blocking(
            lambda: fs_ops.read_file(
                path, self.resolve_sandbox(spec), limit, regular_only=regular_only
            )
        )
        return FsReadFileResult(data_base64=data)

    async def checksum(self, p: FsChecksumParams) -> FsChecksumResult:
        """Our extension: the file's SHA-256, computed here in 1 MiB reads."""
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        return await self.run_blocking(lambda: fs_ops.checksum(path, self.resolve_sandbox(spec)))

    async def write_file(self, p: FsWriteFileParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        offset = None if isinstance(p.offset, UnsetType) else p.offset
        if offset is not None and offset < 0:
            raise InvalidParams("fs/writeFile offset must be >= 0")
        await self.run_blocking(
            lambda: fs_ops.write_file(path, p.data_base64, self.resolve_sandbox(spec), offset)
        )
        return Empty()

    async def create_directory(self, p: FsCreateDirectoryParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(
            lambda: fs_ops.create_directory(path, p.recursive, self.resolve_sandbox(spec))
        )
        return Empty()

    async def get_metadata(self, p: FsGetMetadataParams) -> FsMetadata:
        path = parse_absolute_path(p.path)
        if p.sandbox is None:
            # Two stat calls: cheaper inline than the ~60 us thread hop, and the Codex
            # harness issues dozens of these on its startup path.
            try:
                return fs_ops.metadata(path)
            except OSError as err:
                raise map_os_error(err) from err
        spec = parse_sandbox(p.sandbox)
        return await self.run_blocking(
            lambda: fs_ops.sandboxed_metadata(path, self.resolve_sandbox(spec))
        )

    async def read_directory(self, p: FsReadDirectoryParams) -> FsReadDirectoryResult:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        return await self.run_blocking(
            lambda: fs_ops.read_directory(path, self.resolve_sandbox(spec))
        )

    async def canonicalize(self, p: FsCanonicalizeParams) -> FsCanonicalizeResult:
        """Codex 0.171: the path with every symlink resolved (it must exist: -32004),
        in the request's form (a ``file://`` URI for a URI)."""
        wire = parse_wire_path(p.path)
        spec = parse_sandbox(p.sandbox)
        resolved = await self.run_blocking(
            lambda: fs_ops.canonicalize(wire.native, self.resolve_sandbox(spec))
        )
        return FsCanonicalizeResult(path=wire.render(resolved))

    async def remove(self, p: FsRemoveParams) -> Empty:
        path = parse_absolute_path(p.path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(
            lambda: fs_ops.remove(path, p.recursive, p.force, self.resolve_sandbox(spec))
        )
        return Empty()

    async def copy(self, p: FsCopyParams) -> Empty:
        source = parse_absolute_path(p.source_path)
        destination = parse_absolute_path(p.destination_path)
        spec = parse_sandbox(p.sandbox)
        await self.run_blocking(
            lambda: fs_ops.copy(source, destination, p.recursive, self.resolve_sandbox(spec))
        )
        return Empty()

    # -- plumbing ----------------------------------------------------------------------

    async def run_blocking(self, work: Callable[[], T]) -> T:
        """Run blocking fs work in a worker thread; OS errors become wire errors."""
        try:
            return await asyncio.to_thread(work)
        except OSError as err:
            raise map_os_error(err) from err

    def resolve_sandbox(self, spec: SandboxSpec | None) -> FileSandbox:
        """Bind a parsed ``sandbox`` to real paths (blocking: call from a worker
        thread); :data:`~.sandbox.ALLOW_ALL` when nothing is restricted."""
        return resolve_sandbox(spec, environ=self._environ)
