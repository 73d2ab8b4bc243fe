"""The seed's acceptance test (spec §5) against our environment, E1 and E2 naming.

A fake registry answers the registration; a fake rendezvous accepts the
environment's websocket and speaks raw protobuf relay frames to it, exactly as
Codex's `multiplexed_remote_executor_routes_independent_virtual_streams` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import WSMsgType, web

from exec_server.environment.remote import (
    RegistrationError,
    RemoteEnvironment,
    RemoteEnvironmentConfig,
)
from exec_server.environment.server import ExecServer
from exec_server.relay.frame_codec import data_frame, decode_frame, encode_frame, reset_frame

REGISTRY_TOKEN = "registry-token"
TEST_TIMEOUT_S = 5.0


@dataclass
class FakeCloud:
    """A registry and a rendezvous on loopback; the rendezvous hands sockets to the test."""

    flavor: str
    environment_id: str
    registry_status: int = 200
    sockets: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    registry_url: str = ""
    rendezvous_url: str = ""

    async def register(self, request: web.Request) -> web.Response:
        self.registrations.append(
            {"auth": request.headers.get("Authorization"), "body": await request.read()}
        )
        if request.headers.get("Authorization") != f"Bearer {REGISTRY_TOKEN}":
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "bad token"}}, status=401
            )
        if self.registry_status != 200:
            return web.json_response(
                {"error": {"code": "unavailable", "message": "try later"}},
                status=self.registry_status,
            )
        return web.json_response(
            {f"{self.flavor}_id": self.environment_id, "url": self.rendezvous_url}
        )

    async def rendezvous(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        await self.sockets.put(ws)
        await self.done.wait()
        return ws


@pytest.fixture
async def cloud_factory() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []
    clouds: list[FakeCloud] = []

    async def make(flavor: str, environment_id: str) -> FakeCloud:
        cloud = FakeCloud(flavor, environment_id)
        clouds.append(cloud)
        registry = web.Application()
        registry.router.add_post(f"/cloud/{flavor}/{environment_id}/register", cloud.register)
        rendezvous = web.Application()
        rendezvous.router.add_get("/", cloud.rendezvous)
        for app in (registry, rendezvous):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
        cloud.registry_url = f"http://127.0.0.1:{_port(runners[-2])}"
        cloud.rendezvous_url = f"ws://127.0.0.1:{_port(runners[-1])}"
        return cloud

    yield make
    for cloud in clouds:
        cloud.done.set()
    for runner in runners:
        await runner.cleanup()


def _port(runner: web.AppRunner) -> int:
    addresses = runner.addresses
    return int(addresses[0][1])


def _data(stream_id: str, seq: int, message: dict[str, Any]) -> bytes:
    return encode_frame(data_frame(stream_id, seq, msgspec.json.encode(message)))


async def _next_data(ws: web.WebSocketResponse) -> tuple[str, dict[str, Any]]:
    """Read until one data frame arrives; skip ack/resume/heartbeat and pings."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), TEST_TIMEOUT_S)
        assert msg.type is not WSMsgType.TEXT, "environment sent text frame on relay websocket"
        assert msg.type is WSMsgType.BINARY, f"unexpected websocket message {msg.type}"
        frame = decode_frame(msg.data)
        if frame.kind != "data":
            continue
        assert frame.version == 1
        assert frame.data.segment_index == 0 and frame.data.segment_count == 1
        return frame.stream_id, msgspec.json.decode(frame.data.payload)


async def _two_replies(ws: web.WebSocketResponse) -> dict[str, dict[str, Any]]:
    replies: dict[str, dict[str, Any]] = {}
    while len(replies) < 2:
        stream_id, message = await _next_data(ws)
        assert stream_id not in replies, "received duplicate response"
        replies[stream_id] = message
    return replies


