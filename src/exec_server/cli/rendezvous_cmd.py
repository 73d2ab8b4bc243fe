"""``exec-server rendezvous``: the registry + rendezvous service.

It prints its base URL (``http://IP:PORT``) as the only stdout line; logs go to
stderr. The bearer token is never printed or logged, only the path of the file
holding it. (``harness-url``, its client side, is in :mod:`exec_server.cli.envs_cmd`.)

``--cluster nats://HOST:PORT[,...]`` makes it one node of a cluster sharing that NATS
(JetStream enabled): see :mod:`exec_server.rendezvous.cluster` and the README's
"Running a rendezvous cluster". NATS credentials come from ``--nats-creds`` (a
``.creds`` file), ``--nats-user`` with ``EXEC_SERVER_NATS_PASSWORD``, or
``EXEC_SERVER_NATS_TOKEN``; ``tls://`` URLs (or ``--nats-ca``) use TLS.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..rendezvous.cluster.nats_connection import (
    DEFAULT_PREFIX,
    NATS_PASSWORD_ENV,
    NATS_TOKEN_ENV,
)
from ..rendezvous.errors import CredentialError
from ..rendezvous.router import DEFAULT_ENVIRONMENT_GRACE_S, DEFAULT_HARNESS_GRACE_S
from ..rendezvous.server import (
    DEFAULT_LISTEN_URL,
    DEFAULT_MAX_MESSAGE_BYTES,
    ListenUrlError,
    RendezvousConfig,
    RendezvousServer,
    parse_listen_url,
)
from . import event_loop

if TYPE_CHECKING:
    from ..rendezvous.cluster.nats_connection import NatsClusterConfig


@click.command("rendezvous")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN_URL,
    show_default=True,
    help="http://IP:PORT to listen on (port 0 picks a free port).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the token, URL-signing secret and registrations here (default: memory only; "
    "a generated token goes to a temp file whose path is logged).",
)
@click.option(
    "--public-url",
    metavar="URL",
    help="Base URL clients use to reach this rendezvous, for the websocket URLs it hands "
    "out (default: the Host of each registry request).",
)
@click.option(
    "--environment-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_ENVIRONMENT_GRACE_S,
    show_default=True,
    help="Seconds streams wait for their environment to reconnect.",
)
@click.option(
    "--harness-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_HARNESS_GRACE_S,
    show_default=True,
    help="Seconds streams wait for their harness to reconnect (same URL).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_MESSAGE_BYTES,
    show_default=True,
    help="Largest relay websocket message accepted.",
)
@click.option(
    "--ping-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds between keepalive pings on relay sockets.",
)
@click.option(
    "--pong-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of silence (not even a pong) after which a relay socket is dropped.",
)
@click.option(
    "--slow-harness-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a stream that cannot retransmit waits for its slow harness before "
    "it is reset (harness_too_slow).",
)
@click.option(
    "--cluster",
    metavar="NATS_URLS",
    help="Join a rendezvous cluster on this NATS (nats://HOST:PORT or tls://, comma "
    "separated; JetStream required). Without it: one node, state in --data-dir.",
)
@click.option(
    "--node-id",
    help="This node's id in the cluster, stable across restarts (default: the host name).",
)
@click.option(
    "--cluster-prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Prefix of the cluster's NATS subjects and KV buckets (several clusters can "
    "share one NATS account).",
)
@click.option(
    "--nats-creds",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="NATS credentials file of this node (per-node users, see the README).",
)
@click.option(
    "--nats-user",
    help=f"NATS user name (password from env {NATS_PASSWORD_ENV}; a token from {NATS_TOKEN_ENV}).",
)
@click.option(
    "--nats-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CA bundle to verify the NATS servers' TLS certificates (implies TLS).",
)
@click.option(
    "--kv-replicas",
    type=click.IntRange(min=1, max=5),
    default=1,
    show_default=True,
    help="Replicas of the shared KV buckets when this node creates them (3 on a 3-server "
    "NATS cluster).",
)
def rendezvous(
    listen: str,
    data_dir: Path | None,
    public_url: str | None,
    environment_grace: float,
    harness_grace: float,
    max_message_bytes: int,
    ping_interval: float,
    pong_timeout: float,
    slow_harness_timeout: float,
    cluster: str | None,
    node_id: str | None,
    cluster_prefix: str,
    nats_creds: Path | None,
    nats_user: str | None,
    nats_ca: Path | None,
    kv_replicas: int,
) -> None:
    """Run the registry and rendezvous that remote environments and harnesses meet at."""
    try:
        host, port = parse_listen_url(listen)
    except ListenUrlError as exc:
        raise click.UsageError(str(exc)) from None
    cluster_config = None
    if cluster is not None:
        if data_dir is not None:
            raise click.UsageError(
                "--data-dir cannot be used with --cluster: the cluster's state lives in NATS"
            )
        cluster_config = _cluster_config(
            cluster,
            node_id,
            cluster_prefix,
            public_url,
            nats_creds,
            nats_user,
            nats_ca,
            kv_replicas,
        )
    elif node_id is not None:
        raise click.UsageError("--node-id goes with --cluster")
    config = RendezvousConfig(
        cluster=cluster_config,
        data_dir=data_dir,
        public_url=public_url,
        environment_grace_s=environment_grace,
        harness_grace_s=harness_grace,
        max_message_bytes=max_message_bytes,
        ping_interval_s=ping_interval,
        pong_timeout_s=pong_timeout,
        slow_harness_timeout_s=slow_harness_timeout,
    )
    try:
        event_loop.run(_run(config, host, port))
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    except ClusterJoinError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc}") from None


class ClusterJoinError(Exception):
    """The node could not join its cluster (NATS unreachable, node id in use)."""


def default_node_id() -> str:
    """The host name, reduced to what a node id may hold."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return cleaned.strip("-") or "rendezvous"


