"""The connection processor: one JSON-RPC connection (or relay stream) to a session.

It reads messages from a :class:`MessageChannel`, enforces the initialize /
initialized lifecycle, dispatches requests to the session's process manager or the
shared filesystem handler, and writes responses and notifications back. It does not
know which transport it runs on.

Requests are handled one at a time in arrival order, as Codex does, so a harness
that pipelines a write and a read of the same file sees them in order. The one
exception is a ``process/read`` long-poll that has to wait: it is parked in its own
task so it never blocks the requests behind it (Codex blocks them). ``http/request``
calls likewise run beside the others, in the connection's :class:`HttpHandler`, which
also streams response bodies and cancels all of that when the connection ends.

Connection-fatal input, as observed on the 0.133 binary: an unknown notification, a
Response or Error sent by the client, and ``initialized`` before ``initialize``.
Unparseable input is answered with an error whose id is -1 and the connection stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..protocol import messages as m
from ..protocol.errors import InternalError, InvalidRequest, MethodNotFound, RpcError
from ..protocol.jsonrpc import (
    MALFORMED_MESSAGE_ID,
    ErrorResponse,
    MalformedMessage,
    Notification,
    Request,
    RequestId,
    Response,
    decode_params,
    decode_unit_params,
    encode_error,
    encode_notification,
    encode_response,
    parse_message,
)
from ..protocol.path_uri import speaks_uri
from ..transport.channel import (
    ChannelClosed,
    MalformedFrame,
    MessageChannel,
    MessageTooLargeForTransport,
)
from .capabilities.requests import discover_capabilities_v2, discover_capability_roots
from .environment_config import read_environment_config
from .environment_info import environment_info
from .file_handles import FileHandleTable
from .fs_handler import FileSystemHandler
from .fs_walk import walk
from .http_handler import HttpHandler
from .missing_path_watch import MissingPathWatch
from .process_handler import ProcessManager
from .session import Lease, SessionRegistry

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[m.Message]]

_FS_METHODS: dict[str, tuple[type[Any], Callable[[FileSystemHandler], Handler]]] = {
    m.FS_READ_FILE: (m.FsReadFileParams, lambda fs: fs.read_file),
    m.FS_WRITE_FILE: (m.FsWriteFileParams, lambda fs: fs.write_file),
    m.FS_CREATE_DIRECTORY: (m.FsCreateDirectoryParams, lambda fs: fs.create_directory),
    m.FS_GET_METADATA: (m.FsGetMetadataParams, lambda fs: fs.get_metadata),
    m.FS_READ_DIRECTORY: (m.FsReadDirectoryParams, lambda fs: fs.read_directory),
    m.FS_REMOVE: (m.FsRemoveParams, lambda fs: fs.remove),
    m.FS_COPY: (m.FsCopyParams, lambda fs: fs.copy),
    m.FS_CHECKSUM: (m.FsChecksumParams, lambda fs: fs.checksum),
    m.FS_CANONICALIZE: (m.FsCanonicalizeParams, lambda fs: fs.canonicalize),
    m.FS_WALK: (m.FsWalkParams, lambda fs: functools.partial(walk, fs)),
}

#: fs methods whose state belongs to the connection (open handles, the watch).
_CONNECTION_FS_METHODS: dict[str, tuple[type[Any], Callable[[ConnectionProcessor], Handler]]] = {
    m.FS_OPEN: (m.FsOpenParams, lambda c: c._handles.open),
    m.FS_READ_BLOCK: (m.FsReadBlockParams, lambda c: c._handles.read_block),
    m.FS_WRITE_BLOCK: (m.FsWriteBlockParams, lambda c: c._handles.write_block),
    m.FS_CLOSE: (m.FsCloseParams, lambda c: c._handles.close),
    m.FS_WATCH_MISSING: (m.FsWatchMissingParams, lambda c: c._watch.watch),
}

_PROCESS_METHODS: dict[str, tuple[type[Any], Callable[[ProcessManager], Handler]]] = {
    m.PROCESS_START: (m.ProcessStartParams, lambda p: p.start),
    m.PROCESS_READ: (m.ProcessReadParams, lambda p: p.read),
    m.PROCESS_WRITE: (m.ProcessWriteParams, lambda p: p.write),
    m.PROCESS_TERMINATE: (m.ProcessTerminateParams, lambda p: p.terminate),
    m.PROCESS_SIGNAL: (m.ProcessSignalParams, lambda p: p.signal),
    m.PROCESS_RESIZE: (m.ProcessResizeParams, lambda p: p.resize),
}

_FAMILY_EXEC = "exec"
_FAMILY_FS = "filesystem"
_FAMILY_ENV_INFO = "environment info"
_FAMILY_ENV_STATUS = "environment status"
_FAMILY_ENV_CONFIG = "environment config"
_FAMILY_HTTP = "http"
_FAMILY_CAPABILITIES = "capability discovery"

TAKEN_OVER_MESSAGE = "session has been resumed by another connection"


class _CloseConnection(Exception):
    """Input that ends the connection (as Codex does), with the reason to log."""


class ConnectionProcessor:
    """Runs one connection until its channel closes or a fatal protocol error."""

    def __init__(
        self,
        channel: MessageChannel,
        registry: SessionRegistry,
        fs: FileSystemHandler,
    ) -> None:
        self._channel = channel
        self._registry = registry
        self._fs = fs
        self._lease: Lease | None = None
        self._initialize_started = False
        self._initialized = False
        self._http = HttpHandler(self._reply, self._send_notification)
        self._handles: FileHandleTable = FileHandleTable(fs)
        self._watch: MissingPathWatch = MissingPathWatch(self._send_notification)

    @property
    def session_id(self) -> str | None:
        return self._lease.session.id if self._lease else None

    async def run(self) -> None:
        """Process messages until the channel ends; then detach the session.

        Parked long-polls outlive the read loop only until they complete or the
        session is resumed elsewhere or expires (their lease is revoked).
        """
        try:
            async with asyncio.TaskGroup() as background:
                try:
                    await self._read_loop(background)
                finally:
                    if self._lease is not None:
                        self._registry.detach(self._lease)
                    await self._watch.close()
                    await self._handles.close_all()
                    await self._http.shutdown()
        finally:
            await self._channel.close()

    async def _read_loop(self, background: asyncio.TaskGroup) -> None:
        while True:
            try:
                raw = await self._channel.receive()
            except ChannelClosed as exc:
                log.debug("connection closed: %s", exc.reason)
                return
            if isinstance(raw, MalformedFrame):
                await self._send_malformed(raw.detail)
                continue
            try:
                message = parse_message(raw)
            except MalformedMessage as exc:
                await self._send_malformed(str(exc))
                continue
            try:
                if isinstance(message, Request):
                    await self._handle_request(message, background)
                elif isinstance(message, Notification):
                    self._handle_notification(message)
                elif isinstance(message, Response | ErrorResponse):
                    raise _CloseConnection(
                        f"unexpected response from client for request id {message.id!r}"
                    )
            except _CloseConnection as exc:
                log.warning("closing exec-server connection after protocol error: %s", exc)
                await self._channel.close(str(exc))
                return

    async def _send_malformed(self, detail: str) -> None:
        err = InvalidRequest(f"{self._channel.parse_error_prefix}: {detail}")
        await self._send(encode_error(MALFORMED_MESSAGE_ID, err))

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ChannelClosed):
            await self._channel.send(data)

    async def _send_notification(self, method: str, params: m.Message) -> None:
        await self._send(encode_notification(method, params))

    def _handle_notification(self, note: Notification) -> None:
        if note.method != m.INITIALIZED:
            raise _CloseConnection(f"unexpected notification `{note.method}`")
        if self._lease is None:
            raise _CloseConnection("received `initialized` before `initialize`")
        self._initialized = True

    async def _handle_request(self, req: Request, background: asyncio.TaskGroup) -> None:
        try:
            if req.method == m.INITIALIZE:
                result: m.Message = self._initialize(decode_params(req.params, m.InitializeParams))
            elif req.method == m.PROCESS_READ:
                params = decode_params(req.params, m.ProcessReadParams)
                lease = self._check_ready(_FAMILY_EXEC)
                if params.wait_ms:
                    background.create_task(self._long_poll(req.id, lease, params))
                    return
                result = await lease.session.processes.read(params)
            elif req.method in _PROCESS_METHODS:
                params_type, bind = _PROCESS_METHODS[req.method]
                params = decode_params(req.params, params_type)
                lease = self._check_ready(_FAMILY_EXEC)
                _note_era(lease, params)
                result = await bind(lease.session.processes)(params)
            elif req.method == m.HTTP_REQUEST:
                http_params = decode_params(req.params, m.HttpRequestParams)
                self._check_ready(_FAMILY_HTTP)
                self._http.submit(req.id, http_params)  # answered through self._reply
                return
            elif req.method in _FS_METHODS:
                params_type, bind_fs = _FS_METHODS[req.method]
                params = decode_params(req.params, params_type)
                _note_era(self._check_ready(_FAMILY_FS), params)
                result = await bind_fs(self._fs)(params)
            elif req.method in _CONNECTION_FS_METHODS:
                params_type, bind_conn = _CONNECTION_FS_METHODS[req.method]
                params = decode_params(req.params, params_type)
                _note_era(self._check_ready(_FAMILY_FS), params)
                result = await bind_conn(self)(params)
            elif req.method == m.ENVIRONMENT_INFO:
                self._check_ready(_FAMILY_ENV_INFO)
                decode_unit_params(req.params)
                result = environment_info()
            elif req.method == m.ENVIRONMENT_CONFIG_READ:
                config_params = decode_params(req.params, m.EnvironmentConfigReadParams)
                self._check_ready(_FAMILY_ENV_CONFIG)
                result = await self._fs.run_blocking(
                    functools.partial(read_environment_config, config_params)
                )
            elif req.method == m.CAPABILITIES_DISCOVER:
                discover_params = decode_params(req.params, m.DiscoverCapabilitiesParams)
                self._check_ready(_FAMILY_CAPABILITIES)
                result = await discover_capabilities_v2(self._fs, discover_params)
            elif req.method == m.CAPABILITY_ROOTS_DISCOVER:
                roots_params = decode_params(req.params, m.CapabilityRootsDiscoverParams)
                self._check_ready(_FAMILY_CAPABILITIES)
                result = await discover_capability_roots(self._fs, roots_params)
            elif req.method == m.ENVIRONMENT_STATUS:
                self._check_ready(_FAMILY_ENV_STATUS)
                decode_unit_params(req.params)
                result = m.EnvironmentStatusResult()
            else:
                raise MethodNotFound(req.method)
        except RpcError as err:
            await self._send(encode_error(req.id, err))
            return
        except Exception as exc:  # a handler bug must not kill the connection
            log.exception("internal error handling %s", req.method)
            await self._send(encode_error(req.id, InternalError(f"internal error: {exc}")))
            return
        await self._send_result(req.id, result)

    async def _send_result(self, request_id: RequestId, result: m.Message) -> None:
        try:
            data = encode_response(request_id, result)
        except (msgspec.EncodeError, OverflowError, MemoryError) as exc:
            data = encode_error(request_id, InternalError(f"failed to encode result: {exc}"))
        try:
            await self._send(data)
        except MessageTooLargeForTransport as exc:
            await self._send(
                encode_error(request_id, InternalError(f"response cannot be delivered: {exc}"))
            )

    async def _reply(self, request_id: RequestId, outcome: m.Message | RpcError) -> None:
        if isinstance(outcome, RpcError):
            await self._send(encode_error(request_id, outcome))
        else:
            await self._send_result(request_id, outcome)

    async def _long_poll(
        self, request_id: RequestId, lease: Lease, params: m.ProcessReadParams
    ) -> None:
        read = asyncio.ensure_future(lease.session.processes.read(params))
        revoked = asyncio.ensure_future(lease.revoked.wait())
        try:
            await asyncio.wait({read, revoked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            revoked.cancel()
        outcome: m.Message | RpcError
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            outcome = InvalidRequest(TAKEN_OVER_MESSAGE)
        else:
            try:
                outcome = read.result()
            except RpcError as err:
                outcome = err
        await self._reply(request_id, outcome)

    def _initialize(self, params: m.InitializeParams) -> m.InitializeResult:
        if self._initialize_started:
            raise InvalidRequest("initialize may only be sent once per connection")
        self._initialize_started = True
        try:
            if params.resume_session_id is None:
                self._lease = self._registry.create(self._send_notification)
            else:
                self._lease = self._registry.resume(
                    params.resume_session_id, self._send_notification
                )
        except RpcError:
            self._initialize_started = False
            raise
        return m.InitializeResult(
            session_id=self._lease.session.id, environment_info=environment_info()
        )

    def _check_ready(self, family: str) -> Lease:
        if self._lease is None:
            raise InvalidRequest(f"client must call initialize before using {family} methods")
        if not self._initialized:
            raise InvalidRequest(f"client must send initialized before using {family} methods")
        if self._lease.revoked.is_set():
            raise InvalidRequest(TAKEN_OVER_MESSAGE)
        return self._lease


def _note_era(lease: Lease, params: object) -> None:
    """Mark the session as a Codex 0.171 one once a request of it speaks URIs."""
    session = lease.session
    if session.speaks_uris:
        return
    for name in ("path", "cwd", "source_path"):
        value = getattr(params, name, None)
        if isinstance(value, str) and speaks_uri(value):
            session.speaks_uris = True
            return
