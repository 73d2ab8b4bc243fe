"""Credentials and state across restarts: token resolution, signing secret, SQLite store."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import aiohttp
import pytest
from rendezvous_support import (
    MakeRendezvous,
    auth,
    dial,
    harness_url,
    recv_frame,
    register,
    resume,
    wait_for,
)

from exec_server.rendezvous import CredentialError, RendezvousConfig, RendezvousServer
from exec_server.rendezvous.credentials import TOKEN_ENV, resolve_token
from exec_server.rendezvous.registration_store import MemoryRegistrationStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_restart_with_data_dir_keeps_token_urls_and_registrations(
    http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "rdv"
    config = RendezvousConfig(data_dir=data_dir, environment_grace_s=0.3, ping_interval_s=None)
    first = RendezvousServer(config)
    await first.start()
    token = first.token
    assert first.token_path == data_dir / "token"
    assert _mode(data_dir / "token") == 0o600
    assert _mode(data_dir / "url-signing-secret") == 0o600
    assert _mode(data_dir) == 0o700
    assert token not in caplog.text  # only the path is logged
    async with http.post(
        f"{first.base_url}/cloud/environment/env-1/register?name=box", headers=auth(token)
    ) as resp:
        environment_url = (await resp.json())["url"]
    harness = await harness_url(http, first.base_url, "env-1", token)
    port = int(first.base_url.rsplit(":", 1)[1])
    await first.close()

    second = RendezvousServer(config)
    await second.start("127.0.0.1", port)
    try:
        assert second.token == token
        # URLs handed out before the restart are still accepted...
        env = await dial(http, environment_url)
        await wait_for(lambda: second.router.is_online("env-1"))
        harness_ws = await dial(http, harness)
        await harness_ws.send_bytes(resume("s-1"))
        assert (await recv_frame(env)).stream_id == "s-1"
        # ...and the registration (with its name) survived in SQLite.
        async with http.get(f"{second.base_url}/cloud/environments", headers=auth(token)) as resp:
            listing = await resp.json()
        assert [(row["id"], row["name"], row["online"]) for row in listing] == [
            ("env-1", "box", True)
        ]
    finally:
        await second.close()


async def test_without_data_dir_the_secret_is_per_process(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    first = await make_rendezvous()
    url = await register(http, first.base_url, "env-1")
    port = int(first.base_url.rsplit(":", 1)[1])
    await first.close()
    second = await make_rendezvous()
    assert f":{port}/" in url
    rebased = "ws://" + second.base_url.split("://", 1)[1] + "/relay/" + url.split("/relay/")[1]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await dial(http, rebased)
    assert info.value.status == 403


async def test_generated_token_goes_to_a_private_temp_file_removed_on_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = RendezvousServer(RendezvousConfig(ping_interval_s=None))
    await server.start()
    path = server.token_path
    assert path is not None and path.read_text().strip() == server.token
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert str(path) in caplog.text and server.token not in caplog.text
    await server.close()
    assert not path.parent.exists()


def test_token_resolution_order(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    assert resolve_token(data_dir, explicit="explicit").token == "explicit"
    assert resolve_token(data_dir, environ={TOKEN_ENV: " from-env \n"}).token == "from-env"
    assert not (data_dir / "token").exists()  # the variable wins without touching the dir
    created = resolve_token(data_dir, environ={})
    assert resolve_token(data_dir, environ={}).token == created.token
    with pytest.raises(CredentialError):
        resolve_token(data_dir, environ={TOKEN_ENV: "  "})
    (data_dir / "token").write_text("")
    with pytest.raises(CredentialError):
        resolve_token(data_dir, environ={})
    assert "from-env" not in repr(resolve_token(None, environ={TOKEN_ENV: "from-env"}))


async def test_token_from_environment_variable(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    async with RendezvousServer(RendezvousConfig(data_dir=tmp_path)) as server:
        assert server.token == "env-token" and server.token_path is None
        await register(http, server.base_url, "env-1", token="env-token")


async def test_memory_store_keeps_name_on_nameless_upsert() -> None:
    store = MemoryRegistrationStore()
    await store.upsert("a", "name", 1.0)
    row = await store.upsert("a", None, 2.0)
    assert (row.name, row.created, row.last_seen) == ("name", 1.0, 2.0)
