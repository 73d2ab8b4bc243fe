"""``exec-server rendezvous``: the registry + rendezvous service.

It prints its base URL (``http://IP:PORT``) as the only stdout line; logs go to
stderr. The bearer token is never printed or logged, only the path of the file
holding it. (``harness-url``, its client side, is in :mod:`exec_server.cli.envs_cmd`.)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

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
) -> None:
    """Run the registry and rendezvous that remote environments and harnesses meet at."""
    try:
        host, port = parse_listen_url(listen)
    except ListenUrlError as exc:
        raise click.UsageError(str(exc)) from None
    config = RendezvousConfig(
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
        asyncio.run(_run(config, host, port))
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc}") from None


async def _run(config: RendezvousConfig, host: str, port: int) -> None:
    server = RendezvousServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        base_url = await server.start(host, port)
        sys.stdout.write(base_url + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.close()
