"""The frame bus's NATS connection: :class:`CoreNatsClient`, core NATS on an asyncio
``Protocol`` around :mod:`~exec_server.rendezvous.cluster.nats_wire`.

Why not nats-py here: a forwarded frame is one publish on the sending node and one
delivery on the receiving one, and nats-py spends a buffer append, a flusher task
wake-up, a queue, a task step per message on them (about 15 us of Python each on this
VM, a third of a cross-node frame's cost, and a loop iteration of latency each way).
Here :meth:`CoreNatsClient.publish` writes to the transport at once and
``data_received`` hands each message to its subscriber's callback synchronously. The
shared state (JetStream KV) stays on nats-py.

What it keeps of nats-py's behaviour, for the bus:

* **Servers and failover**: the configured URLs (``nats://`` or ``tls://``, TLS also
  when the server's INFO requires it; credentials in a URL are used), tried in order
  at start (all failing: :class:`NatsConnectError`, :class:`NatsAuthError` when a
  server refused the credentials); after a loss, forever, rotating through them, each
  at most once per ``reconnect_wait_s``.
* **Auth**: user and password, token, or a ``.creds`` file (JWT, nonce signed with its
  nkey seed; a file holding only a seed signs as that nkey).
* **Callbacks** ``disconnected`` / ``reconnected`` (the bus resyncs its channels on a
  reconnect); subscriptions are renewed on every connection.
* **Liveness**: a ``PING`` every ``ping_interval_s``; more than
  ``max_outstanding_pings`` unanswered and the connection is dropped and redialled.
* **Bounded memory**: publishes while disconnected wait in a buffer of at most
  ``pending_size`` bytes, written after the subscriptions on the next connection;
  beyond it, and when the socket's own buffer holds more than ``pending_size`` (a
  server that stopped reading), :meth:`~CoreNatsClient.publish` raises
  :class:`NatsBufferFull` instead of growing. The bus's flow control keeps far below
  that, so it is a safety net, not backpressure.
* **Clean close**: its two tasks (reconnects, pings) are cancelled and awaited, the
  socket closed and waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import unquote, urlsplit

from ... import __version__
from .nats_connection import NatsClusterConfig
from .nats_wire import (
    CRLF,
    PING,
    PONG,
    ConnectOptions,
    Msg,
    Parser,
    ProtocolError,
    ServerError,
    ServerInfo,
    connect_command,
    load_credentials,
    nkey_public_key,
    publish_parts,
    sign_nonce,
    sub_command,
    unsub_command,
)
from .tasks import CLOSE_TIMEOUT_S, cancel_and_wait

__all__ = [
    "ClientConfig",
    "CoreNatsClient",
    "NatsAuthError",
    "NatsBufferFull",
    "NatsClientError",
    "NatsConnectError",
    "NatsNotConnected",
    "NatsServerError",
    "connect_core",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 4222
_PING = b"PING\r\n"
_PONG = b"PONG\r\n"
_JOIN_BELOW = 16 * 1024
"""Payloads below this are joined with their control line into one write."""

Subscriber = Callable[[Msg], None]
Callback = Callable[[], None]


class NatsClientError(Exception):
    """Base of this client's errors."""


class NatsConnectError(NatsClientError):
    """No configured server could be connected to."""


class NatsAuthError(NatsConnectError):
    """A server refused the credentials."""


class NatsServerError(NatsClientError):
    """The server answered ``-ERR``."""


class NatsNotConnected(NatsClientError):
    """The operation needs a live connection (closed, or between connections)."""


class NatsBufferFull(NatsClientError):
    """A publish would take the buffered bytes above ``pending_size``."""


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...]
    name: str = "exec-server"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    credentials_file: str | None = None
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    reconnect_wait_s: float = 0.5
    ping_interval_s: float = 20.0
    max_outstanding_pings: int = 2
    pending_size: int = 64 * 1024 * 1024
    echo: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is required")
        for url in self.servers:
            _Address.parse(url)
        if self.ping_interval_s <= 0 or self.max_outstanding_pings < 1:
            raise ValueError("need ping_interval_s > 0 and max_outstanding_pings >= 1")


