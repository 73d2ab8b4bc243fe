"""The rendezvous end of one relay websocket, on picows.

Every routed byte crosses two of these sockets, so the path is short: picows parses and
unmasks each inbound frame in C, in its read callback; an environment's frames go
straight from that callback to :meth:`Router.on_environment_message` (no task switch
per message), and so do a harness's while nothing waits
(:meth:`Router.harness_message_now`); a harness frame that must wait for room at the
environment, and every frame after it, goes through a small inbox read by the socket's
own task (:meth:`Router.on_harness_message`; the inbox stops the socket reading while
it is full) until the inbox is empty again. Outbound, :class:`RelaySocket` is the router's
:class:`~exec_server.rendezvous.socket_peer.FrameSink`: a frame is written to the
transport at once (:mod:`~exec_server.rendezvous.frame_writer`: no copy of a large
payload, small frames gathered into one system call) unless the transport is paused.

Behaviour on the wire (as the aiohttp socket this replaces had it): the upgrade is
refused before the 101 with a JSON error (401/403 for the URL, 503 while the node
cannot serve; :mod:`~exec_server.rendezvous.picows_server`); the
:data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL` is agreed when offered; peers'
pings are answered (by picows) and ours come from a
:class:`~exec_server.transport.websocket.Keepalive`; a protocol error closes with 1002
(invalid frame), 1003 (text message) or 1009 (over the size limit, reason "relay message
over the size limit"), counted by reason. A close handshake waits up to
:data:`~exec_server.rendezvous.socket_peer.SOCKET_CLOSE_TIMEOUT_S` for the peer's reply.

Size limit: picows refuses a frame longer than twice ``max_message_bytes`` from its
header (with its own close reason; still 1009 and counted); a longer message than the
limit, but within twice it, is read and then refused with ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import picows

from ..relay.errors import InvalidFrameReason
from ..transport.read_inbox import ReadInbox, set_socket_reading
from ..transport.websocket import Keepalive, KeepaliveConfig
from .errors import SocketProtocolError
from .frame_writer import BINARY_OPCODE, TEXT_OPCODE, FrameWriter
from .router_config import (
    PROTOCOL_ERROR_CLOSE_CODE,
    TOO_BIG_CLOSE_CODE,
    UNSUPPORTED_DATA_CLOSE_CODE,
    ProtocolErrorReason,
)
from .socket_peer import SOCKET_CLOSE_TIMEOUT_S, SocketPeer
from .url_signing import UrlRole

__all__ = ["MAX_INBOX_BYTES", "RelaySocket"]

log = logging.getLogger(__name__)

MAX_INBOX_BYTES = 1024 * 1024
"""Harness messages read but not yet routed before the socket stops reading."""

OVERSIZE_REASON = "relay message over the size limit"

_BINARY = picows.WSMsgType.BINARY
_TEXT = picows.WSMsgType.TEXT
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE
_PING = picows.WSMsgType.PING
_TOO_BIG = picows.WSCloseCode.MESSAGE_TOO_BIG
_PROTOCOL_ERROR = picows.WSCloseCode.PROTOCOL_ERROR


class RelaySocket(picows.WSListener):
    """One accepted relay websocket: picows listener and the router's frame sink.

    ``on_connected`` runs when the 101 is out; the owner then calls :meth:`serve` (in
    the task that owns the socket) with the admitted peer.
    """

    def __init__(
        self,
        role: UrlRole,
        environment_id: str,
        control: bool,
        max_message_bytes: int,
        on_connected: Callable[[RelaySocket], None],
    ) -> None:
        super().__init__()
        self.role = role
        self.environment_id = environment_id
        self.control = control
        self.max_message_bytes = max_message_bytes
        self.close_code: int | None = None
        self.peername: object = None
        self._on_connected = on_connected
        self._transport: picows.WSTransport | None = None
        self._peer: SocketPeer | None = None
        self._direct = False
        """Frames go straight to the router from the read callback: the socket is
        admitted and its inbox is empty (an environment's stays so; a harness' until a
        frame has to wait for room at the environment)."""
        self._on_environment: Callable[[SocketPeer, bytes | memoryview], None] | None = None
        self._harness_now: Callable[[SocketPeer, bytes], bool] | None = None
        self._route_view: Callable[[SocketPeer, memoryview], None] | None = None
        """Set while an environment's whole frames may be routed from picows' buffer:
        direct, no protocol error, no close sent, no fragmented message under way."""
        self._route_bytes: Callable[[SocketPeer, bytes], bool] | None = None
        """The same for a harness' frames (False back: the frame must wait its turn)."""
        self._can_write = False
        """Connected, not paused by the transport's flow control, no close sent."""
        self._inbox: ReadInbox[bytes] = ReadInbox(
            MAX_INBOX_BYTES, len, lambda pause: self._pause_reading(pause)
        )
        self._wake: asyncio.Event = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._fragments: bytearray | None = None
        self._error: SocketProtocolError | None = None
        self._close_sent = False
        self._disconnected = asyncio.Event()
        self._peer_closed = asyncio.Event()
        self.keepalive: Keepalive | None = None
        self._frames: FrameWriter | None = None

    # --- picows callbacks ---------------------------------------------------------------

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport
        self._can_write = self._writable.is_set()
        underlying = transport.underlying_transport
        self.peername = underlying.get_extra_info("peername")
        sock = underlying.get_extra_info("socket")
        self._frames = FrameWriter(underlying, sock.fileno() if sock is not None else -1)
        self._on_connected(self)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        keepalive = self.keepalive
        if keepalive is not None:
            keepalive.heard_count += 1
        kind = frame.msg_type
        if (
            kind is _BINARY
            and frame.fin
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
            and frame.payload_size <= self.max_message_bytes
        ):
            # The routed frame's path (whole binary frames of an admitted socket).
            route_view = self._route_view
            if route_view is not None:
                assert self._peer is not None
                try:
                    route_view(self._peer, frame.get_payload_as_memoryview())
                except SocketProtocolError as exc:
                    self._fail(exc)
                return
            route_bytes = self._route_bytes
            if route_bytes is not None:
                assert self._peer is not None
                data = frame.get_payload_as_bytes()
                try:
                    if not route_bytes(self._peer, data):
                        self._queue(data)  # waits for room at the environment
                except SocketProtocolError as exc:
                    self._fail(exc)
                return
        self._other_frame(transport, frame, kind)

    def _other_frame(
        self, transport: picows.WSTransport, frame: picows.WSFrame, kind: object
    ) -> None:
        """Every frame that did not take the routed frame's path: control frames,
        fragments, protocol errors, frames before admission or after a close."""
        if self._close_sent or self._error is not None:
            if kind is _CLOSE:
                self._peer_closed.set()
                transport.disconnect()
            return
        if (frame.rsv1 or frame.rsv2 or frame.rsv3) and kind is not _CLOSE:
            # No extension is ever negotiated on a relay socket (RFC 6455 5.2).
            self._fail(_protocol_error("reserved bits set without a negotiated extension"))
            return
        if kind in (_BINARY, _TEXT) and self._fragments is not None:
            # A new message before the fragmented one ended (RFC 6455 5.4).
            self._fail(_protocol_error("a new message inside a fragmented one"))
            return
        if kind is _BINARY and frame.fin and self._fragments is None:
            self._deliver(frame.get_payload_as_bytes())
        elif kind is _CLOSE:
            self._closed_by_peer(transport, frame)
        elif kind is _TEXT and self._fragments is None:
            self._fail(
                SocketProtocolError(
                    UNSUPPORTED_DATA_CLOSE_CODE,
                    ProtocolErrorReason.TEXT_FRAME,
                    "text message on a binary relay socket",
                )
            )
        elif kind in (_BINARY, _CONTINUATION):
            self._append(frame)
        # PING is answered by picows; PONG only counts as heard

    def _closed_by_peer(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.close_code = int(frame.get_close_code().value)
        self._peer_closed.set()
        self._close_sent = True
        self._update_paths()
        transport.send_close(frame.get_close_code(), frame.get_close_message())
        transport.disconnect()

    def _append(self, frame: picows.WSFrame) -> None:
        """A fragment of a binary message (our peers do not fragment; others may)."""
        if frame.msg_type is _BINARY:
            self._fragments = bytearray()
            self._update_paths()
        elif self._fragments is None:
            self._fail(
                SocketProtocolError(
                    PROTOCOL_ERROR_CLOSE_CODE,
                    InvalidFrameReason.UNDECODABLE.value,
                    "continuation frame without a message to continue",
                )
            )
            return
        self._fragments += frame.get_payload_as_memoryview()
        if len(self._fragments) > self.max_message_bytes:
            self._fail(_oversize())
        elif frame.fin:
            data = bytes(self._fragments)
            self._fragments = None
            self._update_paths()
            self._deliver(data)

    def _update_paths(self) -> None:
        """Recompute which of the routed frame's paths is open (see ``__init__``)."""
        self._route_view = self._route_bytes = None
        if (
            self._direct
            and self._error is None
            and not self._close_sent
            and self._fragments is None
            and self._peer is not None
        ):
            if self._peer.role is UrlRole.ENVIRONMENT:
                self._route_view = self._on_environment
            else:
                self._route_bytes = self._harness_now

    def _deliver(self, data: bytes) -> None:
        """A whole message that did not take the routed frame's path (a fragmented one,
        one read before the socket was admitted, or one past the size limit)."""
        if len(data) > self.max_message_bytes:
            self._fail(_oversize())
            return
        if self._direct:
            assert self._peer is not None
            try:
                if self._peer.role is UrlRole.ENVIRONMENT:
                    assert self._on_environment is not None
                    self._on_environment(self._peer, data)
                elif self._harness_now is None or not self._harness_now(self._peer, data):
                    self._queue(data)
            except SocketProtocolError as exc:
                self._fail(exc)
            return
        self._inbox.put(data)
        self._wake.set()

    def _queue(self, data: bytes) -> None:
        """A harness frame that must wait for room at the environment: it and every frame
        after it go through the inbox (in order) until the inbox is empty again."""
        self._direct = False
        self._update_paths()
        self._inbox.put(data)
        self._wake.set()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if self.close_code is None:
            handshake = transport.close_handshake
            sent = handshake.sent if handshake is not None else None
            if sent is not None and sent.code is _TOO_BIG and self._error is None:
                self._error = _oversize()  # refused by picows from the header
            elif sent is not None and sent.code is _PROTOCOL_ERROR and self._error is None:
                # refused by picows' frame parser (bad opcode, unmasked, bad length...)
                self._error = _protocol_error("frame refused by the websocket parser")
            self.close_code = int(
                sent.code.value if sent is not None else picows.WSCloseCode.ABNORMAL_CLOSURE.value
            )
        if self._frames is not None:
            self._frames.discard()
        self._can_write = False
        self._route_view = self._route_bytes = None
        self._disconnected.set()
        self._peer_closed.set()
        self._writable.set()
        self._wake.set()

    def pause_writing(self) -> None:
        self._writable.clear()
        self._can_write = False

    def resume_writing(self) -> None:
        self._writable.set()
        transport = self._transport
        self._can_write = (
            transport is not None and not self._close_sent and not transport.is_disconnected
        )

    # --- reading ------------------------------------------------------------------------

    def _fail(self, error: SocketProtocolError) -> None:
        """A protocol error: stop taking frames and send the close now (the owner's
        :meth:`serve` counts it and finishes the handshake)."""
        if self._error is not None:
            return
        self._error = error
        self._direct = False
        self._update_paths()
        self._inbox.clear()
        self._send_close(error.close_code, error.message.encode()[:120])
        self._wake.set()

    def _pause_reading(self, pause: bool) -> None:
        set_socket_reading(self._transport, pause)

    async def serve(
        self,
        peer: SocketPeer,
        on_environment: Callable[[SocketPeer, bytes | memoryview], None],
        on_harness: Callable[[SocketPeer, bytes], Any],
        keepalive: KeepaliveConfig,
        harness_now: Callable[[SocketPeer, bytes], bool] | None = None,
    ) -> SocketProtocolError | str | None:
        """Feed the socket's messages to the router until it closes, breaks the protocol
        (returned) or its keepalive gives up (the reason, returned).

        An environment's frames go to ``on_environment`` from picows' read callback
        once the inbox is empty. A harness' go to ``on_harness`` (which may wait) in
        this task, or, given ``harness_now``, to it from the read callback while the
        inbox is empty: it routes a frame and returns True, or returns False, having done
        nothing, when the frame must wait (it and the frames after it then go through
        the inbox, in order)."""
        self._peer = peer
        self._on_environment = on_environment
        self._harness_now = harness_now
        direct = peer.role is UrlRole.ENVIRONMENT or harness_now is not None
        ka = self.keepalive = Keepalive(self, keepalive)
        watch = asyncio.ensure_future(ka.run())
        watch.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                await self._drain_inbox(peer, on_environment, on_harness)
                if self._error is not None:
                    return self._error
                if self._disconnected.is_set():
                    return None
                if watch.done():
                    return watch.result()
                if direct and not self._direct:
                    self._direct = True  # the inbox is empty: frames may go straight in
                    self._update_paths()
                self._wake.clear()
                if not self._inbox:
                    await self._wake.wait()
        finally:
            self._direct = False
            self._update_paths()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _drain_inbox(
        self,
        peer: SocketPeer,
        on_environment: Callable[[SocketPeer, bytes | memoryview], None],
        on_harness: Callable[[SocketPeer, bytes], Any],
    ) -> None:
        inbox = self._inbox
        environment = peer.role is UrlRole.ENVIRONMENT
        while self._error is None and (data := inbox.take()) is not None:
            try:
                if environment:
                    on_environment(peer, data)
                else:
                    await on_harness(peer, data)
            except SocketProtocolError as exc:
                self._fail(exc)

    # --- the router's frame sink ----------------------------------------------------------

    def write_now(self, data: bytes | memoryview | str) -> bool:
        """Write a frame unless the kernel's send buffer is full (or the socket closed)."""
        if isinstance(data, str):
            return self.write_binary_now(data.encode(), TEXT_OPCODE)
        return self.write_binary_now(data)

    def write_binary_now(self, data: bytes | memoryview, opcode: int = BINARY_OPCODE) -> bool:
        """:meth:`write_now` for bytes (the routed frame's path calls it directly)."""
        if not self._can_write:
            return False
        transport = self._transport
        frames = self._frames
        assert transport is not None and frames is not None
        if transport.is_disconnected:
            return False
        frames.write(opcode, data)
        return True

    def flush(self) -> None:
        """Write the small frames gathered so far now rather than at the end of this
        loop iteration (a caller that knows no more frames are coming in it)."""
        if self._frames is not None:
            self._frames.flush()

    async def send_bytes(self, data: bytes) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if not self.write_now(data):
            raise ConnectionResetError("the relay socket is closed")

    async def send_str(self, data: str) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if not self.write_now(data):
            raise ConnectionResetError("the relay socket is closed")

    async def ping(self, message: bytes = b"") -> None:
        transport = self._transport
        if transport is None or self._close_sent or transport.is_disconnected:
            raise ConnectionResetError("the relay socket is closed")
        if self._frames is not None:
            self._frames.flush()
        transport.send_ping(message)

    def _send_close(self, code: int, message: bytes) -> None:
        transport = self._transport
        if transport is None or self._close_sent or transport.is_disconnected:
            return
        self._close_sent = True
        self._can_write = False
        self._update_paths()
        if self.close_code is None:
            self.close_code = code
        if self._frames is not None:
            self._frames.flush()
        transport.send_close(picows.WSCloseCode(code), message)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send a close (once), wait for the peer's (bounded), drop the connection."""
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return False
        self._send_close(code, message)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self._peer_closed.wait()
        transport.disconnect()
        return True

    def abort(self) -> None:
        """Drop the connection unless a close is under way."""
        transport = self._transport
        if transport is not None and not transport.is_disconnected and not self._close_sent:
            self._can_write = False
            self._update_paths()
            transport.disconnect(graceful=False)


def _protocol_error(detail: str) -> SocketProtocolError:
    """A frame that breaks the websocket framing rules: close with 1002."""
    return SocketProtocolError(
        PROTOCOL_ERROR_CLOSE_CODE, InvalidFrameReason.UNDECODABLE.value, detail
    )


def _oversize() -> SocketProtocolError:
    return SocketProtocolError(TOO_BIG_CLOSE_CODE, ProtocolErrorReason.OVERSIZE, OVERSIZE_REASON)
