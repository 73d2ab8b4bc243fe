"""JSON-RPC over a websocket: one message per websocket message.

Server and client sockets (aiohttp) are both wrapped by :class:`WebSocketChannel`.
We write Text frames and accept Text or Binary frames carrying JSON, as Codex does.
permessage-deflate is never negotiated: the Codex 0.133 server drops handshakes that
offer it, and on this machine it cost ~4.5 ms per 64 KiB round trip.

Limits: an inbound message above ``max_message_bytes`` makes aiohttp fail the
socket with close code 1009 ("message too big"); the session behind it is detached,
not lost, and can be resumed from a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiohttp import ClientError, ClientSession, ClientWebSocketResponse, WSMsgType, web
from aiohttp.client_exceptions import ClientConnectionResetError

from .channel import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from .channel import ChannelClosed, MalformedFrame

log = logging.getLogger(__name__)

AnyWebSocket = web.WebSocketResponse | ClientWebSocketResponse


class WebSocketChannel:
    """A :class:`~exec_server.transport.channel.MessageChannel` over an aiohttp socket."""

    transport_name = "websocket"

    def __init__(self, ws: AnyWebSocket, peer: str | None = None) -> None:
        self._ws = ws
        where = f" {peer}" if peer else ""
        self.parse_error_prefix = (
            f"failed to parse websocket JSON-RPC message from exec-server websocket{where}"
        )
        self._close_reason: str | None = None

    async def receive(self) -> bytes | str | MalformedFrame:
        while True:
            msg = await self._ws.receive()
            if msg.type is WSMsgType.TEXT:
                text: str = msg.data
                return text
            if msg.type is WSMsgType.BINARY:
                payload: bytes = msg.data
                return payload
            if msg.type in (WSMsgType.PING, WSMsgType.PONG):
                continue
            if msg.type is WSMsgType.ERROR:
                exc = self._ws.exception()
                reason = f"websocket error: {exc}" if exc else "websocket error"
                log.warning("closing websocket connection: %s", reason)
                raise ChannelClosed(reason)
            # CLOSE, CLOSING, CLOSED
            raise ChannelClosed(self._close_reason or _close_text(self._ws))

    async def send(self, message: bytes) -> None:
        if self._ws.closed:
            raise ChannelClosed(self._close_reason or "websocket closed")
        try:
            await self._ws.send_frame(message, WSMsgType.TEXT)
        except (ClientConnectionResetError, ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(f"websocket send failed: {exc}") from None

    async def close(self, reason: str | None = None) -> None:
        if self._close_reason is None:
            self._close_reason = reason or "closed"
        if not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.close(message=(reason or "").encode()[:120])


def _close_text(ws: AnyWebSocket) -> str:
    code = ws.close_code
    return f"websocket closed (code {code})" if code is not None else "websocket closed"


class WebSocketConnectError(ConnectionError):
    """Connecting to a websocket URL failed (refused, timed out, or HTTP error)."""


class ClientWebSocketChannel(WebSocketChannel):
    """A client websocket channel that owns its aiohttp session."""

    def __init__(self, ws: ClientWebSocketResponse, session: ClientSession) -> None:
        super().__init__(ws)
        self._session = session

    async def close(self, reason: str | None = None) -> None:
        await super().close(reason)
        await self._session.close()


async def dial_websocket(
    session: ClientSession,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    heartbeat_s: float | None = None,
) -> ClientWebSocketResponse:
    """Open a websocket (never offering compression); errors become
    :class:`WebSocketConnectError` with Codex's wording."""
    try:
        async with asyncio.timeout(timeout_s):
            return await session.ws_connect(
                url,
                compress=0,
                max_msg_size=max_message_bytes,
                autoping=True,
                headers=dict(headers or {}),
                heartbeat=heartbeat_s,
            )
    except TimeoutError:
        raise WebSocketConnectError(
            f"timed out connecting to exec-server websocket `{url}` after {timeout_s}s"
        ) from None
    except (ClientError, OSError, ValueError) as exc:
        raise WebSocketConnectError(
            f"failed to connect to exec-server websocket `{url}`: {exc}"
        ) from None


async def connect_websocket(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ClientWebSocketChannel:
    """Dial ``url`` and wrap the socket as a channel."""
    session = ClientSession()
    try:
        ws = await dial_websocket(
            session,
            url,
            headers=headers,
            timeout_s=timeout_s,
            max_message_bytes=max_message_bytes,
        )
    except BaseException:
        await session.close()
        raise
    return ClientWebSocketChannel(ws, session)
