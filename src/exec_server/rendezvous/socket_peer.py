"""One admitted relay socket's outbound queue and writer, and the route records its
frames are counted against (the router's back-pressure reads both)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..relay.control import ControlMessage, encode_control
from .router_config import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_FRAMES
from .url_signing import UrlRole

__all__ = ["SOCKET_CLOSE_TIMEOUT_S", "FrameSink", "ImmediateSink", "SocketPeer"]

log = logging.getLogger(__name__)

SOCKET_CLOSE_TIMEOUT_S = 2.0
"""Longest wait for a websocket close handshake before the transport is cut."""


class FrameSink(Protocol):
    """The part of a websocket the router writes to (aiohttp's ``WebSocketResponse``)."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class ImmediateSink(FrameSink, Protocol):
    """A sink that can also write a frame synchronously (the relay's picows socket):
    a peer whose queue is empty writes through it without waking its writer task."""

    def write_now(self, data: bytes | memoryview | str) -> bool:
        """Write ``data`` now; False (nothing written) when it must wait or is closed."""
        ...


_SentCallback = Callable[["SocketPeer", "_StreamRoute", int], None]

_socket_ids = itertools.count(1)


class SocketPeer:
    """One admitted relay websocket: its grant, outbound queue and writer task.

    Queue entries are binary frames or control texts, each with the legacy stream it is
    counted against (``None`` for the rest); the router hears of every counted frame
    written (``on_sent``), which is how paused streams are resumed.
    """

    remote = False
    """True for a peer standing for another rendezvous node (cluster)."""

    def __init__(
        self,
        sink: FrameSink,
        role: UrlRole,
        environment_id: str,
        nonce: str,
        *,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES,
        label: str = "",
        control: bool = False,
    ) -> None:
        self.sink = sink
        self._write_now: Callable[[bytes | memoryview | str], bool] | None = getattr(
            sink, "write_now", None
        )
        self._write_binary_now: Callable[[bytes | memoryview], bool] | None = getattr(
            sink, "write_binary_now", self._write_now
        )
        self._idle = False
        """The writer waits for frames (none is being written)."""
        self.role = role
        self.environment_id = environment_id
        self.nonce = nonce
        self.label = label or f"{role.value} socket for {environment_id}"
        self.control = control
        """The socket negotiated :data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL`."""
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_frames = max_queue_frames
        self.serial = 0
        """Admission order (set by :meth:`Router.attach`): only a newer socket reclaims."""
        self.socket_id = f"s{next(_socket_ids)}"
        """Unique in this process; names the socket in the cluster's shared records."""
        self.queued_bytes = 0
        self.closed = False
        self.owned: set[str] = set()
        """Harness sockets: ids of the streams this socket owns."""
        self.paused: set[_StreamRoute] = set()
        """Harness sockets: legacy streams paused because this socket is slow."""
        self.overflow_logged = False
        self.on_sent: _SentCallback | None = None
        self._queue: deque[tuple[bytes | str, _StreamRoute | None]] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SocketPeer {self.label}>"

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the writer task (call once, from the event loop)."""
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_loop())

    def has_room(self) -> bool:
        return len(self._queue) < self.max_queue_frames and self.queued_bytes < self.max_queue_bytes

    def try_enqueue(self, data: bytes) -> bool:
        """Queue ``data`` unless that would exceed a bound (an empty queue takes any
        frame); False when refused or closed."""
        if self.closed:
            return False
        queue = self._queue
        if queue and (
            len(queue) >= self.max_queue_frames
            or self.queued_bytes + len(data) > self.max_queue_bytes
        ):
            return False
        self._push(data, None)
        return True

    def force_enqueue(self, data: bytes | str, stream: _StreamRoute | None = None) -> bool:
        """Queue ``data`` regardless of the bounds (control frames, frames whose sender
        already waited for room, legacy frames the router bounds itself), counted against
        ``stream`` when given; False only when closed."""
        if self.closed:
            return False
        self._push(data, stream)
        return True

    def send_control(self, message: ControlMessage) -> None:
        """Queue a control message, if this socket negotiated them."""
        if self.control:
            self.force_enqueue(encode_control(message))

    def write_at_once(self, data: bytes | memoryview, stream: _StreamRoute | None) -> bool:
        """Write ``data`` now if nothing is queued before it and the sink can take it
        without waiting (as if queued and written at once, counted against ``stream``);
        False, with nothing written, otherwise. ``data`` is not kept."""
        write = self._write_binary_now
        if not self._idle or self._queue or self.closed or write is None or not write(data):
            return False
        if stream is not None and self.on_sent is not None:
            self.on_sent(self, stream, len(data))
        return True

    def _push(self, data: bytes | str, stream: _StreamRoute | None) -> None:
        if self._idle and not self._queue and self._write_now is not None and self._write_now(data):
            if stream is not None and self.on_sent is not None:
                self.on_sent(self, stream, len(data))
            return
        self._queue.append((data, stream))
        size = len(data)
        self.queued_bytes += size
        if stream is not None:
            stream.queued_bytes += size
        if not self.has_room():
            self._room.clear()
        self._wake.set()

    async def wait_for_room(self) -> None:
        """Return once the queue is below its bounds or the socket is closed."""
        while not self.closed and not self.has_room():
            self._room.clear()
            await self._room.wait()

    async def _write_loop(self) -> None:
        queue = self._queue
        sink = self.sink
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    self._idle = True
                    try:
                        await self._wake.wait()
                    finally:
                        self._idle = False
                    continue
                data, stream = queue.popleft()
                size = len(data)
                self.queued_bytes -= size
                if stream is not None:
                    stream.queued_bytes -= size
                if not self._room.is_set() and self.has_room():
                    self._room.set()
                if type(data) is bytes:
                    await sink.send_bytes(data)
                else:
                    assert isinstance(data, str)
                    await sink.send_str(data)
                if stream is not None and self.on_sent is not None:
                    self.on_sent(self, stream, size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket is gone; its reader sees the close next
            log.debug("%s: write failed: %s", self.label, exc)
            self._mark_closed()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                    await self.sink.close()

    def _mark_closed(self) -> None:
        self.closed = True
        for data, stream in self._queue:
            if stream is not None:
                stream.queued_bytes -= len(data)
        self._queue.clear()
        self.queued_bytes = 0
        self._room.set()
        self._wake.set()

    async def aclose(self, *, code: int = 1000, message: bytes = b"") -> None:
        """Drop queued frames, stop the writer and close the websocket."""
        self._mark_closed()
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self.sink.close(code=code, message=message)


@dataclass(eq=False, slots=True)
class _StreamRoute:
    stream_id: str
    nonce: str
    """Nonce of the URL that claimed the stream; only it may re-claim."""
    owner: SocketPeer | None
    reliable: bool
    """The harness's frames carry the capability flag (mirrored in our resets)."""
    orphan_timer: asyncio.TimerHandle | None = None
    queued_bytes: int = 0
    """Legacy frames of this stream queued on a harness socket."""
    paused: bool = False
    """The environment was asked to pause this stream's output."""
    stall_timer: asyncio.TimerHandle | None = None
    """Running while paused: when it fires the stream is reset (``harness_too_slow``)."""
    ended: bool = False
    remote: bool = False
    """Cluster: the owner is (or, while orphaned, was) a harness on another node."""
    remote_paused: bool = False
    """Cluster: the harness's node asked for this stream's output to be paused."""
    legacy_seen: bool = False
    """A frame without the capability flag was routed: frames lost between nodes
    cannot be repaired, the stream must be reset."""


@dataclass(eq=False, slots=True)
class _EnvironmentRoute:
    environment_id: str
    socket: SocketPeer | None = None
    streams: dict[str, _StreamRoute] = field(default_factory=dict)
    harnesses: set[SocketPeer] = field(default_factory=set)
    grace_timer: asyncio.TimerHandle | None = None
    """Running while the environment is offline but expected back."""
    grace_deadline: float = 0.0
    """Loop time at which ``grace_timer`` fires."""
    offline_told: bool = False
    """Harness sockets were told the environment is offline (so tell them it is back)."""
