"""What configures the frame bus's NATS connection, and what it raises:
:class:`ClientConfig`, :class:`ServerAddress` and the :class:`NatsClientError` family.

Below :mod:`~exec_server.rendezvous.cluster.nats_socket` (one socket) and
:mod:`~exec_server.rendezvous.cluster.nats_client` (the connection that reconnects), so
both raise the same errors and read the same settings. No I/O.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_PORT",
    "ClientConfig",
    "NatsAuthError",
    "NatsBufferFull",
    "NatsClientError",
    "NatsConnectError",
    "NatsNotConnected",
    "NatsServerError",
    "ServerAddress",
]

DEFAULT_PORT = 4222


class NatsClientError(Exception):
    """Base of this client's errors."""


class NatsConnectError(NatsClientError):
    """No configured server could be connected to (or one handshake failed)."""


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
    """Every server to use, in order (``nats://`` or ``tls://``; the servers a NATS
    cluster announces in ``connect_urls`` are not added: list them all here)."""
    name: str = "exec-server"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    credentials_file: str | None = None
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    """The context that verifies the servers (the system's trust store when None); one
    that would not verify certificates and host names is refused."""
    tls_required: bool = False
    """TLS with every server, whatever its URL says (a configured CA implies it): a
    server that does not offer TLS is refused rather than used in plain text."""
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
            ServerAddress.parse(url)
        if self.ping_interval_s <= 0 or self.max_outstanding_pings < 1:
            raise ValueError("need ping_interval_s > 0 and max_outstanding_pings >= 1")
        tls = self.tls
        if tls is not None and (tls.verify_mode != ssl.CERT_REQUIRED or not tls.check_hostname):
            raise ValueError(
                "the NATS TLS context must verify the server's certificate and host name"
            )
        if self.connect_timeout_s <= 0 or self.reconnect_wait_s < 0 or self.pending_size < 0:
            raise ValueError("need connect_timeout_s > 0, reconnect_wait_s >= 0, pending_size >= 0")


@dataclass(frozen=True)
class ServerAddress:
    """One configured server: where it is, whether its URL says TLS, and the
    credentials its URL carries (``nats://user:pass@host`` or ``nats://token@host``)."""

    url: str
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None

    @property
    def label(self) -> str:
        """The server as logs and errors name it: never with the URL's credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'nats'}://{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
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
