"""Remote environment mode: register with a registry, dial the rendezvous, serve streams.

The loop (Codex E1, plus what Codex left out):

1. ``POST {base}/cloud/environment/{id}/register`` (or ``/cloud/executor/{id}/register``
   for E1 registries) with ``Authorization: Bearer <token>``; the answer is
   ``{"environment_id"|"executor_id": id, "url": ws-url}``. With the Noise transport (the
   default) the body carries the process's Noise public key and the answer must add
   ``security_profile`` and ``executor_registration_id`` (Codex 0.171's contract;
   :mod:`~exec_server.environment.noise_responder`); with ``transport="legacy"`` there is
   no body (0.133-era registries). Redirects are not followed.
   401/403 and other 4xx are fatal with a clear message; 5xx, 408, 429 and network
   errors are retried.
2. Dial ``url`` verbatim (no compression, keepalive pings every 30 s, 60 s pong
   timeout, the rendezvous control subprotocol offered) and drive one
   :class:`~exec_server.transport.relay_connection.RelayConnection` over it: every relay stream
   becomes a :class:`~exec_server.environment.processor.ConnectionProcessor` on the
   server's shared session registry.
3. When the socket ends, wait and go back to 1. The project's reconnect policy
   (:mod:`~exec_server.transport.reconnect`) decides: errors that are not transient
   end the loop; otherwise backoff starts at 1 s, doubles to 30 s, has +-20% jitter,
   and resets after a successful connect.

With Noise, every stream starts with the hybrid IK handshake and each harness key is
checked with the registry's ``/validate`` before the environment answers; streams
that did not complete a handshake get nothing but a reset.

``base_url`` may name several nodes of a rendezvous cluster, comma separated
(``serve --remote URL1,URL2``): the loop uses the first, and when registering or
dialing fails, or the socket ends, it goes on with the next at once; only once every
node failed in a row does it back off. Validations go to the node registered with.

The relay connection, and with it every reliable stream, outlives the physical
socket, so harnesses speaking our reliable relay resume their streams on the next
socket and lose nothing. Legacy (Codex) streams end with the socket; their sessions
detach and can be resumed with ``initialize{resumeSessionId}``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from ..relay.noise.noise_mux import NoiseMuxConfig
from ..relay.stream_mux import MuxConfig, MuxRole
from ..transport.failover import Failover, parse_base_urls
from ..transport.reconnect import backoff, is_transient
from ..transport.registry_client import RegistryClient, RegistryError
from ..transport.relay_connection import (
    RelayConfig,
    RelayConnection,
    RelayStreamChannel,
    close_socket,
    dial_environment_socket,
)
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES
from .noise_responder import NoiseResponder
from .server import ExecServer

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
BACKOFF_JITTER = 0.2
REGISTRY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
#: Relay streams one environment socket carries at most.
ENVIRONMENT_MAX_STREAMS = 4096

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

PathFlavor = Literal["environment", "executor"]
#: ``noise``: Codex 0.171's encrypted relay (the default); ``legacy``: cleartext, for
#: 0.133-era registries.
RemoteTransport = Literal["noise", "legacy"]


class RegistrationError(Exception):
    """Registration failed in a way retrying will not fix (bad credentials, 4xx)."""


class _RetryableRegistrationError(Exception):
    """Registration failed in a way that may clear (5xx, 408, 429, network)."""

    transient = True


@dataclass(frozen=True)
class RemoteEnvironmentConfig:
    base_url: str
    environment_id: str
    token: str
    name: str | None = None
    #: ``environment`` (E2+) or ``executor`` (E1 registries).
    path_flavor: PathFlavor = "environment"
    relay: RelayConfig = field(
        default_factory=lambda: RelayConfig(mux=MuxConfig(max_streams=ENVIRONMENT_MAX_STREAMS))
    )
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    transport: RemoteTransport = "noise"
    noise: NoiseMuxConfig = field(default_factory=NoiseMuxConfig)

    def __post_init__(self) -> None:
        parse_base_urls(self.base_url)  # ValueError when empty
        if not _ID_PATTERN.match(self.environment_id):
            raise ValueError(
                f"invalid environment id {self.environment_id!r}: "
                "expected 1-256 characters of [A-Za-z0-9_-]"
            )
        if not self.token.strip():
            raise ValueError("the registration token is empty")


async def register(
    registry: RegistryClient, config: RemoteEnvironmentConfig, noise: NoiseResponder | None = None
) -> str:
    """POST the registration (with ``noise``'s public key); return the rendezvous
    websocket URL."""
    key = noise.identity.public_key if noise is not None else None
    try:
        registration = await registry.register(
            config.environment_id, name=config.name, noise_key=key
        )
    except RegistryError as exc:
        message = _registration_problem(exc)
        if exc.transient:
            raise _RetryableRegistrationError(message) from None
        raise RegistrationError(message) from None
    if noise is not None:
        noise.registered(registration)
    return registration.url


def _registration_problem(exc: RegistryError) -> str:
    if exc.status == 0:
        return f"environment registry unreachable: {exc.message}"
    if 200 <= exc.status < 300:
        return f"environment registry {exc.message}"
    detail = f"{exc.message} ({exc.code})" if exc.code else exc.message
    if exc.unauthorized:
        return f"environment registry authentication failed ({exc.status}): {detail}"
    if exc.transient:
        return f"environment registry error ({exc.status}): {detail}"
    return f"environment registry request failed ({exc.status}): {detail}"


class RemoteEnvironment:
    """Runs one environment against a registry/rendezvous until cancelled."""

    def __init__(self, server: ExecServer, config: RemoteEnvironmentConfig) -> None:
        self.server = server
        self.config = config
        self.noise = (
            NoiseResponder(config.environment_id, config.relay.mux, config.noise)
            if config.transport == "noise"
            else None
        )
        self.connection = RelayConnection(
            MuxRole.ENVIRONMENT,
            config.relay,
            on_stream=self._on_stream,
            mux=self.noise.mux if self.noise is not None else None,
            on_event=self.noise.on_event if self.noise is not None else None,
        )
        self.connected = asyncio.Event()
        self.registrations = 0
        self._streams: asyncio.TaskGroup | None = None

    def _on_stream(self, channel: RelayStreamChannel) -> None:
        assert self._streams is not None
        log.debug("relay stream %s opened", channel.stream_id)
        self._streams.create_task(self.server.serve_channel(channel))

    async def run(self) -> None:
        """Register, connect and serve; returns only by raising RegistrationError."""
        fatal: RegistrationError | None = None
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as streams:
            registries = [
                RegistryClient(
                    base_url,
                    self.config.token,
                    flavor=self.config.path_flavor,
                    timeout_s=REGISTRY_TIMEOUT_S,
                    session=http,
                )
                for base_url in parse_base_urls(self.config.base_url)
            ]
            self._streams = streams
            try:
                await self._loop(http, registries)
            except RegistrationError as exc:
                fatal = exc  # raised below, outside the TaskGroup, unwrapped
            finally:
                self.connection.close_all("environment shutting down")
        assert fatal is not None
        raise fatal

    async def _loop(self, http: aiohttp.ClientSession, registries: list[RegistryClient]) -> None:
        cfg = self.config
        delays = backoff(cfg.initial_backoff_s, cfg.max_backoff_s, jitter=BACKOFF_JITTER)
        nodes = Failover([registry.base_url for registry in registries])
        while True:
            registry = registries[nodes.index]
            if self.noise is not None and self._streams is not None:
                self.noise.bind(
                    registry, self._streams, poke=self.connection.poke, now=self.connection.now
                )
            try:
                url = await register(registry, cfg, self.noise)
                self.registrations += 1
                log.info(
                    "exec-server remote environment registered with environment_id %s",
                    cfg.environment_id,
                )
                ws = await dial_environment_socket(
                    url, timeout_s=CONNECT_TIMEOUT_S, max_message_bytes=cfg.max_message_bytes
                )
            except Exception as exc:
                if not is_transient(exc):
                    raise  # RegistrationError (bad credentials, 4xx), or a bug
                if not nodes.failed():
                    log.warning("%s; trying %s", exc, nodes.current)
                    continue
                delay = next(delays)
                log.warning("%s; retrying in %.1fs", exc, delay)
            else:
                delays = backoff(cfg.initial_backoff_s, cfg.max_backoff_s, jitter=BACKOFF_JITTER)
                nodes.succeeded()
                self.connected.set()
                try:
                    reason = await self.connection.run_socket(ws)
                finally:
                    self.connected.clear()
                    await close_socket(ws)
                delay = next(delays)
                log.info("relay websocket ended (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)
