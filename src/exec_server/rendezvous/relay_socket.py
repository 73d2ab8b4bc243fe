"""The rendezvous end of one relay websocket: picows for the upgrade, then our reader.

picows parses the upgrade request and writes the 101 (:mod:`~exec_server.rendezvous.
picows_server`); in ``on_ws_connected`` the socket becomes the connection's buffered
protocol and reads the frames itself with a :class:`~exec_server.rendezvous.ws_reader.
FrameReader` (picows unmasks with non-temporal stores, which sends every routed byte
through memory once more; ``benchmarks/rendezvous_cpu_bench.py`` measures the path).
The bytes that followed the upgrade request in its first read reach the reader too:
:class:`~exec_server.rendezvous.port.PortSplitter` hands picows the request head only
and the rest to whichever protocol the connection has after it.

Every routed byte crosses two of these sockets, so the path is short: an environment's
frames go straight from the read callback to :meth:`Router.on_environment_message` (no
task switch per message), and so do a harness's while nothing waits
(:meth:`Router.harness_message_now`); a harness frame that must wait for room at the
environment, and every frame after it, goes through a small inbox read by the socket's
own task (:meth:`Router.on_harness_message`; the inbox stops the socket reading while
it is full) until the inbox is empty again. Outbound, :class:`RelaySocket` is the router's
:class:`~exec_server.rendezvous.socket_peer.FrameSink`: a frame is written to the
transport at once (:mod:`~exec_server.rendezvous.frame_writer`: no copy of a large
payload, small frames gathered into one system call) unless the transport is paused.

Behaviour on the wire (as the aiohttp socket this replaced had it): the upgrade is
refused before the 101 with a JSON error (401/403 for the URL, 503 while the node
cannot serve; :mod:`~exec_server.rendezvous.picows_server`); the
:data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL` is agreed when offered; peers'
pings are answered (the latest of each read, none while the peer reads nothing: RFC 6455
5.5.3) and ours come from a
:class:`~exec_server.transport.websocket.Keepalive`; a protocol error closes with 1002
(invalid frame), 1003 (text message), 1007 (a close reason not UTF-8) or 1009 (over the
size limit, reason "relay message over the size limit", refused from the frame's header),
counted by reason. A close handshake waits up to
:data:`~exec_server.rendezvous.socket_peer.SOCKET_CLOSE_TIMEOUT_S` for the peer's reply
(after a frame the reader refused, for its end of the stream: the reader reads nothing
more), and a connection still open that long after its close is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

import picows

from ..transport.read_inbox import ReadInbox
from ..transport.websocket import Keepalive, KeepaliveConfig
from .errors import SocketProtocolError
from .frame_writer import BINARY_OPCODE, TEXT_OPCODE, FrameWriter
from .socket_peer import SOCKET_CLOSE_TIMEOUT_S, SocketPeer
from .url_signing import UrlRole
from .ws_reader import OVERSIZE_REASON, FrameReader, protocol_error

__all__ = ["MAX_INBOX_BYTES", "OVERSIZE_REASON", "RelaySocket"]

log = logging.getLogger(__name__)

MAX_INBOX_BYTES = 1024 * 1024
"""Harness messages read but not yet routed before the socket stops reading."""

ABNORMAL_CLOSURE = 1006
"""The close code of a connection that ended without a close frame."""
NO_STATUS = 1005
"""The close code of a peer's close frame without one."""

_CLOSE_FRAME = 0x88
_PING_FRAME = 0x89
_PONG_FRAME = 0x8A


