"""Where the people-facing commands connect: a URL, or a rendezvous plus environment id.

Resolution order for each setting: command-line option, environment variable, then
the config file (``$EXEC_SERVER_CONFIG`` or ``~/.config/exec-server/config.toml``)::

    url = "ws://127.0.0.1:8765"            # or a role=harness rendezvous URL
    rendezvous = "http://127.0.0.1:7000"
    environment_id = "laptop"
    token_file = "~/.config/exec-server/token"   # rendezvous token (or `token = ...`)

With a rendezvous, a fresh harness URL is requested from
``POST {rendezvous}/cloud/environment/{id}/connect`` for every connection.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click

from ..client import ExecServerClient
from ..transport.relay import StatusCallback

URL_ENV = "EXEC_SERVER_URL"
CODEX_URL_ENV = "CODEX_EXEC_SERVER_URL"
RENDEZVOUS_ENV = "EXEC_SERVER_RENDEZVOUS"
ENVIRONMENT_ENV = "EXEC_SERVER_ENVIRONMENT_ID"
RENDEZVOUS_TOKEN_ENV = "EXEC_SERVER_RENDEZVOUS_TOKEN"
CONNECTION_TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"
CONFIG_ENV = "EXEC_SERVER_CONFIG"
CONNECT_TIMEOUT_S = 10.0


class TargetError(click.ClickException):
    """The command cannot tell (or reach) where to connect."""


def _config() -> dict[str, Any]:
    path = Path(
        os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "exec-server" / "config.toml"
    ).expanduser()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"cannot read config file {path}: {exc}") from None


@dataclass
class Target:
    url: str | None = None
    rendezvous: str | None = None
    environment_id: str | None = None
    rendezvous_token: str | None = None
    connection_token: str | None = None

    @classmethod
    def resolve(
        cls,
        url: str | None,
        rendezvous: str | None,
        environment_id: str | None,
        token_file: Path | None,
    ) -> Target:
        config = _config()
        target = cls(
            url=url
            or os.environ.get(URL_ENV)
            or os.environ.get(CODEX_URL_ENV)
            or config.get("url"),
            rendezvous=rendezvous or os.environ.get(RENDEZVOUS_ENV) or config.get("rendezvous"),
            environment_id=environment_id
            or os.environ.get(ENVIRONMENT_ENV)
            or config.get("environment_id"),
            connection_token=os.environ.get(CONNECTION_TOKEN_ENV),
        )
        token_path = token_file or (
            Path(config["token_file"]).expanduser() if config.get("token_file") else None
        )
        if token_path is not None:
            try:
                target.rendezvous_token = token_path.read_text().strip()
            except OSError as exc:
                raise TargetError(f"cannot read token file {token_path}: {exc}") from None
        else:
            target.rendezvous_token = os.environ.get(RENDEZVOUS_TOKEN_ENV) or config.get("token")
        if target.url is None and target.rendezvous is None:
            raise TargetError(
                "no exec-server to connect to: pass --url WS_URL or "
                "--rendezvous BASE_URL --environment-id ID "
                f"(or set {URL_ENV} / {RENDEZVOUS_ENV}, or write a config file)"
            )
        return target

    def with_environment(self, environment_id: str | None) -> Target:
        if environment_id is None:
            return self
        return Target(
            self.url if self.rendezvous is None else None,
            self.rendezvous,
            environment_id,
            self.rendezvous_token,
            self.connection_token,
        )

    async def harness_url(self) -> str:
        if self.rendezvous is None:
            assert self.url is not None
            return self.url
        if not self.environment_id:
            raise TargetError("--environment-id is required with --rendezvous")
        if not self.rendezvous_token:
            raise TargetError(
                f"a rendezvous token is required: set {RENDEZVOUS_TOKEN_ENV} or pass --token-file"
            )
        base = self.rendezvous.rstrip("/")
        endpoint = f"{base}/cloud/environment/{self.environment_id}/connect"
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    endpoint,
                    headers={"Authorization": f"Bearer {self.rendezvous_token}"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S),
                ) as resp,
            ):
                body = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TargetError(f"cannot reach rendezvous {base}: {exc}") from None
        return _url_from_connect(status, body, self.environment_id)

    async def connect(
        self,
        client_name: str = "exec-server-cli",
        on_relay_status: StatusCallback | None = None,
    ) -> ExecServerClient:
        url = await self.harness_url()
        try:
            return await ExecServerClient.connect(
                url,
                client_name=client_name,
                token=self.connection_token,
                on_relay_status=on_relay_status,
            )
        except (OSError, TimeoutError) as exc:
            raise TargetError(str(exc)) from None


def _url_from_connect(status: int, body: str, environment_id: str) -> str:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if status != 200:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") if isinstance(err, dict) else None
        raise TargetError(
            f"rendezvous refused access to environment {environment_id} ({status}): "
            f"{message or body[:300] or 'no details'}"
        )
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise TargetError("rendezvous answered /connect without a url")
    return url


def target_options(func: Any) -> Any:
    """The options every people-facing command takes."""
    for option in reversed(
        [
            click.option(
                "--url", help=f"exec-server websocket URL (env {URL_ENV} or {CODEX_URL_ENV})."
            ),
            click.option(
                "--rendezvous",
                metavar="BASE_URL",
                help=f"Rendezvous base URL (env {RENDEZVOUS_ENV}).",
            ),
            click.option(
                "--environment-id",
                help=f"Environment to use via the rendezvous (env {ENVIRONMENT_ENV}).",
            ),
            click.option(
                "--token-file",
                type=click.Path(path_type=Path, dir_okay=False),
                help=f"Rendezvous token file (default: env {RENDEZVOUS_TOKEN_ENV}).",
            ),
        ]
    ):
        func = option(func)
    return func
