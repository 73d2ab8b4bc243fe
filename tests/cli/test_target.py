"""Every way `Target.resolve` finds where to connect: option, our variable, the Codex
harness's variable, the config file, in that order, and the errors when nothing is set."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from exec_server.cli import target as target_mod
from exec_server.cli.errors import CliError
from exec_server.cli.target import Target
from exec_server.client.connect import (
    CODEX_NOISE_ACCOUNT_ID_ENV,
    CODEX_NOISE_AUTH_TOKEN_ENV,
    CODEX_NOISE_ENVIRONMENT_ID_ENV,
    CODEX_NOISE_REGISTRY_URL_ENV,
)

_ALL_VARS = (
    target_mod.URL_ENV,
    target_mod.CODEX_URL_ENV,
    target_mod.RENDEZVOUS_ENV,
    target_mod.ENVIRONMENT_ENV,
    target_mod.RENDEZVOUS_TOKEN_ENV,
    target_mod.CONNECTION_TOKEN_ENV,
    CODEX_NOISE_REGISTRY_URL_ENV,
    CODEX_NOISE_ENVIRONMENT_ID_ENV,
    CODEX_NOISE_AUTH_TOKEN_ENV,
    CODEX_NOISE_ACCOUNT_ID_ENV,
)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment whose config file path is ``tmp_path/config.toml`` (absent
    until a test writes it)."""
    for name in _ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config.toml"
    monkeypatch.setenv(target_mod.CONFIG_ENV, str(path))
    return path


def test_url_option(config_file: Path) -> None:
    target = Target.resolve("ws://h:1", None, None, None)
    assert target == Target(url="ws://h:1")
    assert target.describe() == "ws://h:1"


def test_url_and_rendezvous_together_is_a_usage_error(config_file: Path) -> None:
    with pytest.raises(CliError, match="not both") as info:
        Target.resolve("ws://h:1", "http://r:2", None, None)
    assert info.value.exit_code == 2


def test_nothing_anywhere_is_a_usage_error(config_file: Path) -> None:
    with pytest.raises(CliError, match="no exec-server to connect to") as info:
        Target.resolve(None, None, None, None)
    assert info.value.exit_code == 2


def test_rendezvous_option_with_our_variables(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(target_mod.ENVIRONMENT_ENV, "laptop")
    monkeypatch.setenv(target_mod.RENDEZVOUS_TOKEN_ENV, "tok")
    target = Target.resolve(None, "http://r:2", None, None)
    assert target == Target(
        rendezvous="http://r:2", environment_id="laptop", rendezvous_token="tok"
    )
    assert target.describe() == "environment laptop via http://r:2"


def test_environment_id_option_beats_the_variable(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(target_mod.ENVIRONMENT_ENV, "laptop")
    target = Target.resolve(None, "http://r:2", "desk", None)
    assert target.environment_id == "desk"


def test_our_url_variable_then_codex_url_variable(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(target_mod.CODEX_URL_ENV, "ws://codex:1")
    assert Target.resolve(None, None, None, None).url == "ws://codex:1"
    monkeypatch.setenv(target_mod.URL_ENV, "ws://ours:1")
    assert Target.resolve(None, None, None, None).url == "ws://ours:1"


def test_a_rendezvous_from_the_environment_wins_over_a_url(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(target_mod.URL_ENV, "ws://ours:1")
    monkeypatch.setenv(target_mod.RENDEZVOUS_ENV, "http://r:2")
    target = Target.resolve(None, None, None, None)
    assert target.url is None
    assert target.rendezvous == "http://r:2"


def test_the_codex_harness_variables(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CODEX_NOISE_REGISTRY_URL_ENV, "http://codex-registry:3")
    monkeypatch.setenv(CODEX_NOISE_ENVIRONMENT_ID_ENV, "codex-env")
    monkeypatch.setenv(CODEX_NOISE_AUTH_TOKEN_ENV, "codex-token")
    monkeypatch.setenv(CODEX_NOISE_ACCOUNT_ID_ENV, "acct")
    assert Target.resolve(None, None, None, None) == Target(
        rendezvous="http://codex-registry:3",
        environment_id="codex-env",
        rendezvous_token="codex-token",
        account_id="acct",
    )
    # Ours come first.
    monkeypatch.setenv(target_mod.RENDEZVOUS_ENV, "http://r:2")
    monkeypatch.setenv(target_mod.ENVIRONMENT_ENV, "laptop")
    monkeypatch.setenv(target_mod.RENDEZVOUS_TOKEN_ENV, "tok")
    assert Target.resolve(None, None, None, None) == Target(
        rendezvous="http://r:2",
        environment_id="laptop",
        rendezvous_token="tok",
        account_id="acct",
    )


def test_the_config_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(
        'rendezvous = "http://cfg:4"\nenvironment_id = "cfg-env"\ntoken = "cfg-token"\n'
        'url = "ws://cfg:5"\n'
    )
    assert Target.resolve(None, None, None, None) == Target(
        rendezvous="http://cfg:4", environment_id="cfg-env", rendezvous_token="cfg-token"
    )
    # A variable beats the file, setting by setting.
    monkeypatch.setenv(target_mod.ENVIRONMENT_ENV, "laptop")
    assert Target.resolve(None, None, None, None).environment_id == "laptop"


def test_a_url_from_the_config_file(config_file: Path) -> None:
    config_file.write_text('url = "ws://cfg:5"\n')
    assert Target.resolve(None, None, None, None) == Target(url="ws://cfg:5")


def test_an_unreadable_config_file_is_named(config_file: Path) -> None:
    config_file.write_text("url = \n")
    with pytest.raises(CliError, match="cannot read config file") as info:
        Target.resolve("ws://h:1", None, None, None)
    assert str(config_file) in info.value.message


def test_token_file_option_beats_everything(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv(target_mod.RENDEZVOUS_TOKEN_ENV, "tok")
    config_file.write_text('token = "cfg-token"\n')
    target = Target.resolve(None, "http://r:2", "e", token_file)
    assert target.rendezvous_token == "from-file"


def test_token_file_from_the_config_file(config_file: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("configured\n")
    config_file.write_text(f'token_file = "{token_file}"\ntoken = "ignored"\n')
    target = Target.resolve(None, "http://r:2", "e", None)
    assert target.rendezvous_token == "configured"


def test_an_empty_token_file_is_a_usage_error(config_file: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    with pytest.raises(click.UsageError, match="is empty"):
        Target.resolve(None, "http://r:2", "e", token_file)


def test_the_connection_token_variable(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(target_mod.CONNECTION_TOKEN_ENV, "conn")
    assert Target.resolve("ws://h:1", None, None, None).connection_token == "conn"


def test_empty_variables_count_as_unset(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(target_mod.URL_ENV, "")
    monkeypatch.setenv(target_mod.RENDEZVOUS_ENV, "")
    with pytest.raises(CliError, match="no exec-server to connect to"):
        Target.resolve(None, None, None, None)


def test_connect_needs_an_environment_id_and_a_token(config_file: Path) -> None:
    with pytest.raises(CliError, match="--environment-id is required"):
        Target.resolve(None, "http://r:2", None, None).connect()
    with pytest.raises(CliError, match="a rendezvous token is required"):
        Target.resolve(None, "http://r:2", "e", None).connect()


def test_with_environment(config_file: Path) -> None:
    via_rendezvous = Target.resolve(None, "http://r:2", "e", None)
    assert via_rendezvous.with_environment("other").environment_id == "other"
    assert via_rendezvous.with_environment(None) is via_rendezvous
    direct = Target.resolve("ws://h:1", None, None, None)
    assert direct.with_environment("label") is direct
