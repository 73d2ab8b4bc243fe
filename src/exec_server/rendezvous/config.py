"""The rendezvous' configuration: defaults, limits and :class:`RendezvousConfig`."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..relay.frame_codec import DEFAULT_MAX_FRAME_BYTES, INBOUND_LIMITS
from ..transport.listen_url import parse_ip_port_url
from ..transport.websocket import DEFAULT_PONG_TIMEOUT_S, KeepaliveConfig
from .noise_registry import DEFAULT_AUTHORIZATION_LIFETIME_S
from .router_config import (
    DEFAULT_ENVIRONMENT_GRACE_S,
    DEFAULT_HARNESS_GRACE_S,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_FRAMES,
    DEFAULT_MAX_SOCKET_BUFFER_BYTES,
    DEFAULT_MAX_STREAM_BUFFER_BYTES,
    DEFAULT_MAX_STREAMS_PER_ENVIRONMENT,
    DEFAULT_SLOW_HARNESS_TIMEOUT_S,
    DEFAULT_STREAM_PAUSE_BYTES,
    RouterConfig,
)

if TYPE_CHECKING:
    # nats-py loads only when a node joins a cluster.
    from .cluster.nats_connection import NatsClusterConfig

__all__ = [
    "DEFAULT_ENVIRONMENT_URL_LIFETIME_S",
    "DEFAULT_HARNESS_URL_LIFETIME_S",
    "DEFAULT_LISTEN_URL",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PING_INTERVAL_S",
    "MAX_HARNESS_URL_LIFETIME_S",
    "MAX_NAME_CHARS",
    "MAX_REGISTRY_BODY_BYTES",
    "RendezvousConfig",
    "is_valid_environment_id",
    "parse_listen_url",
]

DEFAULT_LISTEN_URL = "http://127.0.0.1:0"

DEFAULT_ENVIRONMENT_URL_LIFETIME_S = 600.0
"""Validity of a registration's URL: environments re-register before every connect."""

DEFAULT_HARNESS_URL_LIFETIME_S = 24 * 3600.0
"""Validity of a harness URL; a harness reuses it for every reconnect of its session."""

MAX_HARNESS_URL_LIFETIME_S = 30 * 24 * 3600.0
"""Longest ``lifetime_s`` a ``/connect`` caller may ask for."""

DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_FRAME_BYTES
"""Largest websocket message accepted: 64 MiB, what legacy Codex peers accept."""

DEFAULT_PING_INTERVAL_S = 30.0
"""Server websocket ping interval (a peer silent for ``pong_timeout_s`` is dropped)."""

MAX_REGISTRY_BODY_BYTES = 64 * 1024
"""Largest HTTP request body on the registry endpoints."""

MAX_NAME_CHARS = 256
"""Longest environment display name."""

ENVIRONMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def parse_listen_url(url: str) -> tuple[str, int]:
    """``http://IP:PORT`` -> (host, port)."""
    return parse_ip_port_url(url, "http", "`http://IP:PORT`")


def is_valid_environment_id(environment_id: str) -> bool:
    """1-256 characters of ``[A-Za-z0-9_-]`` (it is interpolated into URL paths)."""
    return ENVIRONMENT_ID_PATTERN.match(environment_id) is not None


@dataclass(frozen=True)
class RendezvousConfig:
    """Everything configurable; the defaults are the CLI's."""

    data_dir: Path | None = None
    """Token, URL-signing secret and registrations persist here; memory/temp without."""
    token: str | None = None
    """Bearer token; overrides ``EXEC_SERVER_RENDEZVOUS_TOKEN`` and the data dir file."""
    public_url: str | None = None
    """Base URL clients reach us at (``http(s)://host[:port][/prefix]``), used for the
    websocket URLs we hand out. Default: the HTTP request's ``Host``."""
    environment_grace_s: float = DEFAULT_ENVIRONMENT_GRACE_S
    harness_grace_s: float = DEFAULT_HARNESS_GRACE_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES
    stream_pause_bytes: int = DEFAULT_STREAM_PAUSE_BYTES
    max_stream_buffer_bytes: int = DEFAULT_MAX_STREAM_BUFFER_BYTES
    max_socket_buffer_bytes: int = DEFAULT_MAX_SOCKET_BUFFER_BYTES
    slow_harness_timeout_s: float = DEFAULT_SLOW_HARNESS_TIMEOUT_S
    """A legacy stream paused this long for its harness is reset (``harness_too_slow``)."""
    max_streams_per_environment: int = DEFAULT_MAX_STREAMS_PER_ENVIRONMENT
    environment_url_lifetime_s: float = DEFAULT_ENVIRONMENT_URL_LIFETIME_S
    harness_url_lifetime_s: float = DEFAULT_HARNESS_URL_LIFETIME_S
    max_harness_url_lifetime_s: float = MAX_HARNESS_URL_LIFETIME_S
    ping_interval_s: float | None = DEFAULT_PING_INTERVAL_S
    """``None`` disables server pings."""
    pong_timeout_s: float = DEFAULT_PONG_TIMEOUT_S
    """A socket silent this long (not even a pong) is dropped (``pong_timeout``)."""
    authorization_lifetime_s: float = DEFAULT_AUTHORIZATION_LIFETIME_S
    """Validity of a Noise ``harness_key_authorization`` (``/connect`` to ``/validate``)."""
    cluster: NatsClusterConfig | None = None
    """Join a cluster of rendezvous nodes on NATS instead of running alone (then
    ``data_dir`` is not used: the shared state lives in NATS)."""
    freeze_gc: bool = True
    """Once started, move everything alive (modules, the server) out of the cyclic
    garbage collector's reach (``gc.freeze``), once per process: its full collections,
    which routing triggers by allocating, then walk only what came later. Measured
    about -15% CPU per routed byte (``benchmarks/README.md``)."""

    def router_config(self) -> RouterConfig:
        return RouterConfig(
            environment_grace_s=self.environment_grace_s,
            harness_grace_s=self.harness_grace_s,
            max_queue_bytes=self.max_queue_bytes,
            max_queue_frames=self.max_queue_frames,
            stream_pause_bytes=self.stream_pause_bytes,
            max_stream_buffer_bytes=self.max_stream_buffer_bytes,
            max_socket_buffer_bytes=self.max_socket_buffer_bytes,
            slow_harness_timeout_s=self.slow_harness_timeout_s,
            max_streams_per_environment=self.max_streams_per_environment,
            frame_limits=dataclasses.replace(
                INBOUND_LIMITS, max_frame_bytes=self.max_message_bytes
            ),
        )

    def keepalive(self) -> KeepaliveConfig:
        return KeepaliveConfig(self.ping_interval_s, self.pong_timeout_s)
