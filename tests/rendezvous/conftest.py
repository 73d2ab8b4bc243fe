"""Fixtures: rendezvous servers on loopback (small grace periods) and an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from rendezvous_support import TOKEN, MakeRendezvous

from exec_server.rendezvous import RendezvousConfig, RendezvousServer


@pytest.fixture(autouse=True)
def _no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_SERVER_RENDEZVOUS_TOKEN", raising=False)


@pytest.fixture
async def make_rendezvous() -> AsyncIterator[MakeRendezvous]:
    servers: list[RendezvousServer] = []

    async def make(**overrides: Any) -> RendezvousServer:
        settings: dict[str, Any] = {
            "token": TOKEN,
            "environment_grace_s": 0.3,
            "harness_grace_s": 0.3,
            "ping_interval_s": None,
        }
        settings.update(overrides)
        server = RendezvousServer(RendezvousConfig(**settings))
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def rendezvous(make_rendezvous: MakeRendezvous) -> RendezvousServer:
    return await make_rendezvous()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
