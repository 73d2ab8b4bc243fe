"""One socket to one NATS server: :class:`NatsSocket`, the asyncio ``Protocol`` under
:class:`~exec_server.rendezvous.cluster.nats_client.CoreNatsClient`.

It feeds what arrives to :class:`~exec_server.rendezvous.cluster.nats_wire.Parser` and
acts on each event at once, in the read: a message goes to its subscriber's callback
(one that raises is logged and the read goes on), a ``PING`` is answered, a ``PONG``
completes the oldest ``PING`` sent (a flush, a handshake, or a liveness ping), an
``INFO`` goes to the owner, and ``-ERR`` either fails the handshake under way
(:class:`~exec_server.rendezvous.cluster.nats_client_config.NatsAuthError` for an
authorization error) or, on a ready connection, is logged and, unless it is one of the
errors after which the server keeps the connection (a permissions violation, an
invalid subject), drops it. Whatever is not the protocol drops the connection too.

A subscriber can tell whether its message is the read's last event
(``last_in_read``), and once the events of one read are handled the owner's
``after_read`` runs (the frame bus writes the websocket frames of that read at the
first of the two). Writes are corked per loop
iteration (:meth:`NatsSocket.write`). Dialling, the
handshake, reconnecting and the owner's state are the client's; this class knows
nothing of them but the callbacks it is given.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast

from .nats_client_config import NatsAuthError, NatsClientError, NatsNotConnected, NatsServerError
from .nats_wire import PING, PONG, Msg, Parser, ProtocolError, ServerError, ServerInfo

__all__ = ["NatsSocket", "Subscriber"]

log = logging.getLogger(__name__)

_PING = b"PING\r\n"
_PONG = b"PONG\r\n"

Subscriber = Callable[[Msg], None]


class NatsSocket(asyncio.Protocol):
    """One socket to one server (module docstring)."""

    def __init__(
        self,
        name: str,
        subscribers: Mapping[int, tuple[str, Subscriber]],
        on_info: Callable[[ServerInfo], None],
        on_lost: Callable[[NatsSocket], None],
        on_error: Callable[[str], None],
        after_read: Callable[[], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self._subscribers = subscribers
        """The owner's subscriptions by sid (read at each message: always current)."""
        self._on_info = on_info
        self._on_lost = on_lost
        self._on_error = on_error
        self.after_read = after_read
        """Called once the messages of one read were handed to their subscribers."""
        self.last_in_read = False
        """While a subscriber runs: its message is the last event of the read."""
        self.parser = Parser()
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[ServerInfo] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.pongs: deque[asyncio.Future[None] | None] = deque()
        """One entry per PING sent: a flush's future, or None (a liveness ping)."""
        self.ready = False
        self.paused = False
        self.closing = False
        """Aborted or lost: writes are dropped (the connection's loss is being handled)."""
        self._loop = loop
        self._corked = False
        self._held: list[bytes] = []
        """Writes held until the end of this loop iteration (see :meth:`write`)."""
        self._held_bytes = 0
        self._failure: Exception | None = None
        """Why the connection became unusable (a handshake's -ERR, a protocol error):
        what a PING sent after it fails with, and what the loss reports."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self._drop(f"NATS protocol error: {exc}")
            return
        subscribers = self._subscribers
        last = events[-1] if events else None
        for event in events:
            if type(event) is Msg:
                subscriber = subscribers.get(event.sid)
                if subscriber is not None:
                    self.last_in_read = event is last
                    try:
                        subscriber[1](event)
                    except Exception:
                        log.exception("%s: a subscriber of %s failed", self.name, event.subject)
            elif event is PING:
                self.write(_PONG)
            elif event is PONG:
                self._pong()
            elif isinstance(event, ServerInfo):
                if not self.info.done():
                    self.info.set_result(event)
                else:
                    self._on_info(event)
            elif isinstance(event, ServerError):
                self._server_error(event)
        if self.after_read is not None and events:
            try:
                self.after_read()
            except Exception:
                log.exception("%s: the after-read callback failed", self.name)

    def _pong(self) -> None:
        if self.pongs:
            waiter = self.pongs.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _server_error(self, error: ServerError) -> None:
        if not self.ready:
            cls = NatsAuthError if error.is_authorization else NatsServerError
            self._fail(cls(f"the NATS server answered: {error.message}"))
            return
        if error.closes_connection:
            self._drop(f"NATS error: {error.message}")
        else:
            log.warning("%s: NATS error: %s", self.name, error.message)

    def _drop(self, reason: str) -> None:
        """End a connection the server made unusable (the owner redials)."""
        log.warning("%s: %s; dropping the connection", self.name, reason)
        self._on_error(reason)
        self._fail(NatsClientError(reason))
        self.abort()

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        if not self.info.done():
            self.info.set_exception(exc)
        while self.pongs:
            waiter = self.pongs.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._held.clear()
        self._held_bytes = 0
        # What is still waiting fails with the reason the server gave, if it gave one.
        self._fail(
            self._failure
            or NatsNotConnected(f"connection lost ({exc!r})" if exc else "connection lost")
        )
        # Retrieve the exceptions nobody may await (a ping's, a handshake abandoned).
        if self.info.done() and not self.info.cancelled():
            self.info.exception()
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        """Write now if nothing was written in this loop iteration yet (an isolated
        message goes out at once), else hold it for one write of all of them at the end
        of the iteration (a burst costs two system calls, not one per message). Either
        way in order; dropped once the connection is going."""
        if self.closing:
            return
        if self._corked:
            self._held.append(data)
            self._held_bytes += len(data)
            return
        transport = self.transport
        if transport is not None:
            transport.write(data)
            self._corked = True
            self._loop.call_soon(self.uncork)

    def uncork(self) -> None:
        """Write what this loop iteration held back (also before a close)."""
        self._corked = False
        held = self._held
        if held:
            self._held = []
            self._held_bytes = 0
            if self.transport is not None and not self.closing:
                self.transport.writelines(held)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        transport = self.transport
        return self._held_bytes + (transport.get_write_buffer_size() if transport else 0)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def ping(self, waiter: asyncio.Future[None] | None) -> None:
        """Send a PING; ``waiter`` completes with its PONG, or fails when the
        connection goes first (at once if it is already going)."""
        if self.closing or self._failure is not None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(self._failure or NatsNotConnected("the connection is closing"))
            return
        self.pongs.append(waiter)
        self.write(_PING)
