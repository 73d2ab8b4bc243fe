"""asyncio adapter for the relay: a :class:`StreamMux` driven over websockets.

:class:`RelayConnection` owns one multiplexer for its whole life and drives it over
a succession of physical websockets (:meth:`RelayConnection.run_socket` once per
socket), so reliable streams survive a physical reconnect: on each new socket the
mux sends ``resume`` and retransmits what the peer lacks. Each relay stream is
exposed as a :class:`~exec_server.transport.relay_channel.RelayStreamChannel`, a
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
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from ..relay.control import (
    CONTROL_SUBPROTOCOL,
    ENVIRONMENT_OFFLINE,
    PauseOutput,
    PeerOffline,
    PeerOnline,
    ResumeOutput,
    decode_control,
)
from ..relay.events import (
    MessageReceived,
    PeerModeResolved,
    PeerResumed,
    StreamOpened,
    StreamReset,
)
from ..relay.frame_encoder import OutboundPayload
from ..relay.stream_mux import MuxConfig, MuxRole, StreamMux
from .picows_socket import HEADROOM as PICOWS_HEADROOM
from .picows_socket import PicowsRelaySocket
from .relay_channel import RelayStreamChannel
from .relay_sockets import (
    SOCKET_CLOSE_TIMEOUT_S,
    RelaySocket,
    close_socket,
    dial_environment_socket,
    dial_relay_socket,
)
from .relay_status import RelayStatus, StatusCallback
from .websocket import (
    Keepalive,
    KeepaliveConfig,
)

__all__ = [
    "INBOX_HOLD_BYTES",
    "MAX_CHANNEL_INBOX_BYTES",
    "SOCKET_CLOSE_TIMEOUT_S",
    "WRITE_BATCH_BYTES",
    "RelayConfig",
    "RelayConnection",
    "RelaySocket",
    "RelayStatus",
    "RelayStreamChannel",
    "close_socket",
    "dial_environment_socket",
    "dial_relay_socket",
]

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


class RelayConnection:
    """A multiplexer driven over one websocket at a time."""

    def __init__(
        self,
        role: MuxRole,
        config: RelayConfig | None = None,
        *,
        on_stream: Callable[[RelayStreamChannel], None] | None = None,
        on_status: StatusCallback | None = None,
        mux: StreamMux | None = None,
        on_event: Callable[[object], None] | None = None,
    ) -> None:
        self.config = config or RelayConfig()
        self.mux = mux if mux is not None else StreamMux(role, self.config.mux)
        self._on_event = on_event
        self.channels: dict[str, RelayStreamChannel] = {}
        self._on_stream = on_stream
        self.on_status = on_status
        """Harness side: called with every :class:`RelayStatus` report."""
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()  # set while the writer has nothing left to write
        self._flushed.set()
        self._timer: asyncio.TimerHandle | None = None
        self._progress: asyncio.Event | None = None  # made when a sender waits
        # The socket while the writer is parked with nothing in hand: a message whose
        # frame is all the mux would write may then go out from send_message itself.
        self._idle_socket: PicowsRelaySocket | None = None
        self._sockets = 0
        self.text_frames_dropped = 0
        self.inline_frames = 0
        """Frames written from ``send_message`` or the read callback (the writer task was
        parked with nothing in hand), not by the writer task."""
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

    def send_message(self, stream_id: str, message: OutboundPayload) -> None:
        """Queue one message on a stream (``StreamMux.send_message``) and wake the writer.

        Raises what the mux raises: ``SendBlocked`` (wait for :attr:`progress`, then
        retry), ``MessageTooLarge``, ``StreamClosed``.

        Fast path: while the writer is parked with nothing in hand on a writable picows
        socket, a ``message_with_headroom`` message whose frame is all the writer's
        next pass would write (``StreamMux.try_send_now``) is written here, without
        waking the writer: same frame, same order, same stream state."""
        ws = self._idle_socket
        if ws is not None and type(message) is memoryview and ws.writable:
            now = self.now()
            frame = self.mux.try_send_now(stream_id, message, now)
            if frame is not None:
                ws.send_now(frame)
                self.inline_frames += 1
                self._arm_timer(self.mux.get_timer())
                return
        # Wake the writer only if the message can go out now: not for each message
        # queued behind a full window (the acknowledgement that opens it does that).
        if self.mux.send_message(stream_id, message, self.now()):
            self._wake.set()

    @property
    def progress(self) -> asyncio.Event:
        """Set at the next progress (frames written or received, a socket lost): a sender
        whose message was refused with ``SendBlocked`` waits for it, then retries. Take it
        right after the refusal (no progress can come in between without an ``await``)."""
        progress = self._progress
        if progress is None:
            progress = self._progress = asyncio.Event()
        return progress

    def notify_progress(self) -> None:
        # Senders blocked on a full window wait on the current event; the next wait
        # gets a new one (made only when someone waits).
        progress = self._progress
        if progress is not None:
            self._progress = None
            progress.set()

    def _output_pending(self) -> None:
        self._flushed.clear()
        self._wake.set()

    async def flushed(self) -> None:
        """Return once everything queued so far is written, or no socket is up (the
        rest then waits for the next socket)."""
        while self._connected and not self._flushed.is_set():
            await self._flushed.wait()

    def release_events(self, stream_id: str) -> None:
        """A consumer drained its inbox: hand out the stream's held events again (taking
        them may reopen its receive window, which sends ``resume``)."""
        self.mux.release_events(stream_id)
        self._dispatch_events()
        self._output_pending()

    def poke(self) -> None:
        """The owner changed the multiplexer directly (a Noise validation answer): hand
        out its events and wake the writer."""
        self._dispatch_events()
        self._output_pending()

    def close_stream(self, stream_id: str, reason: str) -> None:
        """Reset one stream (its channel is forgotten)."""
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
                    channel.end("receive_buffer_overflow")
                    self.close_stream(event.stream_id, "receive_buffer_overflow")
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
                    self.report(
                        RelayStatus(
                            "gone",
                            detail="the environment went offline and did not come back "
                            "within the rendezvous's grace period",
                        )
                    )
                if channel is not None:
                    channel.end(event.reason)
                log.debug("relay stream %s ended: %s", event.stream_id, event.reason)
            elif isinstance(event, PeerModeResolved | PeerResumed):
                log.debug("relay stream %s: %s", event.stream_id, event)
            elif self._on_event is not None:
                self._on_event(event)  # a multiplexer's own events (the Noise handshake's)

    def report(self, status: RelayStatus) -> None:
        """Tell the owner (``on_status``) about the environment behind the relay."""
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("relay status callback failed")

    async def run_socket(self, ws: RelaySocket) -> str:
        """Drive the mux over ``ws`` until it ends; returns why it ended. ``ws`` must
        have been opened with ``autoping=False`` (the reader answers pings)."""
        now = self.now()
        if self._sockets:
            self.mux.on_reconnect(now)
        self._sockets += 1
        self._connected = True
        self._dispatch_events()
        protocol = ws.ws_protocol if isinstance(ws, web.WebSocketResponse) else ws.protocol
        keepalive = Keepalive(ws, self.config.keepalive)
        control = protocol == CONTROL_SUBPROTOCOL
        reason = "relay socket closed"
        try:
            # The reader, the writer and the keepalive of this socket: the first to end
            # ends the other two (it raises _SocketEnded; the TaskGroup cancels the rest).
            # The reader awaits ws.receive() directly, so a burst of buffered messages is
            # processed without a task switch per message, and the writer then answers
            # the whole burst (acks included) in one pass.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_ends_socket(self._read_loop(ws, keepalive, control=control)))
                tasks.create_task(_ends_socket(self._write_loop(ws), "relay write failed"))
                tasks.create_task(_ends_socket(keepalive.run(), "relay websocket given up"))
        except* _SocketEnded as ended:
            reason = str(ended.exceptions[0])
        finally:
            self._connected = False
            self._flushed.set()
            self._disarm_timer()
            self.mux.connection_lost(self.now())
            self._dispatch_events()
            self.notify_progress()
        return reason

    def _on_binary(self, data: bytes) -> None:
        """One binary message from the socket (a relay frame). An acknowledgement that
        leaves nothing to write wakes nobody: the writer only re-arms its timer."""
        mux = self.mux
        now = self.now()
        mux.receive_bytes(data, now)
        if mux.has_events:
            self._dispatch_events()
        self.notify_progress()
        if not mux.has_output_now(now):
            if self._connected:
                self._arm_timer(mux.get_timer())
            return
        ws = self._idle_socket
        if ws is not None and ws.writable:
            # The writer is parked with nothing in hand: write what the frame let out
            # (typically new data an acknowledgement admitted) here, as its pass would.
            deadline = mux.get_timer()
            if deadline is not None and deadline <= now:
                mux.handle_timer(now)
                self._dispatch_events()
            for frame in mux.data_to_write(now, WRITE_BATCH_BYTES, headroom=PICOWS_HEADROOM):
                ws.send_now(frame)
                self.inline_frames += 1
            if not mux.has_output():
                self._arm_timer(mux.get_timer())
                return
        self._output_pending()

    async def _read_loop(self, ws: RelaySocket, keepalive: Keepalive, *, control: bool) -> str:
        if isinstance(ws, PicowsRelaySocket):
            # picows hands frames over in its own callback: no task switch per message.
            on_text = self._on_control if control else self._drop_text
            ws.deliver_to(self._on_binary, on_text, keepalive)
        while True:
            msg = await ws.receive()
            keepalive.heard_count += 1
            if msg.type is WSMsgType.BINARY:
                self._on_binary(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                continue
            elif msg.type is WSMsgType.TEXT:
                if control:
                    self._on_control(msg.data)
                else:
                    self._drop_text(msg.data)
            elif msg.type is WSMsgType.ERROR:
                return f"relay websocket error: {ws.exception()}"
            else:
                return _closed_reason(ws, msg.extra if msg.type is WSMsgType.CLOSE else None)

    def _drop_text(self, text: str | bytes) -> None:
        self.text_frames_dropped += 1

    def _on_control(self, text: str | bytes) -> None:
        message = decode_control(text)
        if isinstance(message, PauseOutput):
            self.mux.pause_output(message.stream_id)
        elif isinstance(message, ResumeOutput):
            self.mux.resume_output(message.stream_id)
            self._output_pending()
        elif isinstance(message, PeerOffline):
            self.report(RelayStatus("offline", grace_s=message.grace_s))
        elif isinstance(message, PeerOnline):
            self.report(RelayStatus("online"))
        else:
            self.text_frames_dropped += 1

    async def _write_loop(self, ws: RelaySocket) -> None:
        loop = asyncio.get_running_loop()
        # On picows, frames are encoded behind room for the websocket header, which is
        # then written and masked in place: one copy of each payload to the socket. A
        # message built with message_with_headroom (process output) is framed in place
        # instead and picows copies and masks it in one pass.
        picows = isinstance(ws, PicowsRelaySocket)
        headroom = PICOWS_HEADROOM if picows else 0
        mux = self.mux
        while True:
            self._wake.clear()
            now = loop.time()
            deadline = mux.get_timer()
            if deadline is not None and deadline <= now:
                mux.handle_timer(now)
                self._dispatch_events()
            frames = mux.data_to_write(now, WRITE_BATCH_BYTES, headroom=headroom)
            if frames:
                for frame in frames:
                    if isinstance(ws, PicowsRelaySocket):
                        await ws.send_relay_frame(frame)
                    else:
                        await ws.send_frame(bytes(frame), WSMsgType.BINARY)
                self.notify_progress()
                # Another pass only if this one may have left something (the budget, or
                # news while a write waited): not one more empty pass per batch.
                if self._wake.is_set() or mux.has_output():
                    continue
            self._arm_timer(mux.get_timer())
            if not mux.has_output():
                self._flushed.set()
            self._idle_socket = ws if isinstance(ws, PicowsRelaySocket) else None
            try:
                await self._wake.wait()
            finally:
                self._idle_socket = None

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
            channel.end(reason)
            self.mux.reset_stream(stream_id, reason)
        self.channels.clear()


class _SocketEnded(Exception):
    """One of a socket's loops ended; the message says why."""


async def _ends_socket(loop: Coroutine[Any, Any, str | None], prefix: str = "") -> None:
    """Run one of a socket's loops and end the socket when it returns or fails."""
    try:
        result = await loop
    except Exception as exc:
        raise _SocketEnded(f"{prefix}: {exc}" if prefix else str(exc)) from exc
    if result is None:
        raise _SocketEnded("relay writer stopped")
    raise _SocketEnded(f"{prefix}: {result}" if prefix else result)


def _closed_reason(ws: RelaySocket, message: object) -> str:
    reason = f": {message}" if isinstance(message, str) and message else ""
    return f"relay websocket closed (code {ws.close_code}{reason})"
