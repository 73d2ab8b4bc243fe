"""Remote environment mode: register with a registry, dial the rendezvous, serve streams.

The loop (Codex E1, plus what Codex left out):

1. ``POST {base}/cloud/environment/{id}/register`` (or ``/cloud/executor/{id}/register``
   for E1 registries) with ``Authorization: Bearer <token>`` and no body; the answer is
   ``{"environment_id"|"executor_id": id, "url": ws-url}``. Redirects are not followed.
   401/403 and other 4xx are fatal with a clear message; 5xx, 408, 429 and network
   errors are retried.
2. Dial ``url`` verbatim (no compression, keepalive pings every 30 s, 60 s pong
   timeout, the rendezvous control subprotocol offered) and drive one
   :class:`~exec_server.transport.relay.RelayConnection` over it: every relay stream
   becomes a :class:`~exec_server.environment.processor.ConnectionProcessor` on the
   server's shared session registry.
3. When the socket ends, wait and go back to 1. Backoff starts at 1 s, doubles to
   30 s, has +-20% jitter, and resets after a successful connect.

``base_url`` may name several nodes of a rendezvous cluster, comma separated
(``serve --remote URL1,URL2``): the loop uses the first, and when registering or
dialing fails, or the socket ends, it goes on with the next at once; only once every
node failed in a row does it back off.

The relay connection, and with it every reliable stream, outlives the physical
socket, so harnesses speaking our reliable relay resume their streams on the next
socket and lose nothing. Legacy (Codex) streams end with the socket; their sessions
detach and can be resumed with ``initialize{resumeSessionId}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from ..relay.stream_mux import MuxConfig, MuxRole
from ..transport.failover import Failover, parse_base_urls
from ..transport.registry_client import RegistryClient, RegistryError
from ..transport.relay import (
    RelayConfig,
    RelayConnection,
    RelayStreamChannel,
    close_socket,
    dial_relay_socket,
)
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES, WebSocketConnectError
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


class RegistrationError(Exception):
    """Registration failed in a way retrying will not fix (bad credentials, 4xx)."""


class _RetryableRegistrationError(Exception):
    pass


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

    def __post_init__(self) -> None:
        parse_base_urls(self.base_url)  # ValueError when empty
        if not _ID_PATTERN.match(self.environment_id):
            raise ValueError(
                f"invalid environment id {self.environment_id!r}: "
                "expected 1-256 characters of [A-Za-z0-9_-]"
            )
        if not self.token.strip():
            raise ValueError("the registration token is empty")


async def register(registry: RegistryClient, config: RemoteEnvironmentConfig) -> str:
    """POST the registration; return the rendezvous websocket URL."""
    try:
        registration = await registry.register(config.environment_id, name=config.name)
    except RegistryError as exc:
        message = _registration_problem(exc)
        if exc.transient:
            raise _RetryableRegistrationError(message) from None
        raise RegistrationError(message) from None
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
        self.connection = RelayConnection(
            MuxRole.ENVIRONMENT, config.relay, on_stream=self._on_stream
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
        backoff = self.config.initial_backoff_s
        nodes = Failover([registry.base_url for registry in registries])
        while True:
            registry = registries[nodes.index]
            try:
                url = await register(registry, self.config)
                self.registrations += 1
                log.info(
                    "exec-server remote environment registered with environment_id %s",
                    self.config.environment_id,
                )
                ws = await dial_relay_socket(
                    http,
                    url,
                    timeout_s=CONNECT_TIMEOUT_S,
                    max_message_bytes=self.config.max_message_bytes,
                )
            except (_RetryableRegistrationError, WebSocketConnectError) as exc:
                if not nodes.failed():
                    log.warning("%s; trying %s", exc, nodes.current)
                    continue
                log.warning("%s; retrying in %.1fs", exc, backoff)
            else:
                backoff = self.config.initial_backoff_s
                nodes.succeeded()
                self.connected.set()
                try:
                    reason = await self.connection.run_socket(ws)
                finally:
                    self.connected.clear()
                    await close_socket(ws)
                log.info("relay websocket ended (%s); reconnecting", reason)
            await asyncio.sleep(_jittered(backoff))
            backoff = min(backoff * 2, self.config.max_backoff_s)


def _jittered(delay: float) -> float:
    return delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER))
