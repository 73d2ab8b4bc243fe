"""``exec-server serve``: the environment server, local or remote.

stdout is reserved for the transport: ``serve`` prints exactly one line (the bound
URL) before anything else, or speaks JSON-RPC on it with ``--listen stdio``. Logs go
to stderr. (The ``exec-server`` group itself is :mod:`exec_server.cli.app`.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import click

from ..concurrency import run_until
from ..environment.remote import RegistrationError, RemoteEnvironment, RemoteEnvironmentConfig
from ..environment.server import (
    DEFAULT_LISTEN_URL,
    ExecServer,
    ListenUrlError,
    ServerConfig,
    parse_listen_url,
)
from ..environment.session import (
    DETACHED_SESSION_TTL_0171_S,
    DETACHED_SESSION_TTL_S,
    SessionConfig,
)
from ..environment.ws_auth import (
    WsAuthConfigError,
    build_ws_auth,
    is_loopback_host,
    non_loopback_refusal,
)
from ..transport.stdio import open_process_stdio
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES
from . import event_loop
from .tokens import read_token

TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"
REGISTRATION_TOKEN_ENV = "EXEC_SERVER_REGISTRATION_TOKEN"


def _read_token(token_file: Path | None) -> str | None:
    return read_token(token_file, "--token-file", TOKEN_ENV, required=False)


@click.command()
@click.option(
    "--listen",
    default=None,
    show_default=DEFAULT_LISTEN_URL,
    help="ws://IP:PORT to serve a local websocket, or `stdio` for newline-delimited JSON.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Require `Authorization: Bearer <token>` on the websocket (or set {TOKEN_ENV}).",
)
@click.option(
    "--ws-auth",
    type=click.Choice(["capability-token", "signed-bearer-token"]),
    help="Codex 0.171 websocket auth: a bearer capability token, or an HS256 JWT.",
)
@click.option(
    "--ws-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The capability token (with --ws-auth capability-token).",
)
@click.option("--ws-token-sha256", metavar="HEX", help="SHA-256 of the capability token.")
@click.option(
    "--ws-shared-secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="HS256 secret, >= 32 bytes (with --ws-auth signed-bearer-token).",
)
@click.option("--ws-issuer", help="Required `iss` of signed bearer tokens.")
@click.option("--ws-audience", help="Required `aud` of signed bearer tokens.")
@click.option(
    "--ws-max-clock-skew-seconds",
    type=float,
    help="Clock skew allowed on `exp`/`nbf` of signed bearer tokens (default 60).",
)
@click.option(
    "--allow-origin",
    multiple=True,
    help="Browser Origin allowed to connect (default: none; requests with Origin get 403).",
)
@click.option(
    "--session-ttl",
    type=float,
    default=None,
    show_default=f"{DETACHED_SESSION_TTL_S:g}, or {DETACHED_SESSION_TTL_0171_S:g} for Codex 0.171",
    help="Seconds a detached session (and its processes) survives for resume.",
)
@click.option(
    "--max-message-bytes",
    type=int,
    default=DEFAULT_MAX_MESSAGE_BYTES,
    show_default=True,
    help="Largest inbound JSON-RPC message accepted.",
)
@click.option(
    "--remote",
    "remote_url",
    metavar="BASE_URL",
    help="Register with this registry and serve harnesses through its rendezvous "
    "(several nodes of a rendezvous cluster: comma separated, used in turn).",
)
@click.option("--environment-id", help="Environment id to register (with --remote).")
@click.option("--executor-id", help="E1 spelling: register at /cloud/executor/ID/register.")
@click.option("--name", help="Display name sent to the registry (with --remote).")
@click.option(
    "--registration-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Registry bearer token (default: env {REGISTRATION_TOKEN_ENV}).",
)
@click.option(
    "--remote-transport",
    type=click.Choice(["noise", "legacy"]),
    help="noise: end-to-end encrypted relay, Codex 0.171's (default); legacy: cleartext, "
    "for 0.133-era registries (the default with --executor-id).",
)
def serve(
    listen: str | None,
    token_file: Path | None,
    ws_auth: str | None,
    ws_token_file: Path | None,
    ws_token_sha256: str | None,
    ws_shared_secret_file: Path | None,
    ws_issuer: str | None,
    ws_audience: str | None,
    ws_max_clock_skew_seconds: float | None,
    allow_origin: tuple[str, ...],
    session_ttl: float | None,
    max_message_bytes: int,
    remote_url: str | None,
    environment_id: str | None,
    executor_id: str | None,
    name: str | None,
    registration_token_file: Path | None,
    remote_transport: str | None,
) -> None:
    """Serve the exec-server JSON-RPC API locally, or remotely through a rendezvous."""
    try:
        auth = build_ws_auth(
            ws_auth,
            token_file=ws_token_file,
            token_sha256=ws_token_sha256,
            shared_secret_file=ws_shared_secret_file,
            issuer=ws_issuer,
            audience=ws_audience,
            max_clock_skew_s=ws_max_clock_skew_seconds,
        )
    except WsAuthConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if auth is not None and token_file is not None:
        raise click.UsageError("--token-file cannot be combined with --ws-auth")
    config = ServerConfig(
        session=SessionConfig()
        if session_ttl is None
        else SessionConfig(detached_ttl_s=session_ttl, detached_ttl_0171_s=session_ttl),
        max_message_bytes=max_message_bytes,
        token=_read_token(token_file),
        ws_auth=auth,
        allowed_origins=frozenset(allow_origin),
    )
    if remote_url is not None:
        if listen is not None:
            raise click.UsageError("--listen cannot be used with --remote")
        remote = _remote_config(
            remote_url,
            environment_id,
            executor_id,
            name,
            registration_token_file,
            max_message_bytes,
            remote_transport,
        )
        event_loop.run(_serve_remote(config, remote))
        return
    if environment_id or executor_id or remote_transport:
        raise click.UsageError("--environment-id/--executor-id/--remote-transport require --remote")
    try:
        address = parse_listen_url(listen or DEFAULT_LISTEN_URL)
    except ListenUrlError as exc:
        raise click.UsageError(str(exc)) from None
    has_auth = config.ws_auth is not None or config.token is not None
    if not address.stdio and not has_auth and not is_loopback_host(address.host):
        # Anyone who can reach the port could run commands: fail closed.
        raise click.UsageError(non_loopback_refusal(address.host, address.port))
    event_loop.run(_serve(address.stdio, address.host, address.port, config))


def _remote_config(
    remote_url: str,
    environment_id: str | None,
    executor_id: str | None,
    name: str | None,
    token_file: Path | None,
    max_message_bytes: int,
    transport: str | None = None,
) -> RemoteEnvironmentConfig:
    if environment_id and executor_id:
        raise click.UsageError("give --environment-id or --executor-id, not both")
    ident = environment_id or executor_id
    if not ident:
        raise click.UsageError("--environment-id is required when --remote is set")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read --registration-token-file: {exc}") from None
    else:
        token = os.environ.get(REGISTRATION_TOKEN_ENV, "").strip()
    if not token:
        raise click.UsageError(
            f"a registration token is required: set {REGISTRATION_TOKEN_ENV} "
            "or pass --registration-token-file"
        )
    try:
        return RemoteEnvironmentConfig(
            base_url=remote_url,
            environment_id=ident,
            token=token,
            name=name,
            path_flavor="executor" if executor_id else "environment",
            max_message_bytes=max_message_bytes,
            transport="legacy"
            if transport == "legacy" or (executor_id and not transport)
            else "noise",
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def _serve_remote(config: ServerConfig, remote: RemoteEnvironmentConfig) -> None:
    server = ExecServer(config)
    environment = RemoteEnvironment(server, remote)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_until(stop, environment.run())
    except RegistrationError as error:
        click.echo(f"exec-server: {error}", err=True)
        raise SystemExit(1) from None
    finally:
        await server.close()


async def _serve(stdio: bool, host: str, port: int, config: ServerConfig) -> None:
    server = ExecServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if stdio:
            channel = await open_process_stdio(max_message_bytes=config.max_message_bytes)
            await run_until(stop, server.serve_channel(channel))
        else:
            url = await server.start_websocket(host, port)
            sys.stdout.write(url + "\n")
            sys.stdout.flush()
            await stop.wait()
    finally:
        await server.close()
