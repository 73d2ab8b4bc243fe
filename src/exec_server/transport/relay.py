"""asyncio adapter for the relay: a :class:`StreamMux` driven over websockets.

:class:`RelayConnection` owns one multiplexer for its whole life and drives it over
a succession of physical websockets (:meth:`RelayConnection.run_socket` once per
socket), so reliable streams survive a physical reconnect: on each new socket the
mux sends ``resume`` and retransmits what the peer lacks. Each relay stream is
exposed as a :class:`RelayStreamChannel`, a
:class:`~exec_server.transport.channel.MessageChannel`, so the connection
processor (environment side) and the RPC client (harness side) never know they run
over the relay.

One reader, one writer and one keepalive task per socket: the reader feeds every
binary message to the mux and dispatches the events (and answers pings: relay sockets
use ``autoping=False``); the writer sends what the mux has to send, wakes on new output
or on the mux's timer, and is the only place that writes frames to the socket; the
:class:`~exec_server.transport.websocket.Keepalive` pings every 30 s and gives the
socket up (``pong_timeout``) after 60 s of silence.

Sockets that negotiated :data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL` also
get the rendezvous's control messages: ``pause_output``/``resume_output`` hold one
stream's output at the source while its (legacy) harness is too slow, and
``peer_offline``/``peer_online`` become :class:`RelayStatus` reports for the harness.

Limits: a consumer that stops reading holds back its stream. On a reliable stream,
once ``inbox_hold_bytes`` wait in the channel, the stream's events stay in the
multiplexer, which stops acknowledging new data past its receive buffer: the peer
waits and nothing is lost. A legacy stream's peer cannot be slowed down: once its
undelivered messages exceed ``max_channel_inbox_bytes`` it is reset with
``receive_buffer_overflow`` instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType

from ..relay.control import (
    CONTROL_SUBPROTOCOL,
    ENVIRONMENT_OFFLINE,
    PauseOutput,
    PeerOffline,
    PeerOnline,
    ResumeOutput,
    decode_control,
)
from ..relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from ..relay.events import (
    MessageReceived,
    PeerMode,
    PeerModeResolved,
    PeerResumed,
    StreamOpened,
    StreamReset,
)
from ..relay.reliable_stream import ReliableStream
from ..relay.stream_mux import MuxConfig, MuxRole, StreamMux
from .channel import ChannelClosed, MessageTooLargeForTransport
from .relay_status import RelayStatus, StatusCallback
from .websocket import (
    AnyWebSocket,
    Keepalive,
    KeepaliveConfig,
    dial_websocket,
)

log = logging.getLogger(__name__)

#: Bytes of outbound frames written per writer pass before yielding to the loop.
WRITE_BATCH_BYTES = 1024 * 1024
#: Undelivered inbound bytes per legacy stream before it is reset (see module docstring).
MAX_CHANNEL_INBOX_BYTES = 64 * 1024 * 1024
#: Undelivered inbound bytes at which a reliable stream's events are held back.
INBOX_HOLD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RelayConfig:
    mux: MuxConfig = field(default_factory=MuxConfig)
    max_channel_inbox_bytes: int = MAX_CHANNEL_INBOX_BYTES
    inbox_hold_bytes: int = INBOX_HOLD_BYTES
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)


class RelayStreamChannel:
    """One relay stream as a message channel."""

    transport_name = "relay"
    parse_error_prefix = "failed to parse relay JSON-RPC message from exec-server relay"

    def __init__(self, connection: RelayConnection, stream: ReliableStream) -> None:
        self._connection = connection
        self.stream = stream
        self.stream_id = stream.stream_id
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._readable = asyncio.Event()
        self._end_reason: str | None = None
        self._held = False

    @property
    def ended(self) -> bool:
        return self._end_reason is not None

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # --- fed by the connection ---------------------------------------------------

    def _deliver(self, payload: bytes) -> bool:
        if self._end_reason is not None:
            return True
        config = self._connection.config
        if self._inbox_bytes + len(payload) > config.max_channel_inbox_bytes:
            return False
        self._inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._readable.set()
        if (
            not self._held
            and self._inbox_bytes >= config.inbox_hold_bytes
            and self.stream.mode is PeerMode.RELIABLE
        ):
            self._held = True
            self._connection.mux.hold_events(self.stream_id)
        return True

    def _end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        self._readable.set()

    # --- MessageChannel ----------------------------------------------------------

    async def receive(self) -> bytes:
        while not self._inbox:
            if self._end_reason is not None:
                raise ChannelClosed(self._end_reason)
            self._readable.clear()
            await self._readable.wait()
        payload = self._inbox.popleft()
        self._inbox_bytes -= len(payload)
        if self._held and self._inbox_bytes <= self._connection.config.inbox_hold_bytes // 2:
            self._held = False
            self._connection._release(self.stream_id)
        return payload

    async def send(self, message: bytes) -> None:
        conn = self._connection
        while True:
            if self._end_reason is not None:
                raise ChannelClosed(self._end_reason)
            progress = conn._progress
            try:
                self.stream.send_message(message, conn.now())
            except SendBlocked:
                await progress.wait()
                continue
            except MessageTooLarge as exc:
                raise MessageTooLargeForTransport(str(exc)) from None
            except StreamClosed as exc:
                self._end(str(exc))
                raise ChannelClosed(self._end_reason) from None
            conn._output_pending()
            return

    async def close(self, reason: str | None = None) -> None:
        if self._end_reason is not None:
            return
        self._end(reason or "closed")
        self._connection._close_stream(self.stream_id, reason or "closed")


class RelayConnection:
    """A multiplexer driven over one websocket at a time."""

    def __init__(
        self,
        role: MuxRole,
        config: RelayConfig | None = None,
        *,
        on_stream: Callable[[RelayStreamChannel], None] | None = None,
        on_status: StatusCallback | None = None,
    ) -> None:
        self.config = config or RelayConfig()
        self.mux = StreamMux(role, self.config.mux)
        self.channels: dict[str, RelayStreamChannel] = {}
        self._on_stream = on_stream
        self.on_status = on_status
        """Harness side: called with every :class:`RelayStatus` report."""
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._progress = asyncio.Event()
        self._sockets = 0
        self.text_frames_dropped = 0
        self.overflow_resets = 0
        self._connected = False
        self._clock: Callable[[], float] | None = None

    def now(self) -> float:
        # The loop's clock, looked up once: get_running_loop() costs a getpid() system
        # call, and now() runs several times per relay frame.
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop().time
        return clock()

    @property
    def connected(self) -> bool:
        return self._connected

    def open_channel(self, stream_id: str | None = None) -> RelayStreamChannel:
        """Harness side: open a new stream (a fresh UUIDv4 id by default)."""
        stream = self.mux.open_stream(self.now(), stream_id)
        channel = RelayStreamChannel(self, stream)
        self.channels[stream.stream_id] = channel
        self._output_pending()
        return channel

    def _output_pending(self) -> None:
        self._wake.set()

    def _notify_progress(self) -> None:
        # Senders blocked on a full window wait on the current event; replace it so
        # the next wait blocks until the next progress.
        self._progress.set()
        self._progress = asyncio.Event()

    def _release(self, stream_id: str) -> None:
        """A consumer drained its inbox: hand out the stream's held events again (taking
        them may reopen its receive window, which sends ``resume``)."""
        self.mux.release_events(stream_id)
        self._dispatch_events()
        self._output_pending()

    def _close_stream(self, stream_id: str, reason: str) -> None:
        self.channels.pop(stream_id, None)
        self.mux.release_events(stream_id)
        self.mux.reset_stream(stream_id, reason)
        self._output_pending()

    def _dispatch_events(self) -> None:
        for event in self.mux.events():
            if isinstance(event, MessageReceived):
                channel = self.channels.get(event.stream_id)
                if channel is not None and not channel._deliver(event.payload):
                    self.overflow_resets += 1
                    log.warning(
                        "relay stream %s: consumer fell behind by more than %d bytes; resetting",
                        event.stream_id,
                        self.config.max_channel_inbox_bytes,
                    )
                    channel._end("receive_buffer_overflow")
                    self._close_stream(event.stream_id, "receive_buffer_overflow")
            elif isinstance(event, StreamOpened):
                stream = self.mux.streams.get(event.stream_id)
                if stream is None:
                    continue
                channel = RelayStreamChannel(self, stream)
                self.channels[event.stream_id] = channel
                if self._on_stream is not None:
                    self._on_stream(channel)
            elif isinstance(event, StreamReset):
                channel = self.channels.pop(event.stream_id, None)
                if event.remote and event.reason == ENVIRONMENT_OFFLINE:
                    self._report(
                        RelayStatus(
                            "gone",
                            detail="the environment went offline and did not come back "
                            "within the rendezvous's grace period",
                        )
                    )
                if channel is not None:
                    channel._end(event.reason)
                log.debug("relay stream %s ended: %s", event.stream_id, event.reason)
            elif isinstance(event, PeerModeResolved | PeerResumed):
                log.debug("relay stream %s: %s", event.stream_id, event)

    def _report(self, status: RelayStatus) -> None:
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("relay status callback failed")

    async def run_socket(self, ws: AnyWebSocket) -> str:
        """Drive the mux over ``ws`` until it ends; returns why it ended. ``ws`` must
        have been opened with ``autoping=False`` (the reader answers pings)."""
        now = self.now()
        if self._sockets:
            self.mux.on_reconnect(now)
        self._sockets += 1
        self._connected = True
        self._dispatch_events()
        protocol = ws.protocol if isinstance(ws, ClientWebSocketResponse) else ws.ws_protocol
        keepalive = Keepalive(ws, self.config.keepalive)
        # Long-lived tasks per socket. The reader awaits ws.receive() directly, so a
        # burst of buffered messages is processed without a task switch per message, and
        # the writer then answers the whole burst (acks included) in one pass.
        reader = asyncio.ensure_future(
            self._read_loop(ws, keepalive, control=protocol == CONTROL_SUBPROTOCOL)
        )
        writer = asyncio.ensure_future(self._write_loop(ws))
        pinger = asyncio.ensure_future(keepalive.run())
        tasks = (reader, writer, pinger)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reason = reader.result()
            elif pinger in done:
                reason = f"relay websocket given up: {pinger.result()}"
            else:
                exc = writer.exception() if not writer.cancelled() else None
                reason = f"relay write failed: {exc}" if exc else "relay writer stopped"
        finally:
            self._connected = False
            self._disarm_timer()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.mux.connection_lost(self.now())
            self._dispatch_events()
            self._notify_progress()
        return reason

    async def _read_loop(self, ws: AnyWebSocket, keepalive: Keepalive, *, control: bool) -> str:
        mux = self.mux
        while True:
            msg = await ws.receive()
            keepalive.heard_count += 1
            if msg.type is WSMsgType.BINARY:
                mux.receive_bytes(msg.data, self.now())
                self._dispatch_events()
                self._notify_progress()
                self._output_pending()
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                continue
            elif msg.type is WSMsgType.TEXT:
                if control:
                    self._on_control(msg.data)
                else:
                    self.text_frames_dropped += 1
            elif msg.type is WSMsgType.ERROR:
                return f"relay websocket error: {ws.exception()}"
            else:
                return _closed_reason(ws, msg.extra if msg.type is WSMsgType.CLOSE else None)

    def _on_control(self, text: str | bytes) -> None:
        message = decode_control(text)
        if isinstance(message, PauseOutput):
            self.mux.pause_output(message.stream_id)
        elif isinstance(message, ResumeOutput):
            self.mux.resume_output(message.stream_id)
            self._output_pending()
        elif isinstance(message, PeerOffline):
            self._report(RelayStatus("offline", grace_s=message.grace_s))
        elif isinstance(message, PeerOnline):
            self._report(RelayStatus("online"))
        else:
            self.text_frames_dropped += 1

    async def _write_loop(self, ws: AnyWebSocket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            deadline = self.mux.get_timer()
            if deadline is not None and deadline <= now:
                self.mux.handle_timer(now)
                self._dispatch_events()
                deadline = self.mux.get_timer()
            frames = self.mux.frames_to_send(now, WRITE_BATCH_BYTES)
            if frames:
                for frame in frames:
                    await ws.send_frame(frame, WSMsgType.BINARY)
                self._notify_progress()
                continue
            self._arm_timer(deadline)
            await self._wake.wait()

    def _arm_timer(self, deadline: float | None) -> None:
        """Make sure the writer wakes by ``deadline``. An armed earlier wake-up is kept (an
        early pass is harmless), so the timer is rescheduled only when it must move up,
        not on every idle pass."""
        if deadline is None:
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_all(self, reason: str) -> None:
        """End every channel (used when the owner gives up on the relay)."""
        for stream_id, channel in list(self.channels.items()):
            channel._end(reason)
            self.mux.reset_stream(stream_id, reason)
        self.channels.clear()


def _closed_reason(ws: AnyWebSocket, message: object) -> str:
    reason = f": {message}" if isinstance(message, str) and message else ""
    return f"relay websocket closed (code {ws.close_code}{reason})"


#: How long closing a relay socket may wait for the peer's close frame.
SOCKET_CLOSE_TIMEOUT_S = 2.0


async def close_socket(ws: AnyWebSocket) -> None:
    """Close a websocket without ever hanging on an unresponsive peer."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
            await ws.close()