@pytest.mark.parametrize(
    ("flavor", "environment_id"),
    [("executor", "exec-mux-test"), ("environment", "env-mux-test")],
)
async def test_multiplexed_remote_environment_routes_independent_virtual_streams(
    cloud_factory: Any, flavor: str, environment_id: str
) -> None:
    cloud: FakeCloud = await cloud_factory(flavor, environment_id)
    server = ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            transport="legacy",  # a 0.133-era registry
            base_url=cloud.registry_url + "/",
            environment_id=environment_id,
            token=REGISTRY_TOKEN,
            path_flavor=flavor,  # type: ignore[arg-type]
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        ws = await asyncio.wait_for(cloud.sockets.get(), TEST_TIMEOUT_S)
        assert cloud.registrations[0] == {"auth": f"Bearer {REGISTRY_TOKEN}", "body": b""}

        for stream_id, name in (("stream-a", "relay-test-a"), ("stream-b", "relay-test-b")):
            await ws.send_bytes(
                _data(
                    stream_id,
                    0,
                    {
                        "id": 1,
                        "method": "initialize",
                        "params": {"clientName": name, "resumeSessionId": None},
                    },
                )
            )
        replies = await _two_replies(ws)
        sessions = {}
        for stream_id in ("stream-a", "stream-b"):
            assert replies[stream_id]["id"] == 1
            sessions[stream_id] = replies[stream_id]["result"]["sessionId"]
            uuid.UUID(sessions[stream_id])
        assert sessions["stream-a"] != sessions["stream-b"]

        for stream_id in ("stream-a", "stream-b"):
            await ws.send_bytes(_data(stream_id, 1, {"method": "initialized", "params": {}}))
        for stream_id, method in (("stream-a", "test/unknown-a"), ("stream-b", "test/unknown-b")):
            await ws.send_bytes(_data(stream_id, 2, {"id": 2, "method": method, "params": {}}))
        replies = await _two_replies(ws)
        for stream_id, method in (("stream-a", "test/unknown-a"), ("stream-b", "test/unknown-b")):
            assert replies[stream_id]["id"] == 2
            assert replies[stream_id]["error"]["code"] == -32601
            assert method in replies[stream_id]["error"]["message"]

        await ws.send_bytes(encode_frame(reset_frame("stream-a", "test_reset")))
        await ws.send_bytes(
            _data(
                "stream-b",
                3,
                {"id": 3, "method": "test/unknown-b-after-reset", "params": {}},
            )
        )
        stream_id, message = await _next_data(ws)
        assert stream_id == "stream-b"
        assert message["id"] == 3
        assert "test/unknown-b-after-reset" in message["error"]["message"]

        # Reset detached stream-a's session: a new stream can resume it.
        await ws.send_bytes(
            _data(
                "stream-c",
                0,
                {
                    "id": 1,
                    "method": "initialize",
                    "params": {"clientName": "c", "resumeSessionId": sessions["stream-a"]},
                },
            )
        )
        stream_id, message = await _next_data(ws)
        assert stream_id == "stream-c"
        assert message["result"]["sessionId"] == sessions["stream-a"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


async def test_reconnects_and_reregisters_after_socket_loss(cloud_factory: Any) -> None:
    cloud: FakeCloud = await cloud_factory("environment", "env-reconnect")
    server = ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            transport="legacy",  # a 0.133-era registry
            base_url=cloud.registry_url,
            environment_id="env-reconnect",
            token=REGISTRY_TOKEN,
            initial_backoff_s=0.05,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        ws = await asyncio.wait_for(cloud.sockets.get(), TEST_TIMEOUT_S)
        init = {"id": 1, "method": "initialize", "params": {"clientName": "x"}}
        await ws.send_bytes(_data("s1", 0, init))
        _, reply = await _next_data(ws)
        session_id = reply["result"]["sessionId"]
        await ws.close()
        ws2 = await asyncio.wait_for(cloud.sockets.get(), TEST_TIMEOUT_S)
        assert len(cloud.registrations) == 2
        resume = {
            "id": 1,
            "method": "initialize",
            "params": {"clientName": "x", "resumeSessionId": session_id},
        }
        await ws2.send_bytes(_data("s2", 0, resume))
        stream_id, reply = await _next_data(ws2)
        assert stream_id == "s2" and reply["result"]["sessionId"] == session_id
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


async def test_bad_credentials_are_fatal_with_a_clear_message(cloud_factory: Any) -> None:
    cloud: FakeCloud = await cloud_factory("environment", "env-auth")
    remote = RemoteEnvironment(
        ExecServer(),
        RemoteEnvironmentConfig(
            transport="legacy",  # a 0.133-era registry
            base_url=cloud.registry_url,
            environment_id="env-auth",
            token="wrong-token",
        ),
    )
    with pytest.raises(RegistrationError, match=r"authentication failed \(401\): bad token"):
        await asyncio.wait_for(remote.run(), TEST_TIMEOUT_S)


async def test_server_errors_are_retried(cloud_factory: Any) -> None:
    cloud: FakeCloud = await cloud_factory("environment", "env-503")
    cloud.registry_status = 503
    remote = RemoteEnvironment(
        ExecServer(),
        RemoteEnvironmentConfig(
            transport="legacy",  # a 0.133-era registry
            base_url=cloud.registry_url,
            environment_id="env-503",
            token=REGISTRY_TOKEN,
            initial_backoff_s=0.02,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        for _ in range(200):
            if len(cloud.registrations) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(cloud.registrations) >= 3
        cloud.registry_status = 200
        await asyncio.wait_for(cloud.sockets.get(), TEST_TIMEOUT_S)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_invalid_environment_id_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid environment id"):
        RemoteEnvironmentConfig(base_url="http://x", environment_id="a/b", token="t")