class RelaySocket(picows.WSListener, asyncio.BufferedProtocol):
    """One accepted relay websocket: picows' listener until the 101 is out, then the
    connection's protocol (reading with a :class:`FrameReader`, which hands it the
    frames as a :class:`~exec_server.rendezvous.ws_reader.FrameSink`) and the router's
    frame sink.

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
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self._reader = FrameReader(max_message_bytes, self)
        self._peer: SocketPeer | None = None
        self._direct = False
        """Frames go straight to the router from the read callback: the socket is
        admitted and its inbox is empty (an environment's stays so; a harness' until a
        frame has to wait for room at the environment)."""
        self._on_environment: Callable[[SocketPeer, bytes | memoryview], None] | None = None
        self._harness_now: Callable[[SocketPeer, bytes], bool] | None = None
        self._route_view: Callable[[SocketPeer, memoryview], None] | None = None
        """Set while an environment's messages may be routed from the read callback:
        direct, no protocol error, no close sent."""
        self._route_bytes: Callable[[SocketPeer, bytes], bool] | None = None
        """The same for a harness' messages (False back: the message must wait its turn)."""
        self._can_write = False
        """Connected, not paused by the transport's flow control, no close sent."""
        self._inbox: ReadInbox[bytes] = ReadInbox(
            MAX_INBOX_BYTES, len, lambda pause: self._pause_reading(pause)
        )
        self._wake: asyncio.Event = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: SocketProtocolError | None = None
        self._close_sent = False
        self._disconnected = asyncio.Event()
        self._peer_closed = asyncio.Event()
        self.keepalive: Keepalive | None = None
        self._frames: FrameWriter | None = None
        self._pong: bytes | None = None
        """The payload of the latest ping not answered yet (one pong answers it, after
        the read that carried it, or once writing resumes: RFC 6455 5.5.3)."""
        self._drop_timer: asyncio.TimerHandle | None = None
        """Aborts a connection still open this long after it was closed."""

    # --- the upgrade (picows) -----------------------------------------------------------

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        """The 101 is out: from now on this socket is the connection's protocol."""
        underlying = transport.underlying_transport
        underlying.set_protocol(self)
        self.connection_made(underlying)
        self._on_connected(self)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """Never called (picows is handed the upgrade request and nothing after it);
        a frame here would be out of the reader's order: refused."""
        self._fail(protocol_error("a frame read before the socket's reader took over"))

    # --- the connection (asyncio) -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = underlying = cast(asyncio.Transport, transport)
        self._can_write = self._writable.is_set()
        self.peername = underlying.get_extra_info("peername")
        sock = underlying.get_extra_info("socket")
        # Frames go to the kernel directly only on a plain socket: under TLS the raw
        # socket would carry them unencrypted.
        direct = sock is not None and underlying.get_extra_info("sslcontext") is None
        self._frames = FrameWriter(underlying, sock.fileno() if direct else -1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.buffer_updated(nbytes)
        if self._pong is not None and self._can_write:
            self._send_pong()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        self._pong = None
        if self.close_code is None:
            self.close_code = ABNORMAL_CLOSURE
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
        self._can_write = self._transport is not None and not self._close_sent and not self._lost
        if self._pong is not None and self._can_write:
            self._send_pong()

    # --- frames read (the reader's sink) ------------------------------------------------

    def on_message(self, payload: bytearray) -> None:
        """A whole binary message: routed at once when the socket may, else delivered.

        The keepalive counts whole messages and control frames, not reads (as it did
        when picows read the frames): a peer that drips a frame a byte at a time is
        silent, and is dropped after ``pong_timeout_s``."""
        keepalive = self.keepalive
        if keepalive is not None:
            keepalive.heard_count += 1
        route_view = self._route_view
        if route_view is not None:
            assert self._peer is not None
            try:
                route_view(self._peer, memoryview(payload))
            except SocketProtocolError as exc:
                self._fail(exc)
            return
        route_bytes = self._route_bytes
        if route_bytes is not None:
            assert self._peer is not None
            data = bytes(payload)
            try:
                if not route_bytes(self._peer, data):
                    self._queue(data)  # waits for room at the environment
            except SocketProtocolError as exc:
                self._fail(exc)
            return
        if self._close_sent or self._error is not None:
            return
        self._deliver(bytes(payload))

    def on_ping(self, payload: bytes) -> None:
        """Answered after the read (the latest ping of a read only), or, while the peer
        reads nothing (writing paused), once writing resumes: pings never make the
        socket buffer more than one pong."""
        self._heard()
        if not self._close_sent:
            self._pong = payload

    def _send_pong(self) -> None:
        payload = self._pong
        self._pong = None
        frames = self._frames
        if payload is not None and frames is not None:
            frames.write(_PONG_FRAME, payload)  # gathered with the frames around it

    def on_pong(self) -> None:
        self._heard()

    def _heard(self) -> None:
        """A control frame came in whole: the peer is alive (see :meth:`on_message`)."""
        keepalive = self.keepalive
        if keepalive is not None:
            keepalive.heard_count += 1

    def on_close(self, code: int | None, reason: bytes) -> None:
        self._peer_closed.set()
        if not self._close_sent and self._error is None:
            self.close_code = NO_STATUS if code is None else code
            self._close_sent = True
            self._can_write = False
            self._pong = None
            self._update_paths()
            self._write_control(
                _CLOSE_FRAME, b"" if code is None else code.to_bytes(2, "big") + reason
            )
        self._disconnect()

    def on_error(self, error: SocketProtocolError) -> None:
        """The reader refused a frame and reads nothing more (RFC 6455 7.1.7: not even
        the peer's close reply): after the close frame the stream ends (half-closed, so
        that what the peer still sends is read and dropped rather than answered with a
        reset), and the peer closing its end (EOF) ends the connection."""
        self._fail(error)
        transport = self._transport
        if transport is not None and not self._lost and not transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
                transport.write_eof()

    def _update_paths(self) -> None:
        """Recompute which of the routed message's paths is open (see ``__init__``)."""
        self._route_view = self._route_bytes = None
        if self._direct and self._error is None and not self._close_sent and self._peer is not None:
            if self._peer.role is UrlRole.ENVIRONMENT:
                self._route_view = self._on_environment
            else:
                self._route_bytes = self._harness_now

    def _deliver(self, data: bytes) -> None:
        """A whole message that did not take the routed message's path (one read before
        the socket was admitted)."""
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
        """A harness message that must wait for room at the environment: it and every
        message after it go through the inbox (in order) until the inbox is empty again."""
        self._direct = False
        self._update_paths()
        self._inbox.put(data)
        self._wake.set()

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
        transport = self._transport
        if transport is None or self._lost:
            return
        with contextlib.suppress(RuntimeError, AttributeError):
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

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
        frames = self._frames
        assert frames is not None
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
        if self._transport is None or self._close_sent or self._lost:
            raise ConnectionResetError("the relay socket is closed")
        self._write_control(_PING_FRAME, message)

    def _write_control(self, first: int, payload: bytes) -> None:
        """A control frame, after every frame gathered before it."""
        frames = self._frames
        if frames is not None and not self._lost:
            frames.write_control(first, payload)

    def _send_close(self, code: int, message: bytes) -> None:
        if self._transport is None or self._close_sent or self._lost:
            return
        self._close_sent = True
        self._can_write = False
        self._pong = None
        self._update_paths()
        if self.close_code is None:
            self.close_code = code
        self._write_control(_CLOSE_FRAME, code.to_bytes(2, "big") + message[:123])

    def _disconnect(self) -> None:
        """Close the connection once what was written is out, and drop it if that has
        not happened within ``SOCKET_CLOSE_TIMEOUT_S`` (a peer that reads nothing would
        keep it open for ever)."""
        transport = self._transport
        if transport is not None and not self._lost:
            transport.close()
            if self._drop_timer is None and not self._lost:
                self._drop_timer = asyncio.get_running_loop().call_later(
                    SOCKET_CLOSE_TIMEOUT_S, transport.abort
                )

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send a close (once), wait for the peer's (bounded), drop the connection."""
        if self._transport is None or self._lost:
            return False
        self._send_close(code, message)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self._peer_closed.wait()
        self._disconnect()
        return True

    def abort(self) -> None:
        """Drop the connection unless a close is under way."""
        transport = self._transport
        if transport is not None and not self._lost and not self._close_sent:
            self._can_write = False
            self._update_paths()
            transport.abort()
