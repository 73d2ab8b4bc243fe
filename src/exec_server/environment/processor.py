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

Eager input: a channel that can hand over messages from its transport's own callback
(:class:`EagerInput`, the local websocket) has each message handled right there when
the connection is idle; a handler that has to wait (a worker thread, a full socket)
continues in the connection's task, and messages behind it queue as usual. Most
requests never wait, so they are answered without an event-loop round trip. A
handler may therefore start outside any task: it must not need
``asyncio.current_task()`` (``asyncio.timeout``) before its first ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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
from .session import Lease, Session, SessionRegistry

log = logging.getLogger(__name__)

TAKEN_OVER_MESSAGE = "session has been resumed by another connection"


class Mode(enum.Enum):
    """How a method relates to the connection's lifecycle and the client's era."""

    #: ``initialize``: allowed before the handshake (once).
    HANDSHAKE = enum.auto()
    #: Needs the handshake done; the params carry no path.
    READY = enum.auto()
    #: Needs the handshake done; a ``file://`` path in the params marks the session
    #: as a Codex 0.171 one (see :func:`_note_era`).
    READY_PATHS = enum.auto()


#: A method's implementation: the connection, the request id and the decoded params
#: in; the result out, or ``None`` when the method answers later by itself (a parked
#: long-poll, an ``http/request``).
Handler = Callable[["ConnectionProcessor", RequestId, Any], Awaitable[m.Message | None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One method: its params type (``None``: it takes none), the family named in
    lifecycle errors, its handler and its :class:`Mode`."""

    params_type: type[Any] | None
    family: str
    handler: Handler
    mode: Mode


def _fs(name: str) -> Handler:
    """A :class:`FileSystemHandler` method (looked up per call: tests may replace it)."""

    async def handle(conn: ConnectionProcessor, _id: RequestId, params: Any) -> m.Message:
        result: m.Message = await getattr(conn._fs, name)(params)
        return result

    return handle


def _processes(name: str) -> Handler:
    """A method of the session's :class:`ProcessManager`."""

    async def handle(conn: ConnectionProcessor, _id: RequestId, params: Any) -> m.Message:
        result: m.Message = await getattr(conn._session().processes, name)(params)
        return result

    return handle


async def _process_read(
    conn: ConnectionProcessor, request_id: RequestId, params: m.ProcessReadParams
) -> m.Message | None:
    lease = conn._session_lease()
    if params.wait_ms:
        # A read that may wait is parked beside the other requests (Codex blocks them).
        conn._park(request_id, lease, params)
        return None
    return await lease.session.processes.read(params)


async def _http_request(
    conn: ConnectionProcessor, request_id: RequestId, params: m.HttpRequestParams
) -> None:
    conn._http.submit(request_id, params)  # answered through conn._reply


async def _initialize(
    conn: ConnectionProcessor, _id: RequestId, params: m.InitializeParams
) -> m.Message:
    return conn._initialize(params)


async def _environment_info(conn: ConnectionProcessor, _id: RequestId, _p: None) -> m.Message:
    return environment_info()


async def _environment_status(conn: ConnectionProcessor, _id: RequestId, _p: None) -> m.Message:
    return m.EnvironmentStatusResult()


async def _environment_config(
    conn: ConnectionProcessor, _id: RequestId, params: m.EnvironmentConfigReadParams
) -> m.Message:
    return await conn._fs.run_blocking(functools.partial(read_environment_config, params))


async def _discover_capabilities(
    conn: ConnectionProcessor, _id: RequestId, params: m.DiscoverCapabilitiesParams
) -> m.Message:
    return await discover_capabilities_v2(conn._fs, params)


async def _discover_capability_roots(
    conn: ConnectionProcessor, _id: RequestId, params: m.CapabilityRootsDiscoverParams
) -> m.Message:
    return await discover_capability_roots(conn._fs, params)


def _handles(name: str) -> Handler:
    """A method of the connection's :class:`FileHandleTable`."""

    async def handle(conn: ConnectionProcessor, _id: RequestId, params: Any) -> m.Message:
        result: m.Message = await getattr(conn._handles, name)(params)
        return result

    return handle


async def _walk(conn: ConnectionProcessor, _id: RequestId, params: m.FsWalkParams) -> m.Message:
    return await walk(conn._fs, params)


async def _watch_missing(
    conn: ConnectionProcessor, _id: RequestId, params: m.FsWatchMissingParams
) -> m.Message:
    return await conn._watch.watch(params)


_EXEC = "exec"
_FILESYSTEM = "filesystem"
_CAPABILITIES = "capability discovery"

#: Every method this server answers; anything else is -32601.
ROUTES: dict[str, Route] = {
    m.INITIALIZE: Route(m.InitializeParams, "", _initialize, Mode.HANDSHAKE),
    m.PROCESS_START: Route(m.ProcessStartParams, _EXEC, _processes("start"), Mode.READY_PATHS),
    m.PROCESS_READ: Route(m.ProcessReadParams, _EXEC, _process_read, Mode.READY),
    m.PROCESS_WRITE: Route(m.ProcessWriteParams, _EXEC, _processes("write"), Mode.READY_PATHS),
    m.PROCESS_TERMINATE: Route(
        m.ProcessTerminateParams, _EXEC, _processes("terminate"), Mode.READY_PATHS
    ),
    m.PROCESS_SIGNAL: Route(m.ProcessSignalParams, _EXEC, _processes("signal"), Mode.READY_PATHS),
    m.PROCESS_RESIZE: Route(m.ProcessResizeParams, _EXEC, _processes("resize"), Mode.READY_PATHS),
    m.HTTP_REQUEST: Route(m.HttpRequestParams, "http", _http_request, Mode.READY),
    m.FS_READ_FILE: Route(m.FsReadFileParams, _FILESYSTEM, _fs("read_file"), Mode.READY_PATHS),
    m.FS_WRITE_FILE: Route(m.FsWriteFileParams, _FILESYSTEM, _fs("write_file"), Mode.READY_PATHS),
    m.FS_CREATE_DIRECTORY: Route(
        m.FsCreateDirectoryParams,
        _FILESYSTEM,
        _fs("create_directory"),
        Mode.READY_PATHS,
    ),
    m.FS_GET_METADATA: Route(
        m.FsGetMetadataParams, _FILESYSTEM, _fs("get_metadata"), Mode.READY_PATHS
    ),
    m.FS_READ_DIRECTORY: Route(
        m.FsReadDirectoryParams,
        _FILESYSTEM,
        _fs("read_directory"),
        Mode.READY_PATHS,
    ),
    m.FS_REMOVE: Route(m.FsRemoveParams, _FILESYSTEM, _fs("remove"), Mode.READY_PATHS),
    m.FS_COPY: Route(m.FsCopyParams, _FILESYSTEM, _fs("copy"), Mode.READY_PATHS),
    m.FS_CHECKSUM: Route(m.FsChecksumParams, _FILESYSTEM, _fs("checksum"), Mode.READY_PATHS),
    m.FS_CANONICALIZE: Route(
        m.FsCanonicalizeParams,
        _FILESYSTEM,
        _fs("canonicalize"),
        Mode.READY_PATHS,
    ),
    m.FS_WALK: Route(m.FsWalkParams, _FILESYSTEM, _walk, Mode.READY_PATHS),
    m.FS_OPEN: Route(m.FsOpenParams, _FILESYSTEM, _handles("open"), Mode.READY_PATHS),
    m.FS_READ_BLOCK: Route(
        m.FsReadBlockParams, _FILESYSTEM, _handles("read_block"), Mode.READY_PATHS
    ),
    m.FS_WRITE_BLOCK: Route(
        m.FsWriteBlockParams,
        _FILESYSTEM,
        _handles("write_block"),
        Mode.READY_PATHS,
    ),
    m.FS_CLOSE: Route(m.FsCloseParams, _FILESYSTEM, _handles("close"), Mode.READY_PATHS),
    m.FS_WATCH_MISSING: Route(
        m.FsWatchMissingParams, _FILESYSTEM, _watch_missing, Mode.READY_PATHS
    ),
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


class _CloseConnection(Exception):
    """Input that ends the connection (as Codex does), with the reason to log."""


@runtime_checkable
class EagerInput(Protocol):
    """A channel that can hand over received messages from its own callbacks.

    ``on_input`` (set by the processor) is called on the event loop after each
    message arrives and when the channel ends; :meth:`take` returns the next
    waiting message or ``None``; ``end_reason`` is set once the channel ended.
    """

    on_input: Callable[[], None] | None
    end_reason: str | None

    def take(self) -> bytes | str | MalformedFrame | None: ...


def _start_eagerly(coro: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Run ``coro`` up to its first suspension; ``None`` if it finished, else an
    awaitable that carries it on (in whichever task awaits it).

    Exceptions of that first step propagate to the caller.
    """
    try:
        suspended_on = coro.send(None)
    except StopIteration:
        return None
    return _carry_on(coro, suspended_on)


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, None], suspended_on: Any) -> Generator[Any, Any, None]:
    # What `await coro` would have done from here: hand each future it waits on to
    # the task, and pass back what the task sends or throws.
    try:
        while True:
            try:
                sent = yield suspended_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                suspended_on = coro.throw(exc)
            else:
                suspended_on = coro.send(sent)
    except StopIteration:
        return


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
        self._background: asyncio.TaskGroup | None = None
        # Eager input: whether the next message may be handled in the channel's
        # callback (the connection's task is parked with nothing left to do) ...
        self._eager_ready = False
        # ... else what that task must do first: carry on a handler that had to
        # wait, or end the connection.
        self._carry_on: Awaitable[None] | None = None
        self._closing: _CloseConnection | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._eager_channel: EagerInput | None = None
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
                self._background = background
                try:
                    if isinstance(self._channel, EagerInput):
                        await self._eager_loop(self._channel)
                    else:
                        await self._read_loop()
                finally:
                    if self._lease is not None:
                        self._registry.detach(self._lease)
                    await self._watch.close()
                    await self._handles.close_all()
                    await self._http.shutdown()
        finally:
            await self._channel.close()

    async def _read_loop(self) -> None:
        while True:
            try:
                raw = await self._channel.receive()
            except ChannelClosed as exc:
                log.debug("connection closed: %s", exc.reason)
                return
            try:
                await self._handle_input(raw)
            except _CloseConnection as exc:
                await self._close_after(exc)
                return

    async def _eager_loop(self, channel: EagerInput) -> None:
        """The connection's task under eager input: it handles what the channel's
        callback could not (a handler that waits, the messages queued behind it)."""
        loop = asyncio.get_running_loop()
        self._eager_channel = channel
        channel.on_input = self._on_input
        try:
            while True:
                if self._closing is not None:
                    await self._close_after(self._closing)
                    return
                if self._carry_on is not None:
                    step, self._carry_on = self._carry_on, None
                    try:
                        await step
                    except _CloseConnection as exc:
                        await self._close_after(exc)
                        return
                    continue
                raw = channel.take()
                if raw is not None:
                    try:
                        await self._handle_input(raw)
                    except _CloseConnection as exc:
                        await self._close_after(exc)
                        return
                    continue
                if channel.end_reason is not None:
                    log.debug("connection closed: %s", channel.end_reason)
                    return
                self._wakeup = loop.create_future()
                self._eager_ready = True
                try:
                    await self._wakeup
                finally:
                    self._eager_ready = False
                    self._wakeup = None
        finally:
            channel.on_input = None

    def _on_input(self) -> None:
        """The channel's callback: handle what arrived now if the connection is idle."""
        if not self._eager_ready:
            return  # the connection's task is busy (or this is a nested call)
        self._eager_ready = False
        channel = self._eager_channel
        assert channel is not None
        while (raw := channel.take()) is not None:
            try:
                self._carry_on = _start_eagerly(self._handle_input(raw))
            except _CloseConnection as exc:
                self._closing = exc
            except Exception as exc:  # a bug must not escape into the transport
                log.exception("internal error handling a message")
                self._closing = _CloseConnection(f"internal error: {exc}")
            if self._carry_on is not None or self._closing is not None:
                break
        if self._carry_on is None and self._closing is None and channel.end_reason is None:
            self._eager_ready = True
            return
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _handle_input(self, raw: bytes | str | MalformedFrame) -> None:
        """Answer one received message; raises :class:`_CloseConnection`."""
        if isinstance(raw, MalformedFrame):
            await self._send_malformed(raw.detail)
            return
        try:
            message = parse_message(raw)
        except MalformedMessage as exc:
            await self._send_malformed(str(exc))
            return
        if isinstance(message, Request):
            await self._handle_request(message)
        elif isinstance(message, Notification):
            self._handle_notification(message)
        elif isinstance(message, Response | ErrorResponse):
            raise _CloseConnection(f"unexpected response from client for request id {message.id!r}")

    async def _close_after(self, exc: _CloseConnection) -> None:
        log.warning("closing exec-server connection after protocol error: %s", exc)
        await self._channel.close(str(exc))

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

    async def _handle_request(self, req: Request) -> None:
        try:
            route = ROUTES.get(req.method)
            if route is None:
                raise MethodNotFound(req.method)
            if route.params_type is None:
                # Lifecycle first, then the (unit) params, as Codex checks them.
                self._check_ready(route.family)
                decode_unit_params(req.params)
                params: Any = None
            else:
                params = decode_params(req.params, route.params_type)
                if route.mode is Mode.READY_PATHS:
                    _note_era(self._check_ready(route.family), params)
                elif route.mode is Mode.READY:
                    self._check_ready(route.family)
            result = await route.handler(self, req.id, params)
        except RpcError as err:
            await self._send(encode_error(req.id, err))
            return
        except Exception as exc:  # a handler bug must not kill the connection
            log.exception("internal error handling %s", req.method)
            await self._send(encode_error(req.id, InternalError(f"internal error: {exc}")))
            return
        if result is not None:
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

    def _session_lease(self) -> Lease:
        """The lease of a connection that passed the lifecycle check."""
        assert self._lease is not None
        return self._lease

    def _session(self) -> Session:
        return self._session_lease().session

    def _park(self, request_id: RequestId, lease: Lease, params: m.ProcessReadParams) -> None:
        assert self._background is not None
        self._background.create_task(self._long_poll(request_id, lease, params))

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
