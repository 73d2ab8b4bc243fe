"""Connecting a rendezvous node to NATS: :class:`NatsClusterConfig`, :func:`connect_nats`
and :func:`connect_core`.

A node opens two connections to the same NATS: one for shared state (KV reads, writes,
watches, heartbeats; nats-py, :func:`connect_nats`) and one for forwarded frames, so a
heartbeat never waits behind megabytes of frames in the client's outbound buffer (the
frame bus's own core NATS client, :func:`connect_core`, a
:class:`~exec_server.rendezvous.cluster.nats_client.CoreNatsClient` configured from the
same :class:`NatsClusterConfig`). Both reconnect
forever (``reconnect_wait_s`` apart); what a disconnection means is decided by their
owners (readiness, frame-channel resync).

Names derived from ``prefix`` (a ``[A-Za-z0-9_-]`` token, ``exec-server`` by default, so
several clusters can share one NATS account): KV buckets ``<prefix>-nodes``,
``-holders``, ``-streams``, ``-registrations``, ``-noise``, ``-authorizations``,
``-secrets``; subjects
``<prefix>.frames.<to>.<from>`` and ``<prefix>.credit.<to>.<from>``.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from .nats_client import CoreNatsClient

from .liveness import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_S
from .records import is_valid_node_id

__all__ = [
    "DEFAULT_PREFIX",
    "NATS_PASSWORD_ENV",
    "NATS_TOKEN_ENV",
    "NatsClusterConfig",
    "connect_core",
    "connect_nats",
    "parse_nats_urls",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "exec-server"
NATS_PASSWORD_ENV = "EXEC_SERVER_NATS_PASSWORD"
"""Environment variable holding the NATS password of ``--nats-user``."""
NATS_TOKEN_ENV = "EXEC_SERVER_NATS_TOKEN"
"""Environment variable holding a NATS authentication token."""
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_URL_PATTERN = re.compile(r"^(nats|tls)://[^\s,/]+$")


def parse_nats_urls(text: str) -> tuple[str, ...]:
    """``nats://h1:4222,nats://h2:4222`` -> a tuple of URLs (``tls://`` allowed)."""
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    if not urls:
        raise ValueError("expected at least one nats:// URL")
    for url in urls:
        if not _URL_PATTERN.match(url):
            raise ValueError(f"not a nats://HOST:PORT URL: {url!r}")
    return urls


@dataclass(frozen=True)
class NatsClusterConfig:
    servers: tuple[str, ...]
    node_id: str
    public_url: str | None = None
    """Base URL clients reach this node at (announced in its heartbeat)."""
    prefix: str = DEFAULT_PREFIX
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    lease_s: float = DEFAULT_LEASE_S
    authorization_ttl_s: float = 3600.0
    """How long a used harness key authorization is remembered (the ``authorizations``
    bucket's max age): at least the longest authorization lifetime."""
    replicas: int = 1
    """Replicas of every KV bucket (3 on a 3-server NATS cluster)."""
    request_timeout_s: float = 5.0
    """JetStream API calls (KV reads and writes)."""
    connect_timeout_s: float = 5.0
    reconnect_wait_s: float = 0.5
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    credentials_file: str | None = None
    """A NATS ``.creds`` file (per-node identity; see the frame bus on permissions)."""
    tls: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is required")
        if not is_valid_node_id(self.node_id):
            raise ValueError(f"invalid node id {self.node_id!r}: use 1-64 of [A-Za-z0-9_-]")
        if not _PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"invalid prefix {self.prefix!r}: use 1-32 of [A-Za-z0-9_-]")
        if self.heartbeat_interval_s <= 0 or self.lease_s < 2 * self.heartbeat_interval_s:
            raise ValueError("lease_s must be at least two heartbeat intervals")
        if self.replicas < 1:
            raise ValueError("replicas must be positive")

    def bucket(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"


Callback = Callable[[], Awaitable[None]]


async def connect_nats(
    config: NatsClusterConfig,
    purpose: str,
    *,
    disconnected: Callback | None = None,
    reconnected: Callback | None = None,
    pending_size: int | None = None,
) -> NatsClient:
    """A connection that reconnects forever; errors are logged, never printed."""
    import nats  # here: the CLI reads this module's constants without loading nats-py

    label = f"exec-server rendezvous {config.node_id} ({purpose})"

    async def on_error(exc: Exception) -> None:
        log.warning("%s: NATS error: %r", label, exc)

    async def on_disconnect() -> None:
        log.info("%s: disconnected from NATS", label)
        if disconnected is not None:
            await disconnected()

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", label)
        if reconnected is not None:
            await reconnected()

    options: dict[str, object] = {}
    if pending_size is not None:
        options["pending_size"] = pending_size
    if config.credentials_file is not None:
        options["user_credentials"] = config.credentials_file
    if config.tls is not None:
        options["tls"] = config.tls
    client: NatsClient = await nats.connect(
        list(config.servers),
        name=label,
        connect_timeout=config.connect_timeout_s,
        reconnect_time_wait=config.reconnect_wait_s,
        max_reconnect_attempts=-1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        token=config.token,
        user=config.user,
        password=config.password,
        **options,
    )
    return client


async def connect_core(
    config: NatsClusterConfig,
    purpose: str,
    *,
    reconnected: Callable[[], None] | None = None,
    disconnected: Callable[[], None] | None = None,
    pending_size: int | None = None,
) -> CoreNatsClient:
    """The frame bus's connection, configured as :func:`connect_nats` configures nats-py
    (same servers, auth, TLS, timeouts, reconnect forever), except that a configured TLS
    context makes TLS required with every server (``--nats-ca`` implies TLS)."""
    from .nats_client import ClientConfig, CoreNatsClient  # the CLI reads this module too

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
            tls_required=config.tls is not None,
            connect_timeout_s=config.connect_timeout_s,
            reconnect_wait_s=config.reconnect_wait_s,
            **settings,  # type: ignore[arg-type]
        ),
        reconnected=reconnected,
        disconnected=disconnected,
    )
