"""One JSON-RPC connection (or relay stream) to a session: the connection processor.

It reads messages from a :class:`MessageChannel`, enforces the initialize /
initialized lifecycle (:class:`Lifecycle`), dispatches requests through the method
table (:mod:`.routes`) to the session's process manager, the shared filesystem
handler or the connection's own state, and writes responses and notifications back.
It does not know which transport it runs on.

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
import enum
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..concurrency import Stopped, unless_set
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
    output_notification_parts,
    parse_message,
)
from ..protocol.path_uri import speaks_uri
from ..relay.frame_encoder import message_with_headroom
from ..transport.channel import (
    ChannelClosed,
    MalformedFrame,
    MessageChannel,
    MessageTooLargeForTransport,
)
from ..transport.relay_channel import RelayStreamChannel
from .environment_info import environment_info
from .file_handles import FileHandleTable
from .fs_handler import FileSystemHandler
from .http_handler import HttpHandler
from .missing_path_watch import MissingPathWatch
from .process_manager import ProcessManager
from .routes import ROUTES, Mode
from .session import Lease, SessionRegistry

log = logging.getLogger(__name__)

TAKEN_OVER_MESSAGE = "session has been resumed by another connection"


class Lifecycle(enum.Enum):
    """Where a connection is in Codex's handshake."""

    #: Nothing yet: only ``initialize`` is allowed.
    AWAITING_INITIALIZE = enum.auto()
    #: ``initialize`` answered (the session is held); waiting for ``initialized``.
    AWAITING_INITIALIZED = enum.auto()
    #: Handshake done: every method is allowed.
    READY = enum.auto()


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
        self.fs = fs
        self._lease: Lease | None = None
        self.lifecycle = Lifecycle.AWAITING_INITIALIZE
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
        self.http = HttpHandler(self._reply, self._send_notification)
        self.handles = FileHandleTable(fs)
        self.watch = MissingPathWatch(self._send_notification)

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
                    await self.watch.close()
                    await self.handles.close_all()
                    await self.http.shutdown()
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
        try:
            await self._channel.send(data)
        except ChannelClosed as exc:
            log.debug("dropped a message for a closed connection: %s", exc.reason)

    async def _send_notification(self, method: str, params: m.Message) -> None:
        channel = self._channel
        if type(params) is m.ProcessOutputNotification and type(channel) is RelayStreamChannel:
            # Most of the bytes sent: built once behind room for the relay frame's head,
            # which the relay writer fills in, instead of joined and then copied again.
            message = message_with_headroom(*output_notification_parts(method, params))
            try:
                await channel.send(message)
            except ChannelClosed as exc:
                log.debug("dropped a message for a closed connection: %s", exc.reason)
            return
        await self._send(encode_notification(method, params))

    def _handle_notification(self, note: Notification) -> None:
        if note.method != m.INITIALIZED:
            raise _CloseConnection(f"unexpected notification `{note.method}`")
        if self.lifecycle is Lifecycle.AWAITING_INITIALIZE:
            raise _CloseConnection("received `initialized` before `initialize`")
        self.lifecycle = Lifecycle.READY

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
            await self._channel.send(data)
        except ChannelClosed as exc:
            log.debug("dropped a response for a closed connection: %s", exc.reason)
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
        outcome: m.Message | RpcError
        try:
            outcome = await unless_set(lease.revoked, lease.session.processes.read(params))
        except Stopped:
            outcome = InvalidRequest(TAKEN_OVER_MESSAGE)
        except RpcError as err:
            outcome = err
        await self._reply(request_id, outcome)

    # -- what handlers reach (routes.RequestContext) ------------------------------------

    @property
    def processes(self) -> ProcessManager:
        assert self._lease is not None, "the handshake is done before a handler runs"
        return self._lease.session.processes

    def initialize(self, params: m.InitializeParams) -> m.InitializeResult:
        if self.lifecycle is not Lifecycle.AWAITING_INITIALIZE:
            raise InvalidRequest("initialize may only be sent once per connection")
        if params.resume_session_id is None:
            self._lease = self._registry.create(self._send_notification)
        else:
            self._lease = self._registry.resume(params.resume_session_id, self._send_notification)
        self.lifecycle = Lifecycle.AWAITING_INITIALIZED
        return m.InitializeResult(
            session_id=self._lease.session.id, environment_info=environment_info()
        )

    def park_read(self, request_id: RequestId, params: m.ProcessReadParams) -> None:
        assert self._background is not None and self._lease is not None
        self._background.create_task(self._long_poll(request_id, self._lease, params))

    def _check_ready(self, family: str) -> Lease:
        lifecycle = self.lifecycle
        if lifecycle is Lifecycle.AWAITING_INITIALIZE:
            raise InvalidRequest(f"client must call initialize before using {family} methods")
        if lifecycle is Lifecycle.AWAITING_INITIALIZED:
            raise InvalidRequest(f"client must send initialized before using {family} methods")
        assert self._lease is not None
        if self._lease.revoked.is_set():
            raise InvalidRequest(TAKEN_OVER_MESSAGE)
        return self._lease


def _note_era(lease: Lease, params: object) -> None:
    """Mark the session as a Codex 0.171 one once a request of it speaks URIs."""
    session = lease.session
    if session.speaks_uris:
        return
    kind = type(params)
    names = _PATH_FIELDS.get(kind)
    if names is None:
        fields = getattr(kind, "__struct_fields__", ())
        names = _PATH_FIELDS[kind] = tuple(n for n in ("path", "cwd", "source_path") if n in fields)
    for name in names:
        value = getattr(params, name)
        if isinstance(value, str) and speaks_uri(value):
            session.speaks_uris = True
            return


#: Per params type, its fields that hold a path.
_PATH_FIELDS: dict[type, tuple[str, ...]] = {}
