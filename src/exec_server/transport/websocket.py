"""JSON-RPC over a websocket: one message per websocket message.

Server and client sockets (aiohttp) are both wrapped by :class:`WebSocketChannel`.
We write Text frames and accept Text or Binary frames carrying JSON, as Codex does.
permessage-deflate is never negotiated: the Codex 0.133 server drops handshakes that
offer it, and on this machine it cost ~4.5 ms per 64 KiB round trip.

Limits: an inbound message above ``max_message_bytes`` makes aiohttp fail the
socket with close code 1009 ("message too big"); the session behind it is detached,
not lost, and can be resumed from a new connection.

Relay sockets (harness and environment sides, and the rendezvous) run a
:class:`Keepalive`: a ping every ``ping_interval_s`` (30 s, as Codex's), and the socket
is given up (``pong_timeout``) once nothing, not even a pong, was heard for
``pong_timeout_s`` (60 s, Codex's pong watchdog). Those sockets are opened with
``autoping=False`` so their reader sees pongs and answers pings itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import ClientError, ClientSession, ClientWebSocketResponse, WSMsgType, web
from aiohttp.client_exceptions import ClientConnectionResetError

from .channel import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from .channel import ChannelClosed, MalformedFrame

log = logging.getLogger(__name__)

AnyWebSocket = web.WebSocketResponse | ClientWebSocketResponse

DEFAULT_PING_INTERVAL_S = 30.0
"""Keepalive ping interval of relay sockets (Codex E1+ pings every 30 s)."""

DEFAULT_PONG_TIMEOUT_S = 60.0
"""Silence (no pong, no message) after which a relay socket is given up (Codex's pong
watchdog waits 60 s)."""

PONG_TIMEOUT = "pong_timeout"
"""Why a socket was given up by its keepalive."""


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """Keepalive of one relay socket; ``ping_interval_s=None`` disables it."""

    ping_interval_s: float | None = DEFAULT_PING_INTERVAL_S
    pong_timeout_s: float = DEFAULT_PONG_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.ping_interval_s is not None and self.ping_interval_s <= 0:
            raise ValueError("ping_interval_s must be positive (or None to disable pings)")
        if self.pong_timeout_s <= 0:
            raise ValueError("pong_timeout_s must be positive")


class Pingable(Protocol):
    """A websocket :class:`Keepalive` can ping (aiohttp's, or the picows relay socket)."""

    async def ping(self, message: bytes = b"") -> None: ...


class Keepalive:
    """Pings one websocket and notices when its peer went silent.

    The socket's reader calls :meth:`heard` for every message (pongs included; a busy
    peer whose pong is queued behind data is alive). :meth:`run` pings every
    ``ping_interval_s`` and returns :data:`PONG_TIMEOUT` once nothing was heard for
    ``pong_timeout_s``; the caller then drops the socket. A dead peer is noticed within
    ``pong_timeout_s`` plus one check interval.
    """

    __slots__ = ("_config", "_ws", "heard_count")

    def __init__(self, ws: Pingable, config: KeepaliveConfig) -> None:
        self._ws = ws
        self._config = config
        self.heard_count = 0
        """Messages received; the reader bumps it (cheaper than reading a clock)."""

    async def run(self) -> str:
        """Ping until the peer is silent for ``pong_timeout_s``; return why it stopped.
        Never returns while pings are disabled (cancel it with the socket)."""
        interval = self._config.ping_interval_s
        if interval is None:
            await asyncio.Future()  # parked until cancelled
            return PONG_TIMEOUT  # pragma: no cover - unreachable
        timeout = self._config.pong_timeout_s
        loop = asyncio.get_running_loop()
        tick = min(interval, timeout / 4)
        last_heard = last_ping = loop.time()
        seen = self.heard_count
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            if self.heard_count != seen:
                seen = self.heard_count
                last_heard = now
            if now - last_heard >= timeout:
                log.info("websocket peer silent for %.0fs: %s", now - last_heard, PONG_TIMEOUT)
                return PONG_TIMEOUT
            if now - last_ping >= interval:
                last_ping = now
                try:
                    await self._ws.ping()
                except (ConnectionError, RuntimeError) as exc:
                    return f"ping failed: {exc}"


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
    autoping: bool = True,
    protocols: Sequence[str] = (),
) -> ClientWebSocketResponse:
    """Open a websocket (never offering compression, offering ``protocols`` as
    subprotocols); errors become :class:`WebSocketConnectError` with Codex's wording.
    Relay sockets pass ``autoping=False`` and run a :class:`Keepalive`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await session.ws_connect(
                url,
                compress=0,
                max_msg_size=max_message_bytes,
                autoping=autoping,
                headers=dict(headers or {}),
                protocols=tuple(protocols),
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
