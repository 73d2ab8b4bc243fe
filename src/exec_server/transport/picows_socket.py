"""A relay client websocket on picows: frames parsed and masked in C, one copy per frame.

The environment's socket to the rendezvous carries every byte of process output, and as
a websocket *client* it must mask each frame (RFC 6455). aiohttp's client copies a frame
twice to mask it (into a ``bytearray``, then joined behind the header) in Python-driven
code; picows masks while copying into its write buffer, in C (SIMD), and parses inbound
frames in C without a task switch per message. Measured in ``benchmarks/relay_bench.py``
(CPU seconds per process; ``benchmarks/README.md``).

:class:`PicowsRelaySocket` offers the part of aiohttp's websocket API that
:class:`~exec_server.transport.relay_connection.RelayConnection` and
:class:`~exec_server.transport.websocket.Keepalive` use (``receive``, ``send_frame``,
``ping``, ``pong``, ``close``, ``close_code``, ``exception``, ``protocol``, ``closed``),
so the relay adapter drives either kind of socket unchanged. Pings from the peer are
answered by picows; our pings come from the ``Keepalive``.

Limits: a frame over ``max_message_bytes`` fails the socket (picows closes it with
1009). Inbound frames the reader has not taken yet are bounded by the relay's own flow
control (acks stop at the receive window); ``send_frame`` waits while the kernel's send
buffer is full (the transport paused writing), so the writer never queues unboundedly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import picows
from aiohttp import WSMessage, WSMsgType

from .websocket import Keepalive, WebSocketConnectError

__all__ = ["HEADROOM", "PicowsRelaySocket", "dial_picows_relay_socket"]

_P_BINARY = picows.WSMsgType.BINARY
_P_TEXT = picows.WSMsgType.TEXT
_P_PING = picows.WSMsgType.PING
_P_PONG = picows.WSMsgType.PONG
_P_CLOSE = picows.WSMsgType.CLOSE
_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)

HEADROOM = 14
"""Free bytes picows needs in front of a message it frames in place (the longest
websocket header: 2 + 8 length bytes + a 4-byte mask)."""


class PicowsRelaySocket(picows.WSListener):
    """One picows client socket, read as aiohttp's ``ClientWebSocketResponse`` is."""

    def __init__(self) -> None:
        super().__init__()
        self._transport: picows.WSTransport | None = None
        self._inbox: deque[WSMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self.close_code: int | None = None
        self.protocol: str | None = None
        self._on_binary: Callable[[bytes], None] | None = None
        self._on_text: Callable[[str], None] | None = None
        self._keepalive: Keepalive | None = None

    # --- picows callbacks (on the event loop) -----------------------------------------

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport
        self.protocol = transport.response.headers.get("Sec-WebSocket-Protocol")

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        keepalive = self._keepalive
        if keepalive is not None:
            keepalive.heard_count += 1
        if kind is _P_BINARY:
            data = frame.get_payload_as_bytes()
            if self._on_binary is not None:
                self._on_binary(data)
            else:
                self._push(WSMessage(WSMsgType.BINARY, data, None))
        elif kind is _P_TEXT:
            text = frame.get_payload_as_utf8_text()
            if self._on_text is not None:
                self._on_text(text)
            else:
                self._push(WSMessage(WSMsgType.TEXT, text, None))
        elif kind is _P_PONG:
            if keepalive is not None:
                return  # counted above: nobody needs the message
            self._push(WSMessage(WSMsgType.PONG, frame.get_payload_as_bytes(), None))
        elif kind is _P_CLOSE:
            self.close_code = int(frame.get_close_code().value)
            self._push(WSMessage(WSMsgType.CLOSE, self.close_code, frame.get_close_reason()))
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        # PING is answered by picows (enable_auto_pong); fragments never come from our peers

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._closed = True
        if self.close_code is None:
            self.close_code = int(picows.WSCloseCode.ABNORMAL_CLOSURE.value)
        self._writable.set()
        self._push(_CLOSED)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _push(self, message: WSMessage) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver_to(
        self,
        on_binary: Callable[[bytes], None],
        on_text: Callable[[str], None],
        keepalive: Keepalive,
    ) -> None:
        """Hand binary and text messages to the callbacks as they are parsed, instead
        of through :meth:`receive`, which then returns only the close; count every
        message heard for ``keepalive``. The callbacks run inside picows' data callback:
        an exception in them drops the socket (picows disconnects)."""
        self._on_binary = on_binary
        self._on_text = on_text
        self._keepalive = keepalive

    # --- the aiohttp-like surface -------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def exception(self) -> BaseException | None:
        return None

    async def receive(self) -> WSMessage:
        """The next message; ``CLOSED`` forever once the socket is gone."""
        while not self._inbox:
            if self._closed:
                return _CLOSED
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if message is _CLOSED:
            self._inbox.appendleft(message)
        return message

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        """Send one frame (masked, one copy); wait while the transport is paused."""
        transport = self._transport
        if transport is None or self._closed:
            raise ConnectionResetError("relay websocket is closed")
        transport.send(_P_BINARY if opcode is WSMsgType.BINARY else _P_TEXT, message)
        if not self._writable.is_set():
            await self._writable.wait()
            if self._closed:
                raise ConnectionResetError("relay websocket is closed")

    async def send_relay_frame(self, frame: bytes | bytearray | memoryview) -> None:
        """Send one binary message: a ``bytearray`` must start with :data:`HEADROOM`
        free bytes, where picows writes the websocket header, and is masked in place
        (no copy; the bytearray is spent); ``bytes`` and a ``memoryview`` are copied
        and masked in one pass (picows' client-side ``send``). Then waits while the
        transport is paused."""
        self.send_now(frame)
        if not self._writable.is_set():
            await self._writable.wait()
            if self._closed:
                raise ConnectionResetError("relay websocket is closed")

    @property
    def writable(self) -> bool:
        """Open, and the transport takes writes without queueing past its high mark."""
        return self._writable.is_set() and not self._closed

    def send_now(self, frame: bytes | bytearray | memoryview) -> None:
        """:meth:`send_relay_frame` without waiting: for a caller that checked
        :attr:`writable` (the write pauses the transport if it fills the buffer)."""
        transport = self._transport
        if transport is None or self._closed:
            raise ConnectionResetError("relay websocket is closed")
        if type(frame) is bytearray:
            transport.send_reuse_external_bytearray(_P_BINARY, frame, HEADROOM)
        else:
            transport.send(_P_BINARY, frame)

    async def ping(self, message: bytes = b"") -> None:
        if self._transport is None or self._closed:
            raise ConnectionResetError("relay websocket is closed")
        self._transport.send(_P_PING, message)

    async def pong(self, message: bytes = b"") -> None:
        if self._transport is not None and not self._closed:
            self._transport.send(_P_PONG, message)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        transport = self._transport
        if transport is None or self._closed:
            return False
        with contextlib.suppress(Exception):
            transport.send_close(picows.WSCloseCode(code), message)
        transport.disconnect()
        await transport.wait_disconnected()
        return True


async def dial_picows_relay_socket(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = 64 * 1024 * 1024,
    protocols: Sequence[str] = (),
) -> PicowsRelaySocket:
    """Dial a relay websocket with picows (no compression offered, ``protocols`` offered
    as subprotocols); errors become :class:`WebSocketConnectError`, worded as the
    aiohttp dialer words them."""
    extra = dict(headers or {})
    if protocols:
        extra["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    try:
        async with asyncio.timeout(timeout_s):
            _, listener = await picows.ws_connect(
                PicowsRelaySocket,
                url,
                websocket_handshake_timeout=timeout_s,
                enable_auto_pong=True,
                max_frame_size=max_message_bytes,
                extra_headers=extra,
                max_redirects=0,
                read_buffer_init_size=256 * 1024,
                logger_name="relay",
            )
    except TimeoutError:
        raise WebSocketConnectError(
            f"timed out connecting to exec-server websocket `{url}` after {timeout_s}s"
        ) from None
    except (picows.WSError, OSError, ValueError) as exc:
        raise WebSocketConnectError(
            f"failed to connect to exec-server websocket `{url}`: {exc}"
        ) from None
    assert isinstance(listener, PicowsRelaySocket)
    return listener
