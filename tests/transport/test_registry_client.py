"""The one registry client, against our rendezvous and against registries that misbehave."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from exec_server.errors import ExecServerError
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer
from exec_server.transport.reconnect import is_transient
from exec_server.transport.registry_client import RegistryClient, RegistryError


@pytest.fixture
async def rendezvous(tmp_path: Path) -> AsyncIterator[RendezvousServer]:
    server = RendezvousServer(RendezvousConfig(data_dir=tmp_path))
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


async def test_register_connect_and_list(rendezvous: RendezvousServer) -> None:
    base = rendezvous.base_url
    async with RegistryClient(base + "/", rendezvous.token) as registry:
        registration = await registry.register("env-1", name="laptop")
        assert registration.environment_id == "env-1"
        assert "role=environment" in registration.url
        harness = await registry.connect("env-1", lifetime_s=60)
        assert "role=harness" in harness.url and harness.online is False
        assert harness.expires_at is not None and harness.expires_at.endswith("Z")
        [record] = await registry.list_environments()
        assert (record.id, record.name, record.online, record.streams) == (
            "env-1",
            "laptop",
            False,
            0,
        )
        assert record.last_seen is not None and record.last_seen.endswith("Z")
        assert record.as_dict()["id"] == "env-1"
    async with RegistryClient(base, rendezvous.token, flavor="executor") as registry:
        assert (await registry.register("exec-1")).environment_id == "exec-1"


async def test_refusals_carry_status_code_and_message(rendezvous: RendezvousServer) -> None:
    async with RegistryClient(rendezvous.base_url, "wrong") as registry:
        with pytest.raises(RegistryError) as info:
            await registry.connect("env-1")
    error = info.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.message == "missing or invalid bearer token"
    assert error.unauthorized and not error.transient and not is_transient(error)
    assert isinstance(error, ExecServerError)
    assert "answered 401 unauthorized: missing or invalid bearer token" in str(error)
    async with RegistryClient(rendezvous.base_url, rendezvous.token) as registry:
        with pytest.raises(RegistryError) as info:
            await registry.connect("env-1", lifetime_s=-1)
    assert (info.value.status, info.value.code) == (400, "invalid_request")


async def test_ids_that_are_not_path_safe_are_refused_before_sending() -> None:
    registry = RegistryClient("http://127.0.0.1:9", "t")
    with pytest.raises(RegistryError) as info:
        await registry.connect("../admin")
    assert info.value.code == "invalid_environment_id" and not info.value.transient
    with pytest.raises(ValueError, match="http:// or https://"):
        RegistryClient("ws://127.0.0.1:9", "t")


async def test_unreachable_is_transient() -> None:
    async with RegistryClient("http://127.0.0.1:1", "t") as registry:
        with pytest.raises(RegistryError) as info:
            await registry.list_environments()
    assert (info.value.status, info.value.code) == (0, "unreachable")
    assert info.value.transient and is_transient(info.value)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_registry() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "code", "message", "transient"),
    [
        (503, b'{"error": {"code": "busy", "message": "try later"}}', "busy", "try later", True),
        (429, b"slow down", "", "slow down", True),
        (404, b"", "", "empty or malformed error body", False),
        (302, b"", "redirect", "redirects are not followed", False),
        (200, b"not json", "invalid_response", "returned invalid JSON", False),
        (200, b'{"no_url": 1}', "invalid_response", "response is missing field `url`", False),
        (
            200,
            b'{"environment_id": "other", "url": "ws://x"}',
            "invalid_response",
            "returned a different environment id",
            False,
        ),
    ],
)
async def test_misbehaving_registries(
    fake_registry: Callable[[Handler], Awaitable[str]],
    status: int,
    body: bytes,
    code: str,
    message: str,
    transient: bool,
) -> None:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        headers = {"Location": "http://elsewhere/"} if status == 302 else None
        return web.Response(status=status, body=body, headers=headers)

    base = await fake_registry(handler)
    async with RegistryClient(base, "tok") as registry:
        with pytest.raises(RegistryError) as info:
            await registry.register("env-1", name="n")
    error = info.value
    assert (error.status, error.code, error.message, error.transient) == (
        status,
        code,
        message,
        transient,
    )
    assert len(seen) == 1, "redirects are not followed"
    request = seen[0]
    assert request.method == "POST" and request.path == "/cloud/environment/env-1/register"
    assert request.headers["Authorization"] == "Bearer tok" and request.query["name"] == "n"


async def test_timeouts_are_transient(fake_registry: Callable[[Handler], Awaitable[str]]) -> None:
    import asyncio

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    base = await fake_registry(handler)
    async with RegistryClient(base, "tok", timeout_s=5) as registry:
        with pytest.raises(RegistryError) as info:
            await registry.list_environments(timeout_s=0.2)
    assert (info.value.status, info.value.code, info.value.transient) == (0, "timeout", True)
