"""The frame bus's NATS connection: :class:`CoreNatsClient`, core NATS that reconnects.

Why not nats-py here: a forwarded frame is one publish on the sending node and one
delivery on the receiving one, and nats-py spends a buffer append, a flusher task
wake-up, a queue, a task step per message on them (about 15 us of Python each on this
VM, a third of a cross-node frame's cost, and a loop iteration of latency each way).
Here :meth:`CoreNatsClient.publish` writes to the transport at once and the socket's
read hands each message to its subscriber's callback synchronously. The shared state
(JetStream KV) stays on nats-py.

What lives where (modules of this package): the protocol as bytes in ``nats_wire``, one
socket (the asyncio ``Protocol`` that parses and dispatches) in ``nats_socket``,
credentials in ``nats_nkeys``, settings and errors in ``nats_client_config`` (re-exported
here). This module dials, handshakes, reconnects and buffers.

What it keeps of nats-py's behaviour, for the bus:

* **Servers and failover**: the configured URLs (``nats://`` or ``tls://``; credentials
  in a URL are used, never logged), tried in order at start (all failing:
  :class:`NatsConnectError`, :class:`NatsAuthError` when a server refused the
  credentials); after a loss, forever, rotating through them, each at most once per
  ``reconnect_wait_s``. The servers a NATS cluster announces (``connect_urls``) are not
  added: the configured list is the whole list.
* **TLS fails closed**: with a ``tls://`` URL, a server whose ``INFO`` requires it, or
  ``tls_required`` (a configured CA), the connection is TLS with the certificate and
  host name verified, or it is not made (a server offering no TLS is refused, and so
  is a configured TLS context that would not verify).
* **Auth**: user and password, token, or a ``.creds`` file (JWT, nonce signed with its
  nkey seed; a file holding only a seed signs as that nkey), read at every connection.
  A refusal is :class:`NatsAuthError` at start (saying so when no credentials are
  configured); while reconnecting every failure is retried, and logged as a warning
  when it is new for that server (or a minute old), and kept in
  :attr:`CoreNatsClient.last_error`.
* **Callbacks** ``disconnected`` / ``reconnected`` (the bus resyncs its channels on a
  reconnect); subscriptions are renewed on every connection, before what was published
  in between.
* **Liveness**: a ``PING`` every ``ping_interval_s``; ``max_outstanding_pings``
  unanswered and the connection is dropped and redialled.
* **Bounded memory**: publishes while disconnected wait in a buffer of at most
  ``pending_size`` bytes, written after the subscriptions on the next connection;
  beyond it, and when the socket's own buffer would hold more than ``pending_size`` (a
  server that stopped reading), :meth:`~CoreNatsClient.publish` raises
  :class:`NatsBufferFull` instead of growing. The bus's flow control keeps far below
  that, so it is a safety net, not backpressure. A message above the server's
  ``max_payload`` (headers included) is refused before it is written.
* **Clean close**: its two tasks (reconnects, pings) are cancelled and awaited, the
  socket closed and waited for; a handshake cancelled or failed aborts its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from ... import __version__
from .nats_client_config import (
    ClientConfig,
    NatsAuthError,
    NatsBufferFull,
    NatsClientError,
    NatsConnectError,
    NatsNotConnected,
    NatsServerError,
    ServerAddress,
)
from .nats_nkeys import connect_options
from .nats_socket import NatsSocket, Subscriber
from .nats_wire import (
    CRLF,
    DEFAULT_MAX_PAYLOAD,
    ServerInfo,
    connect_command,
    publish_parts,
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
]

log = logging.getLogger(__name__)

_JOIN_BELOW = 16 * 1024
"""Payloads below this are joined with their control line into one write."""
_REPORT_EVERY_S = 60.0
"""How often the same reconnect failure of one server is logged as a warning."""
_DIAL_ERRORS = (OSError, TimeoutError, NatsClientError, ssl.SSLError)

Callback = Callable[[], None]


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
        self._addresses = [ServerAddress.parse(url) for url in config.servers]
        self._disconnected = disconnected
        self._reconnected = reconnected
        self._subscribers: dict[int, tuple[str, Subscriber]] = {}
        self._next_sid = 1
        self._conn: NatsSocket | None = None
        self._info: ServerInfo | None = None
        self._max_payload = DEFAULT_MAX_PAYLOAD
        """The current server's (kept apart from ``_info``: read on every publish)."""
        self._pending_size = config.pending_size
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._last_attempt: dict[str, float] = {}
        self._reported: dict[str, tuple[str, float]] = {}
        """Per server, the last failure logged as a warning and when."""
        self._last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._after_read: Callback | None = None
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
                errors.append(f"{address.label}: {exc}")
            except _DIAL_ERRORS as exc:
                errors.append(f"{address.label}: {exc or type(exc).__name__}")
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
        return self._max_payload

    @property
    def server_info(self) -> ServerInfo | None:
        return self._info

    @property
    def after_read(self) -> Callback | None:
        """Called from the socket's read once the messages of one read were handed to
        their subscribers (a subscriber that gathers its output writes it then)."""
        return self._after_read

    @after_read.setter
    def after_read(self, callback: Callback | None) -> None:
        self._after_read = callback
        if self._conn is not None:
            self._conn.after_read = callback

    def last_in_read(self) -> bool:
        """From a subscriber: its message is the last event of the socket's read (what
        it gathered can be written now; ``after_read`` comes next either way)."""
        conn = self._conn
        return conn is not None and conn.last_in_read

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed or the last connection was dropped
        (None once connected again)."""
        return self._last_error

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
        head, body = publish_parts(subject, payload, headers)
        length = len(body)
        # The server counts the header block too (HPUB's total size), and answers a
        # message above its max_payload by closing the connection.
        total = len(head) - head.index(CRLF) - 2 + length if headers else length
        self._check_size(total)
        if length < _JOIN_BELOW:
            self._write(head + body + CRLF, None)
        else:
            self._write(head, body)

    def publish_with_header(self, subject: bytes, header: bytes, payload: bytes) -> None:
        """:meth:`publish` of an HPUB whose parts are encoded already: ``subject`` by
        :func:`~exec_server.rendezvous.cluster.nats_wire.encode_subject`, ``header`` a
        whole header block (``NATS/1.0\\r\\n...\\r\\n\\r\\n``, see
        :func:`~exec_server.rendezvous.cluster.nats_wire.header_block_start`). One
        message built with one copy of the payload (the frame bus's path)."""
        header_size = len(header)
        total = header_size + len(payload)
        self._check_size(total)
        if len(payload) < _JOIN_BELOW:
            self._write(
                b"HPUB %b %d %d\r\n%b%b\r\n" % (subject, header_size, total, header, payload),
                None,
            )
        else:
            self._write(b"HPUB %b %d %d\r\n%b" % (subject, header_size, total, header), payload)

    def _check_size(self, total: int) -> None:
        if total > self._max_payload:
            raise NatsClientError(
                f"a {total}-byte message (payload and headers) is above the server's "
                f"max_payload ({self._max_payload})"
            )

    def _write(self, head: bytes, body: bytes | None) -> None:
        """Write a message (``head`` alone, CRLF included, or ``head``, ``body`` and a
        CRLF) to the socket, or to the buffer while reconnecting."""
        size = len(head) if body is None else len(head) + len(body) + 2
        conn = self._conn
        if conn is not None and not conn.closing:
            if conn.buffered() + size > self._pending_size:
                raise NatsBufferFull("the NATS server is not reading: its socket buffer is full")
            conn.write(head)
            if body is not None:
                conn.write(body)
                conn.write(CRLF)
            return
        if self._closed:
            raise NatsNotConnected("the connection is closed")
        if self._pending_bytes + size > self._pending_size:
            raise NatsBufferFull("disconnected from NATS and the reconnect buffer is full")
        self._pending.append(head if body is None else head + body + CRLF)
        self._pending_bytes += size

    async def flush(self, timeout_s: float | None = None) -> None:
        """Return once the server has processed everything written before (PING/PONG).
        Between connections it raises :class:`NatsNotConnected` at once rather than wait
        for the next one (what is buffered meanwhile is written after the
        subscriptions when it comes)."""
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
            conn.uncork()  # what this loop iteration wrote goes out before the close
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

    async def _open(self, address: ServerAddress) -> NatsSocket:
        """Dial one server and complete the handshake (INFO, TLS, CONNECT, PING/PONG),
        then renew the subscriptions and write what waited; the ready connection."""
        loop = asyncio.get_running_loop()
        self._last_attempt[address.url] = time.monotonic()
        async with asyncio.timeout(self.config.connect_timeout_s):
            transport, conn = await loop.create_connection(
                self._new_socket, address.host, address.port
            )
            try:
                info = await conn.info
                if not info.headers:  # every frame is an HPUB
                    raise NatsConnectError(
                        f"{address.label} does not support message headers (nats-server 2.2+)"
                    )
                if address.tls or info.tls_required or self.config.tls_required:
                    conn.transport = await self._start_tls(loop, transport, conn, address, info)
                conn.write(
                    connect_command(connect_options(self.config, address, info), __version__)
                )
                waiter: asyncio.Future[None] = loop.create_future()
                conn.ping(waiter)
                await waiter
                if conn.closing:  # lost after the PONG, before this resumed
                    raise NatsNotConnected("the server closed the connection after the handshake")
            except NatsAuthError as exc:
                conn.abort()
                if conn.info.done() and self._has_no_credentials(address):
                    raise NatsAuthError(
                        f"{exc} (it requires credentials and none are configured)"
                    ) from exc
                raise
            except BaseException:
                conn.abort()
                raise
        self._on_info(info)
        conn.ready = True
        conn.after_read = self._after_read  # as it is now (it may be set while dialling)
        for sid, (subject, _) in self._subscribers.items():
            conn.write(sub_command(subject, sid))
        if self._pending:
            # Written in the order published, behind the subscriptions.
            for data in self._pending:
                conn.write(data)
            self._pending.clear()
            self._pending_bytes = 0
        return conn

    async def _start_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        conn: NatsSocket,
        address: ServerAddress,
        info: ServerInfo,
    ) -> asyncio.Transport:
        """The connection upgraded to TLS, the server's certificate and name verified
        (by ``config.tls``, else the system's trust store)."""
        if not (info.tls_required or info.tls_available):
            raise NatsConnectError(f"{address.label} does not offer TLS, which is required")
        context = self.config.tls or ssl.create_default_context()
        upgraded = await loop.start_tls(transport, conn, context, server_hostname=address.host)
        if upgraded is None:
            raise NatsConnectError("the TLS handshake failed")
        return upgraded

    def _has_no_credentials(self, address: ServerAddress) -> bool:
        config = self.config
        return address.user is None and not (config.user or config.token or config.credentials_file)

    def _new_socket(self) -> NatsSocket:
        return NatsSocket(
            self.name,
            self._subscribers,
            self._on_info,
            self._connection_lost,
            self._dropped,
        )

    def _on_info(self, info: ServerInfo) -> None:
        self._info = info
        self._max_payload = info.max_payload

    def _dropped(self, reason: str) -> None:
        self._last_error = reason

    def _connection_lost(self, conn: NatsSocket) -> None:
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
                if self._conn is conn:  # its loss was not handed to us: never spin on it
                    self._conn = None
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
            except _DIAL_ERRORS as exc:
                self._report(address, exc)
                continue
            except Exception as exc:  # a bug must not end reconnecting for good
                log.exception("%s: reconnecting to %s failed", self.name, address.label)
                self._report(address, exc)
                continue
            self.reconnects += 1
            self._last_error = None
            self._reported.clear()
            log.info("%s: reconnected to NATS at %s", self.name, address.label)
            if self._reconnected is not None:
                try:
                    self._reconnected()
                except Exception:
                    log.exception("%s: the reconnected callback failed", self.name)
            return index

    def _report(self, address: ServerAddress, exc: BaseException) -> None:
        """Log a failed reconnect: as a warning when it is new for that server (or the
        last warning is :data:`_REPORT_EVERY_S` old), else at debug, so a server that
        refuses the credentials or the certificate is never retried in silence nor
        logged twice a second."""
        what = "refused the credentials" if isinstance(exc, NatsAuthError) else "failed"
        text = f"{exc or type(exc).__name__}"
        self._last_error = f"{address.label}: {text}"
        now = time.monotonic()
        last = self._reported.get(address.label)
        if last is None or last[0] != text or now - last[1] >= _REPORT_EVERY_S:
            self._reported[address.label] = (text, now)
            log.warning("%s: reconnecting to %s %s: %s", self.name, address.label, what, text)
        else:
            log.debug("%s: reconnecting to %s %s: %s", self.name, address.label, what, text)

    async def _ping_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.ping_interval_s)
            conn = self._conn
            if conn is not None:
                self._check_liveness(conn)

    def _check_liveness(self, conn: NatsSocket) -> None:
        """One liveness tick: drop the connection if the PINGs of the last
        ``max_outstanding_pings`` ticks are all unanswered, else send one more. A
        flush's PING does not count: it may have been sent a moment ago."""
        unanswered = sum(1 for waiter in conn.pongs if waiter is None)
        if unanswered >= self.config.max_outstanding_pings:
            log.warning("%s: %d PINGs unanswered: dropping the connection", self.name, unanswered)
            self._last_error = "the server stopped answering PINGs"
            conn.abort()
            return
        conn.ping(None)
