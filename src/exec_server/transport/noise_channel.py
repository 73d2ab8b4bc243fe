"""The harness's encrypted relay stream: ``/connect`` with a fresh key, handshake, then a
:class:`~exec_server.transport.channel.MessageChannel`.

:func:`open_rendezvous_channel` is how the SDK reaches an environment through a registry
(``ExecServerClient.connect(rendezvous=..., environment_id=...)`` and every CLI command),
against ``exec-server rendezvous`` or any registry of Codex's Noise contract:

1. a fresh :class:`~exec_server.relay.noise.NoiseIdentity` per connection attempt (as
   Codex's harness: the key lives in this process's memory only, for one connection);
2. ``POST .../connect`` with its public key (the handshake's ephemeral key pairs are
   generated while the registry answers: :func:`connect_with_ephemeral`). **What the
   registry answers picks the relay:** a Noise bundle (executor key, registration id,
   single-use ``harness_key_authorization``, websocket URL) means the encrypted relay; a plain
   ``{"url"}`` (a 0.133-era registry that ignored the key), or our rendezvous's 409
   ``no_noise_registration`` (the environment registered for the legacy cleartext
   relay: an 0.133-era executor, or ``serve --remote-transport legacy``), means the
   cleartext ``role=harness`` relay, unless the client requires encryption
   (``ClientConfig.encryption="required"``), which then fails with a clear error.
   The fallback is logged as a warning;
3. the hybrid IK handshake over that URL (:class:`NoiseHarnessChannel`); message 1
   carries the authorization, and the environment answers only after the registry
   vouched for the key. A handshake that fails for a reason that may clear (no answer,
   the socket dropped, the environment was at its bound of pending validations, as a
   burst of connections can make it) is retried with a new key and bundle, after a
   short jittered backoff (:data:`RETRY_INITIAL_S` doubling to :data:`RETRY_MAX_S`),
   until the connect timeout.

:class:`NoiseHarnessChannel` then behaves like
:class:`~exec_server.transport.harness_relay.HarnessRelayChannel`: with our environment
the stream is reliable and survives physical reconnects (the same URL is redialed, on
the other nodes of a rendezvous cluster too when ``alternate_bases`` lists them, and
the stream resumes, its ciphertext retransmitted as sent); with a Codex executor the
stream is Codex's and ends with its socket, and the SDK recovers the session on a new
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from aiohttp import ClientSession, WSMsgType

from ..errors import ExecServerError
from ..relay.events import PeerMode
from ..relay.noise import InitiatorEphemeral, NoiseError, NoiseIdentity
from ..relay.noise.noise_mux import HandshakeFailed, NoiseBundle, NoiseStreamMux
from ..relay.stream_mux import MuxRole
from .channel import MessageChannel
from .failover import alternate_urls
from .harness_relay import CLOSE_FLUSH_S, connect_harness_relay
from .harness_sockets import HARNESS_RECONNECT_DEADLINE_S, HarnessSockets
from .reconnect import backoff
from .registry_client import HarnessUrl, NoiseConnectBundle, RegistryClient, RegistryError
from .relay_connection import (
    RelayConfig,
    RelayConnection,
    RelayStreamChannel,
    dial_relay_socket,
)
from .relay_status import StatusCallback
from .websocket import AnyWebSocket

__all__ = [
    "Encryption",
    "NoiseConnectFailed",
    "NoiseHarnessChannel",
    "connect_noise_relay",
    "connect_with_ephemeral",
    "open_rendezvous_channel",
]

log = logging.getLogger(__name__)

Encryption = Literal["auto", "required"]
"""``auto``: encrypted whenever the registry offers it (a bundle), cleartext for
0.133-era environments; ``required``: encrypted or nothing."""

CONNECT_WRITE_STEPS = 8
"""Event-loop steps a ``/connect`` request is given to reach its socket before the
handshake's ephemeral keys are generated (fewer if it is answered sooner). Measured
against the project's rendezvous: a kept-alive connection writes at the second step; on
a new connection the rendezvous's handler started after the sixth to eighth."""

