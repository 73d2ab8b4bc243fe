"""Registry commands: ``exec-server envs`` and ``exec-server harness-url``.

Both talk to the registry through :class:`~exec_server.transport.registry_client.RegistryClient`.
``envs`` lists the environments a rendezvous knows (a table, or ``--json``);
``harness-url`` prints a signed ``role=harness`` URL for one environment: give it to
a Codex harness as ``CODEX_EXEC_SERVER_URL``, or to our CLI and SDK as ``--url``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from ..transport.failover import parse_base_urls
from ..transport.registry_client import (
    EnvironmentRecord,
    RegistryClient,
    RegistryError,
    is_valid_environment_id,
)
from .errors import EXIT_CONNECTION, CliError, exit_now
from .target import RENDEZVOUS_TOKEN_ENV, Target, target_options
from .tokens import read_token

T = TypeVar("T")


@click.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def envs(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """List the environments a rendezvous knows: id, name, online, streams, last seen.

    With --json, a list of {"id", "name", "online", "streams", "last_seen"} objects.
    """
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    if target.rendezvous is None:
        raise click.UsageError("envs needs --rendezvous BASE_URL (or EXEC_SERVER_RENDEZVOUS)")
    rows = _registry_call(target.rendezvous, target.rendezvous_token, _list)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        exit_now(0)
    headers = ("ID", "NAME", "ONLINE", "STREAMS", "LAST SEEN")
    table = [
        (r.id, r.name or "", "yes" if r.online else "no", str(r.streams), r.last_seen or "")
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    for row in (headers, *table):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    exit_now(0)


async def _list(registry: RegistryClient) -> list[EnvironmentRecord]:
    return await registry.list_environments()


@click.command("harness-url")
@click.option(
    "--rendezvous",
    "base_url",
    required=True,
    metavar="BASE_URL",
    help="Registry URL (several nodes of a cluster: comma separated, tried in order).",
)
@click.option("--environment-id", required=True, help="Environment to reach.")
@click.option(
    "--lifetime",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the URL stays valid (default: the rendezvous's, 24 h).",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"File holding the rendezvous bearer token (default: env {RENDEZVOUS_TOKEN_ENV}).",
)
def harness_url(
    base_url: str, environment_id: str, lifetime: float | None, token_file: Path | None
) -> None:
    """Print a signed role=harness websocket URL for an environment."""
    if not is_valid_environment_id(environment_id):
        raise click.UsageError(
            f"invalid --environment-id {environment_id!r}: expected 1-256 of [A-Za-z0-9_-]"
        )
    token = read_token(token_file, "--token-file", RENDEZVOUS_TOKEN_ENV, required=True)

    async def connect(registry: RegistryClient) -> str:
        try:
            return (await registry.connect(environment_id, lifetime_s=lifetime)).url
        except RegistryError as exc:
            if exc.status == 0:
                raise
            code = f"{exc.code}: " if exc.code else ""
            raise CliError(
                f"harness URL request failed ({exc.status}): {code}{exc.message}",
                hint="check --token-file (or EXEC_SERVER_RENDEZVOUS_TOKEN)"
                if exc.unauthorized
                else None,
            ) from None

    click.echo(_registry_call(base_url, token, connect))
    exit_now(0)


def _registry_call(
    base_url: str, token: str | None, call: Callable[[RegistryClient], Awaitable[T]]
) -> T:
    """Run one registry call; its failures become CLI errors naming the rendezvous.

    ``base_url`` may list several nodes of a rendezvous cluster (comma separated): the
    call goes to the first, and to the next while a node does not answer (or answers
    5xx, e.g. 503 from a node cut off from the cluster)."""
    try:
        registries = [RegistryClient(base, token) for base in parse_base_urls(base_url)]
    except ValueError as exc:
        raise click.UsageError(f"--rendezvous: {exc}") from None
    registry = registries[0]

    async def go() -> T:
        nonlocal registry
        for index, registry in enumerate(registries):
            async with registry:
                try:
                    return await call(registry)
                except RegistryError as exc:
                    if not exc.transient or index == len(registries) - 1:
                        raise
        raise AssertionError("unreachable")

    try:
        return asyncio.run(go())
    except RegistryError as exc:
        if exc.status == 0 and exc.transient:
            raise CliError(
                f"cannot reach the rendezvous at {registry.base_url}: {exc.message}",
                hint="is `exec-server rendezvous` (or `exec-server up`) running there?",
                exit_code=EXIT_CONNECTION,
            ) from None
        raise CliError(
            f"the rendezvous at {registry.base_url} answered {exc.status}"
            f"{' ' + exc.code if exc.code else ''}: {exc.message}",
            hint="check --token-file (or EXEC_SERVER_RENDEZVOUS_TOKEN)"
            if exc.unauthorized
            else None,
        ) from None