@dataclass(frozen=True)
class _Address:
    url: str
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> _Address:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"not a nats:// or tls:// URL: {url!r}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"invalid port in NATS URL {url!r}") from None
        return cls(
            url,
            parts.hostname,
            port,
            parts.scheme == "tls",
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password is not None else None,
        )


class _Connection(asyncio.Protocol):
    """One socket to one server: parses what arrives and dispatches it at once."""

    def __init__(self, client: CoreNatsClient) -> None:
        loop = asyncio.get_running_loop()
        self.client = client
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            log.warning("%s: NATS protocol error: %s", self.client.name, exc)
            self._fail(NatsClientError(f"protocol error: {exc}"))
            self.abort()
            return
        subscribers = self.client._subscribers
        for event in events:
            if type(event) is Msg:
                subscriber = subscribers.get(event.sid)
                if subscriber is not None:
                    try:
                        subscriber[1](event)
                    except Exception:
                        log.exception(
                            "%s: a subscriber of %s failed", self.client.name, event.subject
                        )
            elif event is PING:
                self.write(_PONG)
            elif event is PONG:
                if self.pongs:
                    waiter = self.pongs.popleft()
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
            elif isinstance(event, ServerInfo):
                if not self.info.done():
                    self.info.set_result(event)
                else:
                    self.client._info = event
            elif isinstance(event, ServerError):
                self._server_error(event)

    def _server_error(self, error: ServerError) -> None:
        if not self.ready:
            cls = NatsAuthError if error.is_authorization else NatsServerError
            self._fail(cls(f"the NATS server answered: {error.message}"))
            return
        log.warning("%s: NATS error: %s", self.client.name, error.message)
        if error.closes_connection:
            self.abort()

    def _fail(self, exc: Exception) -> None:
        if not self.info.done():
            self.info.set_exception(exc)
        while self.pongs:
            waiter = self.pongs.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._fail(NatsNotConnected(f"connection lost ({exc!r})" if exc else "connection lost"))
        # Retrieve the exceptions nobody may await (a ping's, a handshake abandoned).
        if self.info.done() and not self.info.cancelled():
            self.info.exception()
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._connection_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        """Write now if nothing was written in this loop iteration yet (an isolated
        message goes out at once), else hold it for one write of all of them at the end
        of the iteration (a burst costs two system calls, not one per message). Either
        way in order."""
        if self._corked:
            self._held.append(data)
            return
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)
            self._corked = True
            self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        self._corked = False
        held = self._held
        if held:
            self._held = []
            if self.transport is not None and not self.closing:
                self.transport.writelines(held)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        held = sum(map(len, self._held)) if self._held else 0
        return held + (self.transport.get_write_buffer_size() if self.transport else 0)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def ping(self, waiter: asyncio.Future[None] | None) -> None:
        self.pongs.append(waiter)
        self.write(_PING)