#: Backoff between connection attempts (each with a new key and bundle) of one dial.
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 1.0


class NoiseConnectFailed(ExecServerError):
    """The encrypted connection could not be set up; ``transient`` says whether a new
    attempt (a new bundle) may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class NoiseHarnessChannel:
    """One encrypted harness stream over a rendezvous (see the module docstring).

    It owns its HTTP session, its current socket and its supervisor task (started by
    :func:`connect_noise_relay`, cancelled and awaited by :meth:`close`).
    """

    transport_name = "relay"
    parse_error_prefix = "failed to parse relay JSON-RPC message from exec-server relay"

    def __init__(
        self,
        url: str,
        http: Any,
        *,
        config: RelayConfig | None,
        reconnect_deadline_s: float,
        max_message_bytes: int,
        on_status: StatusCallback | None = None,
        alternates: Sequence[str] = (),
    ) -> None:
        relay_config = config or RelayConfig()
        self.mux = NoiseStreamMux(MuxRole.HARNESS, relay_config.mux)
        self.connection = RelayConnection(
            MuxRole.HARNESS,
            relay_config,
            on_status=on_status,
            mux=self.mux,
            on_stream=self._on_opened,
            on_event=self._on_event,
        )
        self.stream_id = str(uuid.uuid4())
        self._opened: asyncio.Future[RelayStreamChannel] = (
            asyncio.get_running_loop().create_future()
        )
        self.sockets = HarnessSockets(
            url,
            http,
            self.connection,
            stream_id=self.stream_id,
            reconnect_deadline_s=reconnect_deadline_s,
            max_message_bytes=max_message_bytes,
            alternates=alternates,
        )

    @property
    def opened(self) -> bool:
        """Whether the handshake completed (the channel exists)."""
        future = self._opened
        return future.done() and not future.cancelled() and future.exception() is None

    @property
    def channel(self) -> RelayStreamChannel:
        """The stream's channel (once the handshake completed)."""
        return self._opened.result()

    @property
    def reliable(self) -> bool:
        """True when the peer is this project's environment (our reliable relay under
        Noise), false for a Codex executor."""
        return self.channel.stream.mode is PeerMode.RELIABLE

    def _on_opened(self, channel: RelayStreamChannel) -> None:
        if channel.stream_id == self.stream_id and not self._opened.done():
            self._opened.set_result(channel)

    def _on_event(self, event: object) -> None:
        if (
            isinstance(event, HandshakeFailed)
            and event.stream_id == self.stream_id
            and not self._opened.done()
        ):
            origin = "the environment refused it" if event.remote else "it failed"
            self._opened.set_exception(
                NoiseConnectFailed(
                    f"encrypted relay handshake with the environment: {origin} ({event.reason})",
                    transient=True,
                )
            )

    async def handshake(
        self,
        ws: AnyWebSocket,
        bundle: NoiseConnectBundle,
        identity: NoiseIdentity,
        *,
        ephemeral: InitiatorEphemeral | None = None,
    ) -> None:
        """Start the stream's handshake on ``ws`` and wait for it (the caller bounds
        the wait); the supervisor drives ``ws`` and every later socket. ``ephemeral``:
        the handshake's key pairs, if generated ahead (:func:`open_rendezvous_channel`)."""
        noise_bundle = NoiseBundle(
            bundle.environment_id,
            bundle.executor_registration_id,
            bundle.executor_public_key,
            bundle.harness_key_authorization,
        )
        now = self.connection.now()
        self.mux.open_noise_stream(self.stream_id, noise_bundle, identity, now, ephemeral=ephemeral)
        self.sockets.ws = ws
        # The claim and message 1 go out now, not after the supervisor's tasks start, and
        # in one TCP segment: the rendezvous then wakes once and forwards both together.
        # A socket that is already gone is left to the supervisor (it fails the
        # handshake, and the caller retries with a new bundle).
        with _corked(ws), contextlib.suppress(ConnectionError):
            for frame in self.mux.data_to_send(now):
                await ws.send_frame(bytes(frame), WSMsgType.BINARY)
        self.sockets.supervise(ws, finished=self._finished, give_up=self._give_up)
        # Awaited directly: a cancelled wait cancels the future, which close() expects.
        await self._opened

    def _finished(self) -> bool:
        """Whether a lost socket ends the supervisor: the stream ended, or its handshake
        failed (the waiter has the error)."""
        if not self.opened:
            return self.mux.handshaking == 0
        return self.channel.ended

    def _give_up(self, why: str) -> None:
        if self.opened:
            self.channel.end(why)
        else:
            self.mux.cancel_noise_stream(self.stream_id, why)
            self.connection.poke()

    async def receive(self) -> bytes:
        return await self.channel.receive()

    async def send(self, message: bytes) -> None:
        await self.channel.send(message)

    async def close(self, reason: str | None = None) -> None:
        if self.opened and not self.channel.ended:
            await self.channel.close(reason or "harness closed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self.connection.flushed()
        elif not self._opened.done():
            self._opened.cancel()
        elif not self._opened.cancelled():
            self._opened.exception()  # a failed handshake: its error was reported already
        await self.sockets.close()


@contextlib.contextmanager
def _corked(ws: AnyWebSocket) -> Iterator[None]:
    """Hold back partial TCP segments while the block writes (Linux ``TCP_CORK``; a no-op
    where the option or the socket is not available)."""
    sock = ws.get_extra_info("socket")
    cork = getattr(socket, "TCP_CORK", None)
    if sock is None or cork is None:
        yield
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


async def connect_noise_relay(
    bundle: NoiseConnectBundle,
    identity: NoiseIdentity,
    *,
    ephemeral: InitiatorEphemeral | None = None,
    timeout_s: float = 10.0,
    config: RelayConfig | None = None,
    reconnect_deadline_s: float = HARNESS_RECONNECT_DEADLINE_S,
    max_message_bytes: int = 64 * 1024 * 1024,
    on_status: StatusCallback | None = None,
    alternate_bases: Sequence[str] = (),
) -> NoiseHarnessChannel:
    """Dial ``bundle.url`` and complete the handshake within ``timeout_s``; raises
    :class:`NoiseConnectFailed` (or ``OSError``/``TimeoutError`` from the dial).
    ``alternate_bases``: other nodes of a rendezvous cluster, for redials."""
    http = ClientSession()
    channel = NoiseHarnessChannel(
        bundle.url,
        http,
        config=config,
        reconnect_deadline_s=reconnect_deadline_s,
        max_message_bytes=max_message_bytes,
        on_status=on_status,
        alternates=alternate_urls(bundle.url, alternate_bases),
    )
    try:
        async with asyncio.timeout(timeout_s):
            ws = await dial_relay_socket(
                http, bundle.url, timeout_s=timeout_s, max_message_bytes=max_message_bytes
            )
            await channel.handshake(ws, bundle, identity, ephemeral=ephemeral)
    except TimeoutError:
        await channel.close()
        raise NoiseConnectFailed(
            f"no encrypted relay handshake with the environment within {timeout_s:g}s",
            transient=True,
        ) from None
    except BaseException:
        await channel.close()
        raise
    return channel


async def open_rendezvous_channel(
    registry: RegistryClient,
    environment_id: str,
    *,
    encryption: Encryption = "auto",
    timeout_s: float = 10.0,
    on_status: StatusCallback | None = None,
    alternate_bases: Sequence[str] = (),
) -> MessageChannel:
    """One channel to ``environment_id`` through ``registry`` (see the module
    docstring); raises :class:`RegistryError`, :class:`NoiseConnectFailed`, ``OSError``
    or ``TimeoutError``. ``alternate_bases`` are other nodes of the registry's
    rendezvous cluster: the relay socket moves to them when its node dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    failure: NoiseConnectFailed | None = None
    delays = backoff(RETRY_INITIAL_S, RETRY_MAX_S)
    while (remaining := deadline - loop.time()) > 0:
        if failure is not None:
            await asyncio.sleep(min(next(delays), remaining))
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
        identity = NoiseIdentity.generate()
        answer, ephemeral = await _connect_answer(registry, environment_id, identity, remaining)
        if not isinstance(answer, NoiseConnectBundle):
            return await _cleartext(
                registry, environment_id, answer, encryption, on_status, deadline, alternate_bases
            )
        try:
            return await connect_noise_relay(
                answer,
                identity,
                ephemeral=ephemeral,
                timeout_s=max(0.1, deadline - loop.time()),
                on_status=on_status,
                alternate_bases=alternate_bases,
            )
        except (NoiseConnectFailed, NoiseError) as exc:
            failure = _as_connect_failure(exc)
            if not failure.transient:
                raise failure from None
            log.info("encrypted connection attempt failed (%s); trying a new bundle", exc)
    raise failure or NoiseConnectFailed(
        f"no encrypted connection to {environment_id} within {timeout_s:g}s", transient=True
    )


async def _connect_answer(
    registry: RegistryClient, environment_id: str, identity: NoiseIdentity, timeout_s: float
) -> tuple[NoiseConnectBundle | HarnessUrl | None, InitiatorEphemeral | None]:
    """:func:`connect_with_ephemeral`; ``(None, None)`` when our rendezvous says the
    environment registered for the legacy cleartext relay."""
    try:
        return await connect_with_ephemeral(registry, environment_id, identity, timeout_s=timeout_s)
    except RegistryError as exc:
        if exc.code != "no_noise_registration":
            raise
        return None, None


def _as_connect_failure(exc: NoiseConnectFailed | NoiseError) -> NoiseConnectFailed:
    if isinstance(exc, NoiseConnectFailed):
        return exc
    return NoiseConnectFailed(f"bad Noise bundle from the registry: {exc}", transient=False)


async def connect_with_ephemeral(
    registry: RegistryClient,
    environment_id: str,
    identity: NoiseIdentity,
    *,
    timeout_s: float | None = None,
) -> tuple[NoiseConnectBundle | HarnessUrl, InitiatorEphemeral]:
    """``/connect`` with ``identity``'s public key, and the handshake's ephemeral key
    pairs generated while the registry answers (raises what ``connect_noise`` raises)."""
    request = asyncio.ensure_future(
        registry.connect_noise(environment_id, identity.public_key, timeout_s=timeout_s)
    )
    try:
        # Let the request reach its socket first (aiohttp writes it from a second task
        # step on Python 3.11), so the key generation overlaps the registry's work.
        for _ in range(CONNECT_WRITE_STEPS):
            if request.done():
                break
            await asyncio.sleep(0)
        ephemeral = InitiatorEphemeral.generate()
        return await request, ephemeral
    finally:
        if not request.done():
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request


async def _cleartext(
    registry: RegistryClient,
    environment_id: str,
    answer: HarnessUrl | None,
    encryption: Encryption,
    on_status: StatusCallback | None,
    deadline: float,
    alternate_bases: Sequence[str],
) -> MessageChannel:
    why = (
        f"environment {environment_id} registered for the legacy cleartext relay"
        if answer is None
        else f"the registry at {registry.base_url} does not offer the encrypted relay"
    )
    if encryption == "required":
        raise NoiseConnectFailed(f"{why}, and encryption is required", transient=False)
    log.warning("%s: its relay traffic is not end-to-end encrypted", why)
    loop = asyncio.get_running_loop()
    if answer is None:
        answer = await registry.connect(environment_id, timeout_s=max(0.1, deadline - loop.time()))
    return await connect_harness_relay(
        answer.url,
        timeout_s=max(0.1, deadline - loop.time()),
        on_status=on_status,
        alternates=alternate_urls(answer.url, alternate_bases),
    )
