"""How a client reaches a server: the dialers behind ``ExecServerClient.connect``.

Each dialer is a coroutine factory returning a fresh
:class:`~exec_server.transport.channel.MessageChannel`; the client calls it again to
recover a lost session. Transports are imported when first dialed, so a local
``ws://`` connection never loads the relay or the registry's HTTP stack.

Every failure becomes :class:`~exec_server.client.ConnectError`, worded with what
was dialed, and ``transient`` when dialing again later may help.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from ..transport.channel import MessageChannel
from ..transport.failover import Failover
from ..transport.registry_client import RegistryClient, RegistryError
from ..transport.relay_status import RelayStatus, StatusCallback
from .config import ClientConfig
from .errors import ConnectError

if TYPE_CHECKING:
    from .client import ExecServerClient

#: A factory of fresh channels to the same server (used again to recover a session).
Reconnect = Callable[[], Awaitable[MessageChannel]]

#: The variables Codex's harness (0.142+) reads to reach an environment through a
#: registry of its Noise contract.
CODEX_NOISE_REGISTRY_URL_ENV = "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL"
CODEX_NOISE_ENVIRONMENT_ID_ENV = "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID"
CODEX_NOISE_AUTH_TOKEN_ENV = "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN"
CODEX_NOISE_ACCOUNT_ID_ENV = "CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID"


class CodexNoiseEnvironment(NamedTuple):
    """Where the ``CODEX_EXEC_SERVER_NOISE_*`` variables point (each may be unset)."""

    registry_url: str
    environment_id: str | None
    auth_token: str | None
    account_id: str | None


def codex_noise_environment(
    environ: Mapping[str, str] | None = None,
) -> CodexNoiseEnvironment | None:
    """The Codex harness's Noise registry settings, or ``None`` when
    ``CODEX_EXEC_SERVER_NOISE_REGISTRY_URL`` is not set."""
    env = os.environ if environ is None else environ
    registry_url = env.get(CODEX_NOISE_REGISTRY_URL_ENV, "").strip()
    if not registry_url:
        return None
    return CodexNoiseEnvironment(
        registry_url,
        env.get(CODEX_NOISE_ENVIRONMENT_ID_ENV, "").strip() or None,
        env.get(CODEX_NOISE_AUTH_TOKEN_ENV, "").strip() or None,
        env.get(CODEX_NOISE_ACCOUNT_ID_ENV, "").strip() or None,
    )


class Connecting:
    """What ``ExecServerClient.connect`` returns: await it for the client, or use it
    as ``async with`` (the client is closed on exit), as websockets' ``connect``."""

    def __init__(self, open_client: Callable[[], Coroutine[Any, Any, ExecServerClient]]) -> None:
        self._open = open_client
        self._client: ExecServerClient | None = None

    def __await__(self) -> Generator[Any, None, ExecServerClient]:
        return self._open().__await__()

    async def __aenter__(self) -> ExecServerClient:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class RelayWatch:
    """Hears the relay's status reports on every channel one client dials, passes them
    on (``ClientConfig.on_relay_status``) and remembers when the rendezvous gave the
    environment up, so that recovery does not dial it again."""

    def __init__(self, user: StatusCallback | None) -> None:
        self.user = user
        self.gone: RelayStatus | None = None

    def __call__(self, status: RelayStatus) -> None:
        if status.state == "gone":
            self.gone = status
        if self.user is not None:
            self.user(status)


def is_harness_url(url: str) -> bool:
    """True for a rendezvous ``role=harness`` URL (how Codex picks the relay)."""
    from urllib.parse import parse_qs, urlsplit

    return "harness" in parse_qs(urlsplit(url).query).get("role", [])


def dial_url(
    url: str, token: str | None, config: ClientConfig, watch: RelayWatch | None = None
) -> Reconnect:
    """Dial a local server's ``ws://`` URL, or a ``role=harness`` rendezvous URL (whose
    status reports go to ``watch``)."""
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if is_harness_url(url):
        return lambda: _dial_relay(url, headers, config, watch)
    return lambda: _dial_websocket(url, headers, config)


