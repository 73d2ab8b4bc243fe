"""Where the people-facing commands connect: a URL, or a rendezvous plus environment id.

Resolution order for each setting: command-line option, environment variable, then
the config file (``$EXEC_SERVER_CONFIG`` or ``~/.config/exec-server/config.toml``)::

    url = "ws://127.0.0.1:8765"            # or a role=harness rendezvous URL
    rendezvous = "http://127.0.0.1:7000"
    environment_id = "laptop"
    token_file = "~/.config/exec-server/token"   # rendezvous token (or `token = ...`)

With a rendezvous, every connection asks the registry for an end-to-end encrypted
connection (a fresh Noise key, ``/connect``, the handshake; the cleartext relay for an
environment registered the 0.133 way), as the SDK's
``ExecServerClient.connect(rendezvous=..., environment_id=...)`` does. The Codex
harness's variables are honoured too, after ours: ``CODEX_EXEC_SERVER_NOISE_REGISTRY_URL``
(a rendezvous), ``_ENVIRONMENT_ID``, ``_AUTH_TOKEN`` (the registry bearer) and
``_CHATGPT_ACCOUNT_ID``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import msgspec

from ..client import ClientConfig, Connecting, ExecServerClient, RelayStatus
from ..client.connect import CodexNoiseEnvironment, codex_noise_environment
from .errors import CliError
from .tokens import read_token_file

URL_ENV = "EXEC_SERVER_URL"
CODEX_URL_ENV = "CODEX_EXEC_SERVER_URL"
RENDEZVOUS_ENV = "EXEC_SERVER_RENDEZVOUS"
ENVIRONMENT_ENV = "EXEC_SERVER_ENVIRONMENT_ID"
RENDEZVOUS_TOKEN_ENV = "EXEC_SERVER_RENDEZVOUS_TOKEN"
CONNECTION_TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"
CONFIG_ENV = "EXEC_SERVER_CONFIG"
CLI_CLIENT_NAME = "exec-server-cli"


def _config_file() -> dict[str, Any]:
    path = Path(
        os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "exec-server" / "config.toml"
    ).expanduser()
    if not path.is_file():
        return {}
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read config file {path}: {exc}", exit_code=2) from None


def _first(*values: str | None) -> str | None:
    """The first value that is set and not empty, else ``None``."""
    return next((value for value in values if value), None)


def _rendezvous_token(
    token_file: Path | None, config: dict[str, Any], codex: CodexNoiseEnvironment | None
) -> str | None:
    """A token file (the option, else the config file's ``token_file``) wins; then
    our variable, the Codex harness's, the config file's ``token``."""
    configured_file = config.get("token_file")
    token_path = token_file or (Path(configured_file).expanduser() if configured_file else None)
    if token_path is not None:
        return read_token_file(token_path, "--token-file")
    return _first(
        os.environ.get(RENDEZVOUS_TOKEN_ENV),
        codex.auth_token if codex else None,
        config.get("token"),
    )


def _default_endpoint(
    config: dict[str, Any], codex: CodexNoiseEnvironment | None
) -> tuple[str | None, str | None]:
    """``(url, rendezvous)`` when no option named either: the environment, then the
    config file."""
    url = _first(os.environ.get(URL_ENV), os.environ.get(CODEX_URL_ENV), config.get("url"))
    rendezvous = _first(
        os.environ.get(RENDEZVOUS_ENV),
        codex.registry_url if codex else None,
        config.get("rendezvous"),
    )
    return url, rendezvous


class Target(msgspec.Struct, frozen=True):
    """One place to connect to, resolved from options, environment and config file."""

    url: str | None = None
    rendezvous: str | None = None
    environment_id: str | None = None
    rendezvous_token: str | None = None
    connection_token: str | None = None
    account_id: str | None = None

    @classmethod
    def resolve(
        cls,
        url: str | None,
        rendezvous: str | None,
        environment_id: str | None,
        token_file: Path | None,
    ) -> Target:
        """The target from the options given, else the environment, else the config file.

        ``--url`` and ``--rendezvous`` together are a usage error. With neither, a
        rendezvous from the environment or the config file wins over a URL from them.
        Each setting is taken from the first of: option, our variable, the Codex
        harness's variable, the config file.
        """
        if url and rendezvous:
            raise CliError("give --url or --rendezvous, not both", exit_code=2)
        config = _config_file()
        codex = codex_noise_environment()
        rendezvous_token = _rendezvous_token(token_file, config, codex)
        if not url and not rendezvous:
            url, rendezvous = _default_endpoint(config, codex)
        target = cls(
            url=None if rendezvous else url,
            rendezvous=rendezvous,
            environment_id=_first(
                environment_id,
                os.environ.get(ENVIRONMENT_ENV),
                codex.environment_id if codex else None,
                config.get("environment_id"),
            ),
            rendezvous_token=rendezvous_token,
            connection_token=os.environ.get(CONNECTION_TOKEN_ENV),
            account_id=codex.account_id if codex else None,
        )
        if target.url is None and target.rendezvous is None:
            raise CliError(
                "no exec-server to connect to",
                hint="pass --url WS_URL or --rendezvous BASE_URL --environment-id ID "
                f"(or set {URL_ENV} / {RENDEZVOUS_ENV}, or write a config file)",
                exit_code=2,
            )
        return target

    def with_environment(self, environment_id: str | None) -> Target:
        """The same rendezvous, another environment (``cp ENV:/path``); with a URL the
        name is only a label (``env:/path``) for the one server there is."""
        if environment_id is None or self.rendezvous is None:
            return self
        return msgspec.structs.replace(self, environment_id=environment_id)

    def describe(self) -> str:
        """The target as a person would name it (no signatures or tokens)."""
        if self.rendezvous is not None:
            return f"environment {self.environment_id} via {self.rendezvous}"
        assert self.url is not None
        parts = urlsplit(self.url)
        return parts._replace(query="", fragment="").geturl()

    def client_config(self, *, relay_status: bool = True) -> ClientConfig:
        """The SDK config every people-facing command uses; with ``relay_status``, what
        the rendezvous reports about the environment is printed on stderr
        (:func:`print_relay_status`)."""
        return ClientConfig(
            client_name=CLI_CLIENT_NAME,
            on_relay_status=print_relay_status if relay_status else None,
            chatgpt_account_id=self.account_id,
        )

    def connect(self, *, relay_status: bool = True) -> Connecting:
        """``async with target.connect() as client``; ConnectError when it fails.
        ``relay_status=False`` keeps status lines off stderr (a raw-mode terminal)."""
        config = self.client_config(relay_status=relay_status)
        if self.rendezvous is not None:
            if not self.environment_id:
                raise CliError(
                    "--environment-id is required with --rendezvous",
                    hint=f"or set {ENVIRONMENT_ENV}; `exec-server envs` lists them",
                    exit_code=2,
                )
            if not self.rendezvous_token:
                raise CliError(
                    "a rendezvous token is required",
                    hint=f"set {RENDEZVOUS_TOKEN_ENV} or pass --token-file",
                    exit_code=2,
                )
            try:
                return ExecServerClient.connect(
                    rendezvous=self.rendezvous,
                    environment_id=self.environment_id,
                    token=self.rendezvous_token,
                    config=config,
                )
            except ValueError as exc:
                raise CliError(str(exc), exit_code=2) from None
        assert self.url is not None
        try:
            return ExecServerClient.connect(self.url, token=self.connection_token, config=config)
        except ValueError as exc:
            raise CliError(f"bad --url: {exc}", exit_code=2) from None


def print_relay_status(status: RelayStatus) -> None:
    """Tell the person at the terminal why nothing is happening (stderr)."""
    if status.state == "offline":
        wait = f" up to {status.grace_s:.0f}s" if status.grace_s is not None else ""
        click.echo(f"exec-server: the environment is offline; waiting{wait} for it", err=True)
    elif status.state == "online":
        click.echo("exec-server: the environment is back online", err=True)
    elif status.state == "reconnecting":
        click.echo(f"exec-server: lost the rendezvous ({status.detail}); reconnecting", err=True)
    elif status.state == "reconnected":
        click.echo("exec-server: reconnected to the rendezvous", err=True)


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
                help=f"Rendezvous base URL (env {RENDEZVOUS_ENV}); several nodes of a "
                "cluster: comma separated, tried in order.",
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
