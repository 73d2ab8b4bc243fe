"""Our environment and our client meeting at the rendezvous, including socket drops.

The environment registers (with ``?name=``) and dials its signed URL; the client dials a
``role=harness`` URL. The reliable relay between them must survive the rendezvous
cutting either socket: the harness redials the same URL (same nonce: it re-claims its
stream) and the environment re-registers and reconnects within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from rendezvous_support import TOKEN, WAIT_S, MakeRendezvous, auth, wait_for

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.rendezvous import RendezvousServer, UrlRole

ENV = "env-e2e"


@dataclass
class Setup:
    rendezvous: RendezvousServer
    remote: RemoteEnvironment


@pytest.fixture
async def setup(make_rendezvous: MakeRendezvous) -> AsyncIterator[Setup]:
    rendezvous = await make_rendezvous(environment_grace_s=10.0, harness_grace_s=10.0)
    server = ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            base_url=rendezvous.base_url,
            environment_id=ENV,
            token=TOKEN,
            name="e2e box",
            initial_backoff_s=0.05,
            max_backoff_s=0.2,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        await asyncio.wait_for(remote.connected.wait(), WAIT_S)
        yield Setup(rendezvous, remote)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await server.close()


async def _echo(client: ExecServerClient, text: str) -> bytes:
    handle = await client.start_process([sys.executable, "-c", f"print({text!r})"])
    result = await asyncio.wait_for(handle.collect(), WAIT_S)
    assert result.exit_code == 0
    return result.stdout


async def _cut(rendezvous: RendezvousServer, role: UrlRole) -> None:
    for peer in rendezvous.router.peers:
        if peer.role is role:
            await peer.aclose(code=1011, message=b"test cut")


async def test_client_reaches_environment_and_survives_socket_drops(
    setup: Setup, http: aiohttp.ClientSession
) -> None:
    rendezvous = setup.rendezvous
    async with http.get(f"{rendezvous.base_url}/cloud/environments", headers=auth()) as resp:
        listing = await resp.json()
    assert [(r["id"], r["name"], r["online"]) for r in listing] == [(ENV, "e2e box", True)]

    async with await ExecServerClient.connect(
        rendezvous=rendezvous.base_url,
        environment_id=ENV,
        token=TOKEN,
        config=ClientConfig(encryption="required"),
    ) as client:
        assert await _echo(client, "hello") == b"hello\n"
        assert rendezvous.router.stream_count(ENV) == 1

        await _cut(rendezvous, UrlRole.HARNESS)  # the client redials the same URL
        assert await _echo(client, "after harness drop") == b"after harness drop\n"
        assert rendezvous.router.stats.reclaims >= 1

        registrations = setup.remote.registrations
        await _cut(rendezvous, UrlRole.ENVIRONMENT)  # it re-registers and reconnects
        await wait_for(lambda: setup.remote.registrations > registrations)
        await wait_for(lambda: rendezvous.router.is_online(ENV))
        assert await _echo(client, "after environment drop") == b"after environment drop\n"
    stats = rendezvous.router.stats
    assert stats.resets_sent["environment_offline"] == 0
    assert stats.resets_sent["harness_offline"] == 0
