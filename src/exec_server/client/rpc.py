"""Client-side JSON-RPC: request/response matching and notification dispatch.

Requests get integer ids from 1, like the Rust client. Responses are matched by id
and may arrive in any order. Notifications are handed, still raw, to one callback
that routes it and may return an awaitable: the reader then waits for it before
reading on, which is how a slow consumer pushes back on the server.
``process/output`` notifications, most of the bytes a server sends, take a shorter
path (:func:`~exec_server.client.events.decode_output`) to their own callback.
When the channel ends, every pending call fails with :class:`TransportClosed` and
so does every later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from ..protocol.jsonrpc import (
    ErrorResponse,
    MalformedMessage,
    Notification,
    Request,
    Response,
    encode_notification,
    encode_request,
    parse_message,
)
from ..transport.channel import ChannelClosed, MalformedFrame, MessageChannel
from .errors import ServerError, TransportClosed
from .events import OutputCallback, decode_output

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Routes one notification; may return an awaitable to push back on the reader.
NotificationCallback = Callable[[str, msgspec.Raw], Awaitable[None] | None]
DisconnectCallback = Callable[[str], None]


class RpcClient:
    """Owns one channel's reader task; call :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        channel: MessageChannel,
        on_notification: NotificationCallback,
        on_disconnect: DisconnectCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        self._channel = channel
        self._on_notification = on_notification
        self._on_disconnect = on_disconnect
        self._on_output = on_output
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[msgspec.Raw]] = {}
        self._methods: dict[int | str, str] = {}
        self._closed_reason: str | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def channel(self) -> MessageChannel:
        return self._channel

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(self, method: str, params: Any, result_type: type[T]) -> T:
        """Send a request and decode its result; raises ServerError/TransportClosed."""
        if self._closed_reason is not None:
            raise TransportClosed(self._closed_reason)
        request_id = next(self._ids)
        future: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._methods[request_id] = method
        try:
            try:
                await self._channel.send(encode_request(request_id, method, params))
            except ChannelClosed as exc:
                self._fail_all(_disconnect_message(exc.reason))
            raw = await future
        finally:
            self._pending.pop(request_id, None)
            self._methods.pop(request_id, None)
        return msgspec.json.decode(raw, type=result_type)

    async def notify(self, method: str, params: Any = None) -> None:
        if self._closed_reason is not None:
            raise TransportClosed(self._closed_reason)
        try:
            await self._channel.send(encode_notification(method, params))
        except ChannelClosed as exc:
            self._fail_all(_disconnect_message(exc.reason))
            raise TransportClosed(_disconnect_message(exc.reason)) from None

    async def _read_loop(self) -> None:
        reason: str | None = None
        on_output = self._on_output
        try:
            while True:
                try:
                    raw = await self._channel.receive()
                except ChannelClosed as exc:
                    reason = exc.reason
                    return
                if on_output is not None and type(raw) is bytes:
                    output = decode_output(raw)
                    if output is not None:
                        waiter = on_output(*output)
                        if waiter is not None:
                            await waiter
                        continue
                reason = await self._dispatch(raw)
                if reason is not None:
                    return
        finally:
            self._fail_all(_disconnect_message(reason))
            with contextlib.suppress(Exception):
                await self._channel.close(reason)

    async def _dispatch(self, raw: bytes | str | MalformedFrame) -> str | None:
        """Handle one message; returns why the connection must end, if it must."""
        if isinstance(raw, MalformedFrame):
            return f"malformed frame from exec-server: {raw.detail}"
        try:
            message = parse_message(raw)
        except MalformedMessage as exc:
            return f"malformed message from exec-server: {exc}"
        if isinstance(message, Response):
            fut = self._pending.get(message.id)
            if fut is not None and not fut.done():
                fut.set_result(message.result)
        elif isinstance(message, ErrorResponse):
            fut = self._pending.get(message.id)
            err = message.error
            if fut is not None and not fut.done():
                method = self._methods.get(message.id, "")
                fut.set_exception(ServerError(err.code, err.message, err.data, method))
            elif message.id == -1:
                log.warning("exec-server reported a protocol error: %s", err.message)
        elif isinstance(message, Notification):
            try:
                waiter = self._on_notification(message.method, message.params)
                if waiter is not None:
                    await waiter
            except Exception:
                log.exception("notification handler failed for %s", message.method)
        elif isinstance(message, Request):
            return f"exec-server sent an unexpected request `{message.method}`"
        return None

    def _fail_all(self, message: str) -> None:
        first = self._closed_reason is None
        if first:
            self._closed_reason = message
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(TransportClosed(message))
        if first and self._on_disconnect is not None:
            self._on_disconnect(message)

    async def close(self) -> None:
        self._fail_all(_disconnect_message("client closed"))
        await self._channel.close("client closed")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _disconnect_message(reason: str | None) -> str:
    base = "exec-server transport disconnected"
    return f"{base}: {reason}" if reason else base