def _explain_join_failure(exc: Exception, cluster: NatsClusterConfig) -> None:
    from nats.errors import Error as NatsError

    from ..rendezvous.cluster.nats_state import NodeIdInUse

    if isinstance(exc, NodeIdInUse):
        raise ClusterJoinError(str(exc)) from None
    if isinstance(exc, NatsError | TimeoutError | ConnectionError):
        servers = ",".join(cluster.servers)
        raise ClusterJoinError(f"cannot join the cluster on {servers}: {exc!r}") from None


def _cluster_config(
    cluster: str,
    node_id: str | None,
    prefix: str,
    public_url: str | None,
    creds: Path | None,
    user: str | None,
    ca: Path | None,
    replicas: int,
) -> NatsClusterConfig:
    from ..rendezvous.cluster.nats_connection import NatsClusterConfig, parse_nats_urls

    try:
        servers = parse_nats_urls(cluster)
    except ValueError as exc:
        raise click.UsageError(f"--cluster: {exc}") from None
    password = os.environ.get(NATS_PASSWORD_ENV)
    if user is not None and not password:
        raise click.UsageError(f"--nats-user needs the password in {NATS_PASSWORD_ENV}")
    tls = None
    if ca is not None or any(url.startswith("tls://") for url in servers):
        tls = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    try:
        return NatsClusterConfig(
            servers=servers,
            node_id=node_id or default_node_id(),
            public_url=public_url,
            prefix=prefix,
            replicas=replicas,
            token=os.environ.get(NATS_TOKEN_ENV) or None,
            user=user,
            password=password if user is not None else None,
            credentials_file=str(creds) if creds is not None else None,
            tls=tls,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def _run(config: RendezvousConfig, host: str, port: int) -> None:
    server = RendezvousServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            base_url = await server.start(host, port)
        except Exception as exc:
            if config.cluster is not None:
                _explain_join_failure(exc, config.cluster)
            raise
        sys.stdout.write(base_url + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.close()
