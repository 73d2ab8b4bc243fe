"""Every method this server answers, in one table: ``{method: Route}``.

A :class:`Route` says how a request is decoded (its params type, or none), which
family its lifecycle errors name, what handles it, and its :class:`Mode`: whether it
is allowed before the handshake, and whether its paths decide the client's era.
Handlers get the connection as a :class:`RequestContext` (what a method may reach:
the shared filesystem handler, the session's processes, the connection's file
handles, watch and HTTP client) and return the result, or ``None`` when the method
answers later by itself (a parked long-poll, an ``http/request``).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol import messages as m
from ..protocol.jsonrpc import RequestId
from .capabilities.requests import discover_capabilities_v2, discover_capability_roots
from .environment_config import read_environment_config
from .environment_info import environment_info
from .file_handles import FileHandleTable
from .fs_handler import FileSystemHandler
from .fs_walk import walk
from .http_handler import HttpHandler
from .missing_path_watch import MissingPathWatch
from .process_manager import ProcessManager


class RequestContext(Protocol):
    """What a method's handler may reach on its connection."""

    fs: FileSystemHandler
    handles: FileHandleTable
    watch: MissingPathWatch
    http: HttpHandler

    @property
    def processes(self) -> ProcessManager:
        """The session's processes (the handshake is done when a handler runs)."""
        ...

    def initialize(self, params: m.InitializeParams) -> m.InitializeResult: ...

    def park_read(self, request_id: RequestId, params: m.ProcessReadParams) -> None:
        """Answer a ``process/read`` that may wait beside the other requests."""
        ...


class Mode(enum.Enum):
    """How a method relates to the connection's lifecycle and the client's era."""

    #: ``initialize``: allowed before the handshake (once).
    HANDSHAKE = enum.auto()
    #: Needs the handshake done; the params carry no path.
    READY = enum.auto()
    #: Needs the handshake done; a ``file://`` path in the params marks the session
    #: as a Codex 0.171 one.
    READY_PATHS = enum.auto()


