"""The harness side of a local websocket: what the SDK dials for ``ws://`` URLs.

Built on picows, not on the aiohttp stack the servers use, because this is the side
people wait for: picows parses frames in C and hands each payload over as one
``bytes`` object, and it imports in a tenth of the time of aiohttp's client (which
builds its SSL contexts at import). Measured side by side in
``benchmarks/sdk_bench.py``.

Frames: we send Text frames (what Codex sends and expects) and accept Text or
Binary, reassembling fragmented messages; payloads are handed up as ``bytes``
without a UTF-8 decode (the JSON decoder validates what it reads). Pings are
answered by picows. A Close from the server is echoed and ends the channel with
its code; redirects are refused (a bearer token must not travel to another host).
permessage-deflate is never offered (see :mod:`exec_server.transport.websocket`).

Limits: a message above ``max_message_bytes`` fails the connection with close code
1009. Received messages that the reader has not taken yet are bounded: above
:data:`MAX_INBOX_BYTES` the socket stops reading until the reader catches up, so a
slow consumer pushes back on the server instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from http import HTTPStatus

import picows

from .channel import DEFAULT_MAX_MESSAGE_BYTES, ChannelClosed
from .read_inbox import ReadInbox, set_socket_reading

log = logging.getLogger(__name__)

#: Received bytes buffered for the reader before the socket stops reading.
MAX_INBOX_BYTES = 16 * 1024 * 1024
#: How long ``close`` waits for the server's Close before dropping the socket.
CLOSE_TIMEOUT_S = 2.0

_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE


class WebSocketDialError(ConnectionError):
    """Dialing failed: refused, timed out, or the upgrade was answered with an HTTP error.

    ``status`` is that HTTP status (``None`` when no HTTP answer came). ``transient``
    says whether dialing again later may succeed.
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class WebSocketClientChannel:
    """A :class:`~exec_server.transport.channel.MessageChannel` over a picows socket."""

    transport_name = "websocket"
    parse_error_prefix = "failed to parse websocket JSON-RPC message from exec-server websocket"

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        self._transport: picows.WSTransport | None = None
        self._inbox: ReadInbox[bytes] = ReadInbox(MAX_INBOX_BYTES, len, self._pause_reading)
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._end_reason: str | None = None

    # --- called by the listener (picows callbacks, on the event loop) ----------------

    def _connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport

    def _frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if frame.payload_size > self._max_message_bytes:
            self._too_big(transport)
        elif kind in (_TEXT, _BINARY):
            if frame.fin and not self._parts:
                self._deliver(frame.get_payload_as_bytes())
            else:
                self._parts = []
                self._parts_bytes = 0
                self._append(transport, frame)
        elif kind == _CONTINUATION:
            self._append(transport, frame)
        elif kind == _CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_reason()
            self._end(f"websocket closed (code {int(code.value)}{': ' + reason if reason else ''})")
            transport.send_close(code, frame.get_close_message())
            transport.disconnect()

    def _append(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self._parts_bytes += frame.payload_size
        if self._parts_bytes > self._max_message_bytes:
            self._too_big(transport)
            return
        self._parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            message = b"".join(self._parts)
            self._parts = []
            self._parts_bytes = 0
            self._deliver(message)

    def _too_big(self, transport: picows.WSTransport) -> None:
        self._parts = []
        self._end(f"message larger than {self._max_message_bytes} bytes from exec-server")
        if not transport.is_close_frame_sent:
            transport.send_close(picows.WSCloseCode.MESSAGE_TOO_BIG, b"message too big")
        transport.disconnect()

    def _deliver(self, message: bytes) -> None:
        self._inbox.put(message)
        self._wake()

    def _disconnected(self) -> None:
        self._end("websocket closed")
        self._writable.set()

    def _end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self, pause: bool) -> None:
        set_socket_reading(self._transport, pause)

    # --- MessageChannel -------------------------------------------------------------

    async def receive(self) -> bytes:
        while not self._inbox:
            if self._end_reason is not None:
                raise ChannelClosed(self._end_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.take()
        assert message is not None
        return message

    async def send(self, message: bytes) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        transport = self._transport
        if self._end_reason is not None or transport is None or transport.is_disconnected:
            raise ChannelClosed(self._end_reason or "websocket closed")
        transport.send(_TEXT, message)

    async def close(self, reason: str | None = None) -> None:
        self._end(reason or "closed")
        transport = self._transport
        if transport is None:
            return
        if not transport.is_disconnected:
            if not transport.is_close_frame_sent:
                transport.send_close(picows.WSCloseCode.OK, (reason or "").encode()[:120])
            transport.disconnect()
        # Also collects the error picows keeps when it failed the connection itself.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await transport.wait_disconnected()


class _Listener(picows.WSListener):
    """picows callbacks, forwarded to the channel."""

    def __init__(self, channel: WebSocketClientChannel) -> None:
        self.channel = channel

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.channel._connected(transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.channel._frame(transport, frame)

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.channel._disconnected()

    def pause_writing(self) -> None:
        self.channel._writable.clear()

    def resume_writing(self) -> None:
        self.channel._writable.set()


async def connect_websocket_client(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> WebSocketClientChannel:
    """Dial ``url`` and return the channel; errors are :class:`WebSocketDialError`
    worded as Codex words them."""
    channel = WebSocketClientChannel(max_message_bytes)
    try:
        async with asyncio.timeout(timeout_s):
            await picows.ws_connect(
                lambda: _Listener(channel),
                url,
                websocket_handshake_timeout=timeout_s,
                max_frame_size=max_message_bytes,
                extra_headers=dict(headers) if headers else None,
                max_redirects=0,
                enable_auto_pong=True,
                logger_name=log,
            )
    except TimeoutError:
        raise WebSocketDialError(
            f"timed out connecting to exec-server websocket `{url}` after {timeout_s}s",
            transient=True,
        ) from None
    except picows.WSHandshakeError as exc:
        response = exc.response
        status = response.status if response is not None else None
        code = int(status) if status is not None else None
        detail = f"HTTP {code} {_phrase(code)}".rstrip() if code is not None else str(exc)
        raise WebSocketDialError(
            f"failed to connect to exec-server websocket `{url}`: {detail}",
            status=code,
            transient=code is None or code >= 500 or code in (408, 429),
        ) from None
    except (OSError, picows.WSError, ValueError) as exc:
        raise WebSocketDialError(
            f"failed to connect to exec-server websocket `{url}`: {exc}",
            transient=isinstance(exc, OSError),
        ) from None
    return channel


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
