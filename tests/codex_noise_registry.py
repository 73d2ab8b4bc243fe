"""Test support for the Noise relay: a registry + rendezvous of Codex's contract, and an
asyncio harness (initiator) built on :mod:`exec_server.relay.noise`.

:class:`CodexNoiseRegistry` plays what OpenAI's environment registry and rendezvous do
for Codex 0.171 (codex-0171.md §3.3): ``/register`` takes the executor's Noise key and
answers ``security_profile`` + ``executor_registration_id``; ``/connect`` takes a harness
key and answers the bundle (executor key, registration id, a random authorization, the
harness websocket URL); ``/validate`` answers whether that authorization was issued for
that harness key and registration. Its websockets forward relay frames verbatim by
``stream_id``. Every HTTP request is recorded (``requests``) for assertions.

:func:`noise_connect` is a minimal harness over any registry that speaks the contract
(this one or ``exec-server rendezvous``): ``/connect`` with a fresh per-connection key,
one websocket, one stream, JSON-RPC requests and notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from frame_peek import peek_stream_id

from exec_server.relay.frame_codec import decode_frame, encode_frame
from exec_server.relay.noise import NoiseIdentity, NoisePublicKey
from exec_server.relay.noise.stream import (
    HandshakeCompleted,
    MessageReceived,
    NoiseInitiatorStream,
    SendFrame,
    StreamClosed,
)

SECURITY_PROFILE = "noise_hybrid_ik_v1"
WAIT_S = 20.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Environment:
    registration_id: str
    executor_key: dict[str, str]
    socket: web.WebSocketResponse | None = None
    streams: dict[str, web.WebSocketResponse] = field(default_factory=dict)


class CodexNoiseRegistry:
    """Codex's registry contract on loopback (test-only; no signing, no persistence)."""

    def __init__(self, *, executor_token: str, harness_token: str) -> None:
        self.executor_token = executor_token
        self.harness_token = harness_token
        self.requests: list[RecordedRequest] = []
        self.environments: dict[str, _Environment] = {}
        # authorization -> (environment id, registration id, harness key JSON object)
        self._authorizations: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.validated_streams: list[str] = []
        self.frames_to_environment: list[bytes] = []
        self.frames_to_harness: list[bytes] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self._registered = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/cloud/environment/{id}/register", self._register)
        app.router.add_post("/cloud/environment/{id}/connect", self._connect)
        app.router.add_post("/cloud/environment/{id}/validate", self._validate)
        app.router.add_get("/ws/environment/{id}", self._websocket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        for env in self.environments.values():
            for ws in [env.socket, *env.streams.values()]:
                if ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_registered(self, environment_id: str) -> _Environment:
        async def online() -> _Environment:
            while True:
                env = self.environments.get(environment_id)
                if env is not None and env.socket is not None:
                    return env
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(online(), WAIT_S)

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
        return body

    def _bearer_ok(self, request: web.Request, token: str) -> bool:
        return request.headers.get("Authorization") == f"Bearer {token}"

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._bearer_ok(request, self.executor_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        if not isinstance(body, dict) or body.get("security_profile") != SECURITY_PROFILE:
            return web.json_response({"error": "bad profile"}, status=400)
        NoisePublicKey.from_json_obj(body["executor_public_key"])  # strict parse
        environment_id = request.match_info["id"]
        registration_id = f"registration-{secrets.token_hex(6)}"
        self.environments[environment_id] = _Environment(
            registration_id, body["executor_public_key"]
        )
        return web.json_response(
            {
                "environment_id": environment_id,
                "url": self._ws_url(environment_id, "environment"),
                "security_profile": SECURITY_PROFILE,
                "executor_registration_id": registration_id,
            }
        )

    def _ws_url(self, environment_id: str, role: str) -> str:
        ws_base = self.base_url.replace("http", "ws", 1)
        return f"{ws_base}/ws/environment/{environment_id}?role={role}"

    async def _connect(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._bearer_ok(request, self.harness_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        environment_id = request.match_info["id"]
        env = self.environments.get(environment_id)
        if env is None:
            return web.json_response({"error": "unknown environment"}, status=404)
        harness_key = body["harness_public_key"]
        NoisePublicKey.from_json_obj(harness_key)
        authorization = secrets.token_urlsafe(24)
        self._authorizations[authorization] = (environment_id, env.registration_id, harness_key)
        return web.json_response(
            {
                "environment_id": environment_id,
                "url": self._ws_url(environment_id, "harness"),
                "security_profile": SECURITY_PROFILE,
                "executor_registration_id": env.registration_id,
                "executor_public_key": env.executor_key,
                "harness_key_authorization": authorization,
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._bearer_ok(request, self.executor_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        issued = self._authorizations.pop(body.get("harness_key_authorization", ""), None)
        valid = issued == (
            request.match_info["id"],
            body.get("executor_registration_id"),
            body.get("harness_public_key"),
        )
        if valid:
            self.validated_streams.append(request.headers.get("x-codex-noise-stream-id", ""))
        return web.json_response({"valid": valid})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        environment_id = request.match_info["id"]
        role = request.query.get("role")
        env = self.environments.get(environment_id)
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        if env is None:
            await ws.close()
            return ws
        if role == "environment":
            env.socket = ws
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                self.frames_to_harness.append(msg.data)
                target = env.streams.get(peek_stream_id(msg.data) or "")
                if target is not None and not target.closed:
                    await target.send_bytes(msg.data)
            if env.socket is ws:
                env.socket = None
        else:
            owned: set[str] = set()
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                stream_id = peek_stream_id(msg.data) or ""
                env.streams[stream_id] = ws
                owned.add(stream_id)
                self.frames_to_environment.append(msg.data)
                if env.socket is not None and not env.socket.closed:
                    await env.socket.send_bytes(msg.data)
            for stream_id in owned:
                if env.streams.get(stream_id) is ws:
                    del env.streams[stream_id]
        return ws


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"JSON-RPC error {error.get('code')}: {error.get('message')}")
        self.error = error


class NoiseHarness:
    """One encrypted JSON-RPC connection (see :func:`noise_connect`)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, stream: NoiseInitiatorStream) -> None:
        self.ws = ws
        self.stream = stream
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.received_frames: list[bytes] = []
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1

    async def send(self, message: dict[str, Any]) -> None:
        raw = json.dumps(message, separators=(",", ":")).encode()
        for frame in self.stream.send_messages([raw]):
            await self.ws.send_bytes(encode_frame(frame))

    async def request(self, method: str, params: Any = None, timeout: float = WAIT_S) -> Any:
        request_id = self._next_id
        self._next_id += 1
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        await self.send({"id": request_id, "method": method, "params": params})
        return await asyncio.wait_for(waiter, timeout)

    async def notify(self, method: str, params: Any = None) -> None:
        await self.send({"method": method, "params": params})

    def _dispatch(self, payload: bytes) -> None:
        message = json.loads(payload)
        waiter = self._waiters.pop(message.get("id"), None) if "method" not in message else None
        if waiter is None:
            self.notifications.put_nowait(message)
        elif "error" in message:
            waiter.set_exception(RpcError(message["error"]))
        else:
            waiter.set_result(message.get("result"))

    def _fail_all(self, reason: str) -> None:
        self.close_reason = reason
        self.closed.set()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(reason))
        self._waiters.clear()

    async def read_loop(self, handshake_done: asyncio.Future[None]) -> None:
        reason = "websocket closed"
        try:
            async for msg in self.ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                self.received_frames.append(msg.data)
                for event in self.stream.receive_frame(decode_frame(msg.data)):
                    if isinstance(event, SendFrame):
                        await self.ws.send_bytes(encode_frame(event.frame))
                    elif isinstance(event, HandshakeCompleted):
                        handshake_done.set_result(None)
                    elif isinstance(event, MessageReceived):
                        self._dispatch(event.payload)
                    elif isinstance(event, StreamClosed):
                        reason = f"stream closed ({'remote' if event.remote else 'local'}): "
                        reason += event.reason
                        await self.ws.close()
        finally:
            if not handshake_done.done():
                handshake_done.set_exception(ConnectionError(reason))
            self._fail_all(reason)


async def fetch_bundle(
    http: aiohttp.ClientSession,
    base_url: str,
    environment_id: str,
    token: str,
    harness_key: NoisePublicKey,
) -> dict[str, Any]:
    """``POST /connect`` with ``harness_key``: the Noise bundle."""
    async with http.post(
        f"{base_url}/cloud/environment/{environment_id}/connect",
        headers={"Authorization": f"Bearer {token}"},
        json={"harness_public_key": harness_key.to_json_obj()},
    ) as resp:
        assert resp.status == 200, await resp.text()
        bundle: dict[str, Any] = await resp.json()
    assert bundle["security_profile"] == SECURITY_PROFILE
    return bundle


@contextlib.asynccontextmanager
async def noise_connect(
    http: aiohttp.ClientSession,
    base_url: str,
    environment_id: str,
    token: str,
    *,
    identity: NoiseIdentity | None = None,
    connect_key: NoisePublicKey | None = None,
    bundle: dict[str, Any] | None = None,
    initialize: bool = True,
) -> AsyncIterator[NoiseHarness]:
    """``/connect`` + websocket + handshake (+ ``initialize``/``initialized``).

    ``connect_key`` (default: the identity's) is the key sent to ``/connect``: another
    key makes the handshake prove a key the registry did not authorize. ``bundle`` skips
    ``/connect`` and reuses one (with the same ``identity``: a replay)."""
    identity = identity or NoiseIdentity.generate()
    if bundle is None:
        bundle = await fetch_bundle(
            http, base_url, environment_id, token, connect_key or identity.public_key
        )
    stream = NoiseInitiatorStream(
        stream_id=str(uuid.uuid4()),
        environment_id=bundle["environment_id"],
        executor_registration_id=bundle["executor_registration_id"],
        executor_public_key=NoisePublicKey.from_json_obj(bundle["executor_public_key"]),
        authorization=bundle["harness_key_authorization"],
        identity=identity,
    )
    ws = await http.ws_connect(bundle["url"], compress=0, max_msg_size=1 << 20)
    harness = NoiseHarness(ws, stream)
    handshake_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(harness.read_loop(handshake_done))
    try:
        for frame in stream.start():
            await ws.send_bytes(encode_frame(frame))
        await asyncio.wait_for(handshake_done, WAIT_S)
        if initialize:
            await harness.request(
                "initialize", {"clientName": "noise-test", "resumeSessionId": None}
            )
            await harness.notify("initialized", {})
        yield harness
    finally:
        await ws.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