#: A method's implementation: the connection, the request id and the decoded params
#: in; the result out, or ``None`` when the method answers later by itself.
Handler = Callable[[RequestContext, RequestId, Any], Awaitable[m.Message | None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One method: its params type (``None``: it takes none), the family named in
    lifecycle errors, its handler and its :class:`Mode`."""

    params_type: type[Any] | None
    family: str
    handler: Handler
    mode: Mode


def _on(owner: Callable[[RequestContext], object], name: str) -> Handler:
    """The method ``name`` of what ``owner`` picks from the connection (looked up per
    call, so tests may replace it)."""

    async def handle(conn: RequestContext, _id: RequestId, params: Any) -> m.Message:
        result: m.Message = await getattr(owner(conn), name)(params)
        return result

    return handle


def _fs(name: str) -> Handler:
    return _on(lambda conn: conn.fs, name)


def _processes(name: str) -> Handler:
    return _on(lambda conn: conn.processes, name)


def _handles(name: str) -> Handler:
    return _on(lambda conn: conn.handles, name)


async def _initialize(conn: RequestContext, _id: RequestId, params: Any) -> m.Message:
    return conn.initialize(params)


async def _process_read(
    conn: RequestContext, request_id: RequestId, params: m.ProcessReadParams
) -> m.Message | None:
    if params.wait_ms:
        # A read that may wait is parked beside the other requests (Codex blocks them).
        conn.park_read(request_id, params)
        return None
    return await conn.processes.read(params)


async def _http_request(
    conn: RequestContext, request_id: RequestId, params: m.HttpRequestParams
) -> None:
    conn.http.submit(request_id, params)  # answered through the connection's reply


async def _walk(conn: RequestContext, _id: RequestId, params: m.FsWalkParams) -> m.Message:
    return await walk(conn.fs, params)


async def _watch_missing(
    conn: RequestContext, _id: RequestId, params: m.FsWatchMissingParams
) -> m.Message:
    return await conn.watch.watch(params)


async def _environment_info(conn: RequestContext, _id: RequestId, _p: None) -> m.Message:
    return environment_info()


async def _environment_status(conn: RequestContext, _id: RequestId, _p: None) -> m.Message:
    return m.EnvironmentStatusResult()


async def _environment_config(
    conn: RequestContext, _id: RequestId, params: m.EnvironmentConfigReadParams
) -> m.Message:
    return await conn.fs.run_blocking(functools.partial(read_environment_config, params))


async def _discover_capabilities(
    conn: RequestContext, _id: RequestId, params: m.DiscoverCapabilitiesParams
) -> m.Message:
    return await discover_capabilities_v2(conn.fs, params)


async def _discover_capability_roots(
    conn: RequestContext, _id: RequestId, params: m.CapabilityRootsDiscoverParams
) -> m.Message:
    return await discover_capability_roots(conn.fs, params)


_EXEC = "exec"
_FILES = "filesystem"
_CAPABILITIES = "capability discovery"
_PATHS = Mode.READY_PATHS

#: Every method this server answers; anything else is -32601.
ROUTES: dict[str, Route] = {
    m.INITIALIZE: Route(m.InitializeParams, "", _initialize, Mode.HANDSHAKE),
    m.PROCESS_START: Route(m.ProcessStartParams, _EXEC, _processes("start"), _PATHS),
    m.PROCESS_READ: Route(m.ProcessReadParams, _EXEC, _process_read, Mode.READY),
    m.PROCESS_WRITE: Route(m.ProcessWriteParams, _EXEC, _processes("write"), _PATHS),
    m.PROCESS_TERMINATE: Route(m.ProcessTerminateParams, _EXEC, _processes("terminate"), _PATHS),
    m.PROCESS_SIGNAL: Route(m.ProcessSignalParams, _EXEC, _processes("signal"), _PATHS),
    m.PROCESS_RESIZE: Route(m.ProcessResizeParams, _EXEC, _processes("resize"), _PATHS),
    m.HTTP_REQUEST: Route(m.HttpRequestParams, "http", _http_request, Mode.READY),
    m.FS_READ_FILE: Route(m.FsReadFileParams, _FILES, _fs("read_file"), _PATHS),
    m.FS_WRITE_FILE: Route(m.FsWriteFileParams, _FILES, _fs("write_file"), _PATHS),
    m.FS_CREATE_DIRECTORY: Route(
        m.FsCreateDirectoryParams, _FILES, _fs("create_directory"), _PATHS
    ),
    m.FS_GET_METADATA: Route(m.FsGetMetadataParams, _FILES, _fs("get_metadata"), _PATHS),
    m.FS_READ_DIRECTORY: Route(m.FsReadDirectoryParams, _FILES, _fs("read_directory"), _PATHS),
    m.FS_REMOVE: Route(m.FsRemoveParams, _FILES, _fs("remove"), _PATHS),
    m.FS_COPY: Route(m.FsCopyParams, _FILES, _fs("copy"), _PATHS),
    m.FS_CHECKSUM: Route(m.FsChecksumParams, _FILES, _fs("checksum"), _PATHS),
    m.FS_CANONICALIZE: Route(m.FsCanonicalizeParams, _FILES, _fs("canonicalize"), _PATHS),
    m.FS_WALK: Route(m.FsWalkParams, _FILES, _walk, _PATHS),
    m.FS_OPEN: Route(m.FsOpenParams, _FILES, _handles("open"), _PATHS),
    m.FS_READ_BLOCK: Route(m.FsReadBlockParams, _FILES, _handles("read_block"), _PATHS),
    m.FS_WRITE_BLOCK: Route(m.FsWriteBlockParams, _FILES, _handles("write_block"), _PATHS),
    m.FS_CLOSE: Route(m.FsCloseParams, _FILES, _handles("close"), _PATHS),
    m.FS_WATCH_MISSING: Route(m.FsWatchMissingParams, _FILES, _watch_missing, _PATHS),
    m.ENVIRONMENT_INFO: Route(None, "environment info", _environment_info, Mode.READY),
    m.ENVIRONMENT_STATUS: Route(None, "environment status", _environment_status, Mode.READY),
    m.ENVIRONMENT_CONFIG_READ: Route(
        m.EnvironmentConfigReadParams, "environment config", _environment_config, Mode.READY
    ),
    m.CAPABILITIES_DISCOVER: Route(
        m.DiscoverCapabilitiesParams, _CAPABILITIES, _discover_capabilities, Mode.READY
    ),
    m.CAPABILITY_ROOTS_DISCOVER: Route(
        m.CapabilityRootsDiscoverParams, _CAPABILITIES, _discover_capability_roots, Mode.READY
    ),
}
