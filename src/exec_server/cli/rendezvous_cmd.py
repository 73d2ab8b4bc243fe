"""``exec-server rendezvous`` and ``exec-server harness-url``.

``rendezvous`` runs the registry + rendezvous service and prints its base URL
(``http://IP:PORT``) as the only stdout line; logs go to stderr. The bearer token is
never printed or logged, only the path of the file holding it.

``harness-url`` asks a running rendezvous for a signed ``role=harness`` URL for an
environment (``POST /cloud/environment/{id}/connect``) and prints it: give it to a Codex
harness as ``CODEX_EXEC_SERVER_URL``, or to our client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import click

from ..rendezvous.credentials import TOKEN_ENV
from ..rendezvous.errors import CredentialError
from ..rendezvous.router import DEFAULT_ENVIRONMENT_GRACE_S, DEFAULT_HARNESS_GRACE_S
from ..rendezvous.server import (
    DEFAULT_LISTEN_URL,
    DEFAULT_MAX_MESSAGE_BYTES,
    ListenUrlError,
    RendezvousConfig,
    RendezvousServer,
    is_valid_environment_id,
    parse_listen_url,
)

__all__ = ["harness_url", "register_commands", "rendezvous"]

HARNESS_URL_TIMEOUT_S = 10.0
"""Total budget of the ``/connect`` request."""


def register_commands(group: click.Group) -> None:
    """Add this module's commands to the ``exec-server`` group."""
    group.add_command(rendezvous)
    group.add_command(harness_url)


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


@click.command("harness-url")
@click.option("--rendezvous", "base_url", required=True, metavar="BASE_URL", help="Registry URL.")
@click.option("--environment-id", required=True, help="Environment to reach.")
@click.option(
    "--lifetime",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the URL stays valid (default: the rendezvous's, 24 h).",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"File holding the rendezvous bearer token (default: env {TOKEN_ENV}).",
)
def harness_url(
    base_url: str, environment_id: str, lifetime: float | None, token_file: Path | None
) -> None:
    """Print a signed role=harness websocket URL for an environment."""
    if not is_valid_environment_id(environment_id):
        raise click.UsageError(
            f"invalid --environment-id {environment_id!r}: expected 1-256 of [A-Za-z0-9_-]"
        )
    token = _read_token(token_file)
    url = asyncio.run(_request_harness_url(base_url, environment_id, lifetime, token))
    click.echo(url)


def _read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read --token-file {token_file}: {exc}") from None
        if not token:
            raise click.UsageError(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise click.UsageError(f"a bearer token is required: set {TOKEN_ENV} or pass --token-file")
    return token


async def _request_harness_url(
    base_url: str, environment_id: str, lifetime_s: float | None, token: str
) -> str:
    import aiohttp

    endpoint = f"{base_url.strip().rstrip('/')}/cloud/environment/{environment_id}/connect"
    body = {"lifetime_s": lifetime_s} if lifetime_s is not None else None
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                endpoint,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=HARNESS_URL_TIMEOUT_S),
            ) as resp,
        ):
            status, text = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise click.ClickException(f"rendezvous unreachable at {base_url}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if 200 <= status < 300 and isinstance(data, dict) and isinstance(data.get("url"), str):
        url: str = data["url"]
        return url
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        detail = f"{error.get('code', 'error')}: {error['message']}"
    else:
        detail = text[:4096] or "empty or malformed response"
    raise click.ClickException(f"harness URL request failed ({status}): {detail}")