def dial_rendezvous(
    rendezvous: str | Sequence[str],
    environment_id: str,
    token: str | None,
    config: ClientConfig,
    watch: RelayWatch | None = None,
) -> Reconnect:
    """Reach ``environment_id`` through the registry on every dial: ``/connect`` with a
    fresh Noise key, then the encrypted relay, or the cleartext one for an 0.133-era
    environment (:mod:`~exec_server.transport.noise_channel`); status reports go to
    ``watch``.

    ``rendezvous`` may list several nodes of a rendezvous cluster (a sequence, or comma
    separated): a dial asks the first that answers (a node that cannot serve answers
    503), and the relay socket moves to the others when its node dies (every node
    verifies every node's signed URLs)."""
    nodes = Failover(rendezvous)
    registries = {
        base: RegistryClient(
            base,
            token,
            timeout_s=config.timeouts.connect_s,
            account_id=config.chatgpt_account_id,
        )
        for base in nodes.urls
    }

    async def dial() -> MessageChannel:
        from ..transport.noise_channel import NoiseConnectFailed, open_rendezvous_channel

        while True:
            registry = registries[nodes.current]
            where = f"cannot reach environment {environment_id} through {registry.base_url}"
            try:
                channel = await open_rendezvous_channel(
                    registry,
                    environment_id,
                    encryption=config.encryption,
                    timeout_s=config.timeouts.connect_s,
                    on_status=watch if watch is not None else config.on_relay_status,
                    alternate_bases=nodes.others(),
                )
            except RegistryError as exc:
                if exc.transient and not nodes.failed():
                    continue  # the next node
                raise ConnectError(
                    f"{where}: {_registry_problem(exc)}",
                    status=exc.status or None,
                    transient=exc.transient,
                ) from exc
            except NoiseConnectFailed as exc:
                raise ConnectError(f"{where}: {exc}", transient=exc.transient) from None
            except (OSError, TimeoutError) as exc:
                if not nodes.failed():
                    continue
                raise ConnectError(f"{where}: {exc or type(exc).__name__}") from None
            finally:
                await registry.close()
            nodes.succeeded()
            return channel

    return dial


async def _dial_websocket(
    url: str, headers: Mapping[str, str] | None, config: ClientConfig
) -> MessageChannel:
    from ..transport.websocket_client import WebSocketDialError, connect_websocket_client

    try:
        return await connect_websocket_client(
            url,
            headers=headers,
            timeout_s=config.timeouts.connect_s,
            max_message_bytes=config.max_message_bytes,
        )
    except WebSocketDialError as exc:
        raise ConnectError(str(exc), status=exc.status, transient=exc.transient) from None


async def _dial_relay(
    url: str, headers: Mapping[str, str] | None, config: ClientConfig, watch: RelayWatch | None
) -> MessageChannel:
    from ..transport.harness_relay import connect_harness_relay

    try:
        return await connect_harness_relay(
            url,
            headers=dict(headers) if headers else None,
            timeout_s=config.timeouts.connect_s,
            on_status=watch if watch is not None else config.on_relay_status,
        )
    except (OSError, TimeoutError) as exc:
        raise ConnectError(str(exc) or f"cannot connect to {_redact(url)}") from None


async def spawn_stdio_channel(
    argv: list[str] | None, env: Mapping[str, str] | None, config: ClientConfig
) -> MessageChannel:
    from ..transport.stdio import spawn_stdio_server

    argv = argv or [sys.executable, "-m", "exec_server", "serve", "--listen", "stdio"]
    try:
        return await spawn_stdio_server(argv, env=dict(env) if env is not None else None)
    except OSError as exc:
        raise ConnectError(f"cannot start exec-server {argv[0]}: {exc}", transient=False) from None


def _registry_problem(exc: RegistryError) -> str:
    if exc.unauthorized:
        return f"the registry refused the token ({exc.status}): {exc.message}"
    if exc.status == 0:
        return exc.message
    return f"{exc.status} {exc.code}: {exc.message}".replace("  ", " ")


def _redact(url: str) -> str:
    """A URL without its query (signed URLs carry their signature there)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()