#: How long a harness keeps trying to get its relay socket back before giving up.
HARNESS_RECONNECT_DEADLINE_S = 25.0
HARNESS_RECONNECT_INITIAL_S = 0.1
HARNESS_RECONNECT_MAX_S = 2.0
#: On close, how long to let the writer flush the stream's reset frame.
CLOSE_FLUSH_S = 0.5


def is_rendezvous_harness_url(url: str) -> bool:
    """True when the URL's query has ``role=harness`` (how Codex picks the relay)."""
    return "harness" in parse_qs(urlsplit(url).query).get("role", [])


class HarnessRelayChannel:
    """One harness stream over a rendezvous, surviving physical reconnects.

    The channel owns its socket and a supervisor task: when the socket drops, the
    supervisor dials the same URL again (backoff from 0.1 s to 2 s, for up to
    ``reconnect_deadline_s``) and the reliable stream resumes on the new socket,
    so nothing is lost or repeated. ``alternates`` are the same URL on other nodes of
    a rendezvous cluster: each redial goes through the URL and then every alternate
    before backing off, and the one that answered is tried first next time. If the
    peer is a legacy Codex environment the stream cannot resume and the channel ends;
    the client then falls back to resuming its session.
    """

    transport_name = "relay"
    parse_error_prefix = "failed to parse relay JSON-RPC message from exec-server relay"

    def __init__(
        self,
        url: str,
        http: Any,
        ws: AnyWebSocket,
        *,
        headers: dict[str, str] | None,
        config: RelayConfig | None,
        reconnect_deadline_s: float,
        max_message_bytes: int,
        on_status: StatusCallback | None = None,
        alternates: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.alternates = list(alternates)
        self._http = http
        self._headers = headers
        self._max_message_bytes = max_message_bytes
        self.connection = RelayConnection(MuxRole.HARNESS, config, on_status=on_status)
        self.channel = self.connection.open_channel()
        self.stream_id = self.channel.stream_id
        self._reconnect_deadline_s = reconnect_deadline_s
        self.reconnects = 0
        self._ws: AnyWebSocket = ws
        self._supervisor = asyncio.ensure_future(self._supervise(ws))

    async def _dial(self) -> AnyWebSocket:
        candidates = [self.url, *self.alternates]
        for index, url in enumerate(candidates):
            try:
                ws = await dial_relay_socket(
                    self._http,
                    url,
                    headers=self._headers,
                    max_message_bytes=self._max_message_bytes,
                )
            except Exception:
                if index == len(candidates) - 1:
                    raise
                continue
            if index:
                self.alternates = [u for u in candidates if u != url]
                self.url = url
            return ws
        raise AssertionError("unreachable")

    async def _supervise(self, ws: AnyWebSocket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._ws = ws
            reason = await self.connection.run_socket(ws)
            await close_socket(ws)
            if self.channel.ended:
                return
            log.info("relay socket lost (%s); reconnecting stream %s", reason, self.stream_id)
            self.connection._report(
                RelayStatus("reconnecting", grace_s=self._reconnect_deadline_s, detail=reason)
            )
            deadline = loop.time() + self._reconnect_deadline_s
            delay = HARNESS_RECONNECT_INITIAL_S
            while True:
                try:
                    async with asyncio.timeout(max(0.1, deadline - loop.time())):
                        ws = await self._dial()
                    self.reconnects += 1
                    self.connection._report(RelayStatus("reconnected"))
                    break
                except Exception as exc:
                    if loop.time() + delay >= deadline:
                        self.channel._end(f"relay reconnect failed: {reason}; last error: {exc}")
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, HARNESS_RECONNECT_MAX_S)

    async def receive(self) -> bytes:
        return await self.channel.receive()

    async def send(self, message: bytes) -> None:
        await self.channel.send(message)

    async def close(self, reason: str | None = None) -> None:
        if not self.channel.ended:
            await self.channel.close(reason or "harness closed")
            # Let the writer put the reset on the wire before the socket goes.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CLOSE_FLUSH_S
            while self.connection.connected and loop.time() < deadline:
                if not self.connection.mux.has_output():
                    break
                await asyncio.sleep(0.01)
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._supervisor
        await close_socket(self._ws)
        await self._http.close()


async def connect_harness_relay(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    config: RelayConfig | None = None,
    reconnect_deadline_s: float = HARNESS_RECONNECT_DEADLINE_S,
    max_message_bytes: int = 64 * 1024 * 1024,
    on_status: StatusCallback | None = None,
    alternates: Sequence[str] = (),
) -> HarnessRelayChannel:
    """Dial a ``role=harness`` rendezvous URL and open one relay stream on it.

    ``on_status`` hears what the rendezvous reports about the environment
    (:class:`RelayStatus`): offline and being waited for, back online, or gone.
    ``alternates``: the same URL on other nodes of a rendezvous cluster, dialed in turn
    when the first does not answer (and when the socket is lost later).
    """
    http = ClientSession()
    candidates = [url, *alternates]
    try:
        for index, candidate in enumerate(candidates):
            try:
                ws = await dial_relay_socket(
                    http,
                    candidate,
                    headers=headers,
                    timeout_s=timeout_s,
                    max_message_bytes=max_message_bytes,
                )
                break
            except (OSError, TimeoutError):
                if index == len(candidates) - 1:
                    raise
    except BaseException:
        await http.close()
        raise
    return HarnessRelayChannel(
        candidate,
        http,
        ws,
        headers=headers,
        config=config,
        reconnect_deadline_s=reconnect_deadline_s,
        max_message_bytes=max_message_bytes,
        on_status=on_status,
        alternates=[other for other in candidates if other != candidate],
    )


async def dial_relay_socket(
    http: ClientSession,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = 64 * 1024 * 1024,
) -> ClientWebSocketResponse:
    """Open a relay websocket as :meth:`RelayConnection.run_socket` wants it: no
    compression, pings answered by its reader, the control subprotocol offered."""
    return await dial_websocket(
        http,
        url,
        headers=headers,
        timeout_s=timeout_s,
        max_message_bytes=max_message_bytes,
        autoping=False,
        protocols=(CONTROL_SUBPROTOCOL,),
    )