class CoreNatsClient:
    """A core NATS connection (module docstring). Create with :meth:`connect`."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        disconnected: Callback | None = None,
        reconnected: Callback | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._addresses = [_Address.parse(url) for url in config.servers]
        self._disconnected = disconnected
        self._reconnected = reconnected
        self._subscribers: dict[int, tuple[str, Subscriber]] = {}
        self._next_sid = 1
        self._conn: _Connection | None = None
        self._info: ServerInfo | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._last_attempt: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.reconnects = 0

    @classmethod
    async def connect(
        cls,
        config: ClientConfig,
        *,
        disconnected: Callback | None = None,
        reconnected: Callback | None = None,
    ) -> CoreNatsClient:
        """Connect to the first server that accepts us (each tried once)."""
        client = cls(config, disconnected=disconnected, reconnected=reconnected)
        errors: list[str] = []
        refused: NatsAuthError | None = None
        for address in client._addresses:
            try:
                client._conn = await client._open(address)
                break
            except NatsAuthError as exc:
                refused = exc
                errors.append(f"{address.url}: {exc}")
            except (OSError, TimeoutError, NatsClientError, ssl.SSLError) as exc:
                errors.append(f"{address.url}: {exc or type(exc).__name__}")
        else:
            detail = "; ".join(errors)
            if refused is not None:
                raise NatsAuthError(f"NATS refused the credentials of {config.name} ({detail})")
            raise NatsConnectError(f"could not connect to NATS ({detail})")
        client._tasks.append(asyncio.ensure_future(client._supervise()))
        client._tasks.append(asyncio.ensure_future(client._ping_forever()))
        return client

    # --- state --------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def max_payload(self) -> int:
        info = self._info
        return info.max_payload if info is not None else 1024 * 1024

    @property
    def server_info(self) -> ServerInfo | None:
        return self._info

    # --- operations ---------------------------------------------------------------------

    def subscribe(self, subject: str, callback: Subscriber) -> int:
        """Deliver messages on ``subject`` to ``callback``, synchronously from the
        socket's read (it must not block); renewed on every reconnect. Its sid."""
        if self._closed:
            raise NatsNotConnected("the connection is closed")
        sid = self._next_sid
        command = sub_command(subject, sid)
        self._next_sid += 1
        self._subscribers[sid] = (subject, callback)
        if self._conn is not None:
            self._conn.write(command)
        return sid

    def unsubscribe(self, sid: int) -> None:
        if self._subscribers.pop(sid, None) is not None and self._conn is not None:
            self._conn.write(unsub_command(sid))

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        """Write a message to the socket now (or to the buffer while reconnecting)."""
        if len(payload) > self.max_payload:
            raise NatsClientError(
                f"a {len(payload)}-byte payload is above the server's max_payload "
                f"({self.max_payload})"
            )
        head, body = publish_parts(subject, payload, headers)
        conn = self._conn
        if conn is not None and not conn.closing:
            if conn.paused and conn.buffered() > self.config.pending_size:
                raise NatsBufferFull("the NATS server is not reading: its socket buffer is full")
            if len(body) < _JOIN_BELOW:
                conn.write(head + body + CRLF)
            else:
                conn.write(head)
                conn.write(body)
                conn.write(CRLF)
            return
        if self._closed:
            raise NatsNotConnected("the connection is closed")
        size = len(head) + len(body) + 2
        if self._pending_bytes + size > self.config.pending_size:
            raise NatsBufferFull("disconnected from NATS and the reconnect buffer is full")
        self._pending.append(head + body + CRLF)
        self._pending_bytes += size

    async def flush(self, timeout_s: float | None = None) -> None:
        """Return once the server has processed everything written before (PING/PONG)."""
        conn = self._conn
        if conn is None or conn.closing:
            raise NatsNotConnected("not connected to NATS")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.ping(waiter)
        async with asyncio.timeout(timeout_s or self.config.connect_timeout_s):
            await waiter

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self._pending.clear()
        self._pending_bytes = 0
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn._uncork()  # what this loop iteration wrote goes out before the close
            conn.closing = True
            conn.transport.close()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(conn.lost)
            except TimeoutError:
                conn.abort()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await asyncio.shield(conn.lost)

    # --- connecting ---------------------------------------------------------------------

    async def _open(self, address: _Address) -> _Connection:
        """Dial one server and complete the handshake (INFO, TLS, CONNECT, PING/PONG),
        then renew the subscriptions; the ready connection."""
        loop = asyncio.get_running_loop()
        self._last_attempt[address.url] = time.monotonic()
        async with asyncio.timeout(self.config.connect_timeout_s):
            transport, conn = await loop.create_connection(
                lambda: _Connection(self), address.host, address.port
            )
            try:
                info = await conn.info
                if address.tls or info.tls_required:
                    context = self.config.tls or ssl.create_default_context()
                    upgraded = await loop.start_tls(
                        transport, conn, context, server_hostname=address.host
                    )
                    if upgraded is None:
                        raise NatsConnectError("the TLS handshake failed")
                    conn.transport = upgraded
                conn.write(connect_command(self._connect_options(address, info), __version__))
                waiter: asyncio.Future[None] = loop.create_future()
                conn.ping(waiter)
                await waiter
            except BaseException:
                conn.abort()
                raise
        self._info = info
        conn.ready = True
        for sid, (subject, _) in self._subscribers.items():
            conn.write(sub_command(subject, sid))
        if self._pending:
            # Written in the order published, behind the subscriptions.
            for data in self._pending:
                conn.write(data)
            self._pending.clear()
            self._pending_bytes = 0
        return conn

    def _connect_options(self, address: _Address, info: ServerInfo) -> ConnectOptions:
        config = self.config
        user, password, token = config.user, config.password, config.token
        if address.user is not None:  # credentials in the URL take precedence
            if address.password is not None:
                user, password, token = address.user, address.password, None
            else:
                user, password, token = None, None, address.user
        jwt = signature = nkey = None
        if config.credentials_file is not None:
            jwt, seed = load_credentials(config.credentials_file)
            if info.nonce is None:
                raise NatsConnectError("the server sent no nonce to sign with the credentials")
            signature = sign_nonce(seed, info.nonce.encode())
            if jwt is None:
                nkey = nkey_public_key(seed)
        return ConnectOptions(
            name=config.name,
            user=user,
            password=password,
            token=token,
            jwt=jwt,
            signature=signature,
            nkey=nkey,
            echo=config.echo,
            tls_required=address.tls,
        )

    def _connection_lost(self, conn: _Connection) -> None:
        if conn is not self._conn:
            return  # a handshake that failed, or a connection already replaced
        self._conn = None
        if self._closed:
            return
        log.info("%s: disconnected from NATS", self.name)
        if self._disconnected is not None:
            try:
                self._disconnected()
            except Exception:
                log.exception("%s: the disconnected callback failed", self.name)

    async def _supervise(self) -> None:
        """Wait for the connection to go, then reconnect; forever."""
        index = 0
        while not self._closed:
            conn = self._conn
            if conn is not None:
                await asyncio.shield(conn.lost)  # a cancellation must not cancel it
                continue
            index = await self._reconnect(index + 1)

    async def _reconnect(self, start: int) -> int:
        """Try the servers in turn from ``start`` until one takes us; its index."""
        count = len(self._addresses)
        attempt = 0
        while True:
            index = (start + attempt) % count
            attempt += 1
            address = self._addresses[index]
            last = self._last_attempt.get(address.url)
            if last is not None:
                wait = last + self.config.reconnect_wait_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                self._conn = await self._open(address)
            except (OSError, TimeoutError, NatsClientError, ssl.SSLError) as exc:
                log.debug("%s: reconnecting to %s failed: %r", self.name, address.url, exc)
                if isinstance(exc, NatsAuthError):
                    log.warning("%s: %s refused the credentials: %s", self.name, address.url, exc)
                continue
            self.reconnects += 1
            log.info("%s: reconnected to NATS at %s", self.name, address.url)
            if self._reconnected is not None:
                try:
                    self._reconnected()
                except Exception:
                    log.exception("%s: the reconnected callback failed", self.name)
            return index

    async def _ping_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.ping_interval_s)
            conn = self._conn
            if conn is None:
                continue
            if len(conn.pongs) >= self.config.max_outstanding_pings:
                log.warning(
                    "%s: %d PINGs unanswered: dropping the connection",
                    self.name,
                    len(conn.pongs),
                )
                conn.abort()
                continue
            conn.ping(None)


async def connect_core(
    config: NatsClusterConfig,
    purpose: str,
    *,
    reconnected: Callback | None = None,
    disconnected: Callback | None = None,
    pending_size: int | None = None,
) -> CoreNatsClient:
    """A :class:`CoreNatsClient` for a node, configured as :func:`~exec_server.rendezvous.
    cluster.nats_connection.connect_nats` configures nats-py (same servers, auth, TLS,
    timeouts, reconnect forever)."""
    settings: dict[str, object] = {}
    if pending_size is not None:
        settings["pending_size"] = pending_size
    return await CoreNatsClient.connect(
        ClientConfig(
            servers=config.servers,
            name=f"exec-server rendezvous {config.node_id} ({purpose})",
            user=config.user,
            password=config.password,
            token=config.token,
            credentials_file=config.credentials_file,
            tls=config.tls,
            connect_timeout_s=config.connect_timeout_s,
            reconnect_wait_s=config.reconnect_wait_s,
            **settings,  # type: ignore[arg-type]
        ),
        reconnected=reconnected,
        disconnected=disconnected,
    )
