"""``client.fs``: the environment's filesystem (Codex's ``fs/*`` methods).

Paths are the environment's: absolute paths or ``file://`` URIs. Ours takes both;
Codex 0.171 requires URIs and 0.133 refuses them. Absolute paths are sent as URIs to
an environment that announced URI paths in ``initialize`` (0.171), as given otherwise. ``sandbox``
is Codex's optional per-call sandbox object, passed through. Every method takes
``timeout=`` (seconds, ``None`` for no limit; the client's default otherwise).
Errors are :class:`~exec_server.client.ServerError` with the server's code: -32004
for a missing path, -32600 for permission problems and whole-file reads over the
server's limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ..protocol import messages as m
from .config import DEFAULT, Timeout

if TYPE_CHECKING:
    from .client import ExecServerClient


class FileSystem:
    """The ``fs/*`` calls of one client; get it as ``client.fs``."""

    def __init__(self, client: ExecServerClient) -> None:
        self._client = client

    async def read_file(
        self,
        path: str,
        *,
        offset: int | None = None,
        length: int | None = None,
        max_bytes: int | None = None,
        sandbox: m.Sandbox = None,
        timeout: Timeout = DEFAULT,
    ) -> bytes:
        """Read a file; ``offset``/``length`` (our extension) read a range of it, any
        file size. A whole-file read is refused above the server's limit (384 MiB on
        ours)."""
        params = m.FsReadFileParams(
            path=self._client._wire_path(path),
            sandbox=sandbox,
            max_bytes=max_bytes,
            offset=msgspec.UNSET if offset is None else offset,
            length=msgspec.UNSET if length is None else length,
        )
        result = await self._client._call(m.FS_READ_FILE, params, m.FsReadFileResult, timeout)
        return result.data_base64

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        offset: int | None = None,
        sandbox: m.Sandbox = None,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Create or truncate a file with ``data``; with ``offset`` (our extension)
        write into an existing file at that position without truncating it."""
        params = _WriteFileBytes(
            path=self._client._wire_path(path),
            data_base64=data,
            sandbox=sandbox,
            offset=msgspec.UNSET if offset is None else offset,
        )
        await self._client._call(m.FS_WRITE_FILE, params, m.Empty, timeout)

    async def create_directory(
        self,
        path: str,
        *,
        recursive: bool = True,
        sandbox: m.Sandbox = None,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Create a directory (and its parents unless ``recursive=False``)."""
        params = m.FsCreateDirectoryParams(
            path=self._client._wire_path(path), recursive=recursive, sandbox=sandbox
        )
        await self._client._call(m.FS_CREATE_DIRECTORY, params, m.Empty, timeout)

    async def get_metadata(
        self, path: str, *, sandbox: m.Sandbox = None, timeout: Timeout = DEFAULT
    ) -> m.FsMetadata:
        """Type, size and times of a path (``size`` is 0 from servers that omit it)."""
        params = m.FsGetMetadataParams(path=self._client._wire_path(path), sandbox=sandbox)
        return await self._client._call(m.FS_GET_METADATA, params, _MetadataLenient, timeout)

    async def read_directory(
        self, path: str, *, sandbox: m.Sandbox = None, timeout: Timeout = DEFAULT
    ) -> list[m.FsDirectoryEntry]:
        """The entries of a directory (sorted by name on our server)."""
        params = m.FsReadDirectoryParams(path=self._client._wire_path(path), sandbox=sandbox)
        result = await self._client._call(
            m.FS_READ_DIRECTORY, params, m.FsReadDirectoryResult, timeout
        )
        return result.entries

    async def remove(
        self,
        path: str,
        *,
        recursive: bool = True,
        force: bool = True,
        sandbox: m.Sandbox = None,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Remove a file or (with ``recursive``) a tree; ``force`` ignores a missing path."""
        params = m.FsRemoveParams(
            path=self._client._wire_path(path), recursive=recursive, force=force, sandbox=sandbox
        )
        await self._client._call(m.FS_REMOVE, params, m.Empty, timeout)

    async def copy(
        self,
        source_path: str,
        destination_path: str,
        *,
        recursive: bool = False,
        sandbox: m.Sandbox = None,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Copy a file, or a directory tree with ``recursive=True``, on the environment."""
        params = m.FsCopyParams(
            source_path=self._client._wire_path(source_path),
            destination_path=self._client._wire_path(destination_path),
            recursive=recursive,
            sandbox=sandbox,
        )
        await self._client._call(m.FS_COPY, params, m.Empty, timeout)

    async def checksum(
        self, path: str, *, sandbox: m.Sandbox = None, timeout: Timeout = DEFAULT
    ) -> m.FsChecksumResult:
        """The file's SHA-256 and size, computed on the server (our extension)."""
        params = m.FsChecksumParams(path=self._client._wire_path(path), sandbox=sandbox)
        return await self._client._call(m.FS_CHECKSUM, params, m.FsChecksumResult, timeout)


class _WriteFileBytes(m.Message):
    """Client-side writeFile params: msgspec base64-encodes ``bytes`` itself."""

    path: str
    data_base64: bytes
    sandbox: m.Sandbox = None
    offset: int | msgspec.UnsetType = msgspec.UNSET


class _MetadataLenient(m.FsMetadata):
    """Metadata from servers that omit ``size`` (Codex 0.133)."""

    size: int = 0
